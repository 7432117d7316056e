//! The UI's actions (admin scope, CSRF-checked). Single-job and kind actions call the same
//! [`sluice_common::JobClient`] methods as the JSON API's admin routes, so they take the
//! same fenced transitions and write the same `audit_log` rows, with the signed-in token's
//! name as actor. Each answers with a redirect (post/redirect/get), so reloading the page
//! never repeats an action.

use axum::{
    extract::{rejection::FormRejection, Path, State},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;
use sluice_common::{model::Actor, storage};

use crate::{
    state::AppState,
    ui::{
        pages::bulk_filter,
        session::UiUser,
        views::{jobs_href, UiError},
    },
};

/// Longest reason accepted (the audit log is for people to read).
const MAX_REASON: usize = 500;

/// Body of the job and kind action forms.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    /// The session's CSRF token.
    csrf: Option<String>,
    /// Why; written to `audit_log.reason`.
    reason: Option<String>,
    /// The kind (kind actions only).
    kind: Option<String>,
}

/// The reason as the audit log should get it: trimmed, `None` when empty.
fn reason(raw: Option<&str>) -> Result<Option<String>, UiError> {
    let Some(r) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if r.contains('\0') {
        return Err(UiError::BadRequest(
            "the reason holds a NUL character".into(),
        ));
    }
    if r.chars().count() > MAX_REASON {
        return Err(UiError::BadRequest(format!(
            "the reason is longer than {MAX_REASON} characters"
        )));
    }
    Ok(Some(r.to_string()))
}

/// Session, CSRF, then scope, in that order: a stale form gets "reload", a read token
/// gets "not allowed", and neither changes anything.
fn authorize(user: &UiUser, csrf: Option<&str>) -> Result<(), UiError> {
    user.check_csrf(csrf)?;
    user.require_admin()
}

fn read_form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, UiError> {
    form.map(|Form(f)| f).map_err(|e| match e {
        // Without a readable body there is no CSRF token either.
        FormRejection::InvalidFormContentType(_) => UiError::Csrf,
        other => UiError::BadRequest(other.body_text()),
    })
}

/// `POST /ui/jobs/{id}/{retry|cancel|release}`.
pub async fn job_action(
    State(state): State<AppState>,
    user: UiUser,
    Path((raw_id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, UiError> {
    let form = read_form(form)?;
    authorize(&user, form.csrf.as_deref())?;
    let id: i64 = raw_id
        .parse()
        .map_err(|_| UiError::NotFound(format!("{raw_id:?} is not a job id")))?;
    let why = reason(form.reason.as_deref())?;
    let actor = Actor {
        name: &user.principal.name,
        reason: why.as_deref(),
    };
    match action.as_str() {
        "retry" => state.client.retry(id, &actor).await?,
        "cancel" => state.client.cancel(id, &actor).await?,
        "release" => state.client.release(id, &actor).await?,
        other => return Err(UiError::NotFound(format!("no job action {other:?}"))),
    };
    Ok(Redirect::to(&format!("/ui/jobs/{id}?done={action}")).into_response())
}

/// `POST /ui/kinds/{pause|resume}` with the kind in the form.
pub async fn kind_action(
    State(state): State<AppState>,
    user: UiUser,
    Path(action): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, UiError> {
    let form = read_form(form)?;
    authorize(&user, form.csrf.as_deref())?;
    let kind = form
        .kind
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| UiError::BadRequest("which kind? the form has no kind".into()))?
        .to_string();
    let why = reason(form.reason.as_deref())?;
    let actor = Actor {
        name: &user.principal.name,
        reason: why.as_deref(),
    };
    let jobs = match action.as_str() {
        "pause" => state.client.pause_kind(&kind, &actor).await?,
        "resume" => state.client.resume_kind(&kind, &actor).await?,
        other => return Err(UiError::NotFound(format!("no kind action {other:?}"))),
    };
    let query = serde_urlencoded::to_string([
        ("done", action.as_str()),
        ("kind", kind.as_str()),
        ("jobs", &jobs.to_string()),
    ])
    .unwrap_or_default();
    Ok(Redirect::to(&format!("/ui?{query}")).into_response())
}

/// Body of the bulk form.
#[derive(Debug, Deserialize)]
pub struct BulkForm {
    /// The session's CSRF token.
    csrf: Option<String>,
    /// `retry` or `cancel`.
    action: Option<String>,
    /// State filter.
    state: Option<String>,
    /// Kind filter.
    kind: Option<String>,
    /// The newest id the confirmation page counted.
    up_to_id: Option<String>,
    /// Why.
    reason: Option<String>,
}

/// `POST /ui/jobs/bulk`: the confirmed bulk action, one audited transaction.
pub async fn bulk(
    State(state): State<AppState>,
    user: UiUser,
    form: Result<Form<BulkForm>, FormRejection>,
) -> Result<Response, UiError> {
    let form = read_form(form)?;
    authorize(&user, form.csrf.as_deref())?;
    let up_to_id = match form.up_to_id.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(UiError::BadRequest(
                "the bulk form lacks the count it was confirmed with; start from the jobs list"
                    .into(),
            ))
        }
        Some(n) => n
            .parse::<i64>()
            .map_err(|_| UiError::BadRequest(format!("up_to_id={n:?} is not a job id")))?,
    };
    let filter = bulk_filter(
        form.action.as_deref(),
        form.state.as_deref(),
        form.kind.as_deref(),
        Some(up_to_id),
    )?;
    let why = reason(form.reason.as_deref())?;
    let actor = Actor {
        name: &user.principal.name,
        reason: why.as_deref(),
    };
    let outcome = storage::run_bulk_action(state.client.pool(), &filter, &actor).await?;
    let changed = outcome.changed.to_string();
    let skipped = outcome.skipped_busy.to_string();
    let href = jobs_href(&[
        ("state", form.state.as_deref().unwrap_or("")),
        ("kind", form.kind.as_deref().unwrap_or("")),
        ("done", filter.action.audit_action()),
        ("changed", &changed),
        ("skipped", &skipped),
    ]);
    Ok(Redirect::to(&href).into_response())
}
