//! `/v1/jobs`: enqueue (single and batch), read with long-poll, list, operator actions.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_common::{
    config::parse_duration,
    error::Failure,
    model::{is_valid_traceparent, validate_text, Actor, InvalidJob, DEFAULT_MAX_ATTEMPTS},
    storage::MAX_BATCH,
    telemetry, Job, JobState, NewJob,
};

use crate::{
    auth::{Admin, Enqueuer, Reader},
    problem::{ApiError, ApiJson},
    state::AppState,
};

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(create).get(list))
        .route("/v1/jobs/batch", post(create_batch))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/jobs/{id}/release", post(release))
}

/// Body of `POST /v1/jobs` (and each entry of a batch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Job kind.
    kind: String,
    /// Arbitrary JSON.
    payload: Value,
    /// -1000..=1000; wide type so out-of-range values get a precise message.
    priority: Option<i64>,
    /// Not before.
    run_at: Option<DateTime<Utc>>,
    /// 1..=1000.
    max_attempts: Option<i64>,
    /// Makes the enqueue idempotent per kind.
    idempotency_key: Option<String>,
}

impl CreateJob {
    /// The job to insert, or why not (as the client should read it). Every rule lives in
    /// [`NewJob::validate`], which knows all that Postgres would refuse.
    fn into_checked_job(self, traceparent: Option<String>) -> Result<NewJob, String> {
        self.into_new_job(traceparent).map_err(|e| e.to_string())
    }

    fn into_new_job(self, traceparent: Option<String>) -> Result<NewJob, InvalidJob> {
        let priority = i16::try_from(self.priority.unwrap_or(0))
            .map_err(|_| InvalidJob::Priority(self.priority.unwrap_or(0)))?;
        let max = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS as i64);
        let max_attempts = i32::try_from(max).map_err(|_| InvalidJob::MaxAttempts(max))?;
        let job = NewJob {
            kind: self.kind,
            payload: self.payload,
            priority,
            run_at: self.run_at,
            max_attempts,
            idempotency_key: self.idempotency_key,
            traceparent,
        };
        job.validate()?;
        Ok(job)
    }
}

/// The `traceparent` to store: our server span's when traces are exported (it is the
/// caller's span's child, so the job's span hangs off this request), else the caller's.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    telemetry::current_traceparent().or_else(|| {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|tp| is_valid_traceparent(tp))
            .map(str::to_string)
    })
}

async fn create(
    State(state): State<AppState>,
    Enqueuer(_who): Enqueuer,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<Response, ApiError> {
    let job = body
        .into_checked_job(traceparent(&headers))
        .map_err(ApiError::Unprocessable)?;
    let enqueued = state.batcher.submit(job).await?;
    let status = if enqueued.created {
        state
            .metrics
            .enqueued
            .with_label_values(&[&enqueued.job.kind])
            .inc();
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(enqueued.job)).into_response())
}

/// Body of `POST /v1/jobs/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// 1 to 1000 jobs.
    jobs: Vec<CreateJob>,
}

async fn create_batch(
    State(state): State<AppState>,
    Enqueuer(_who): Enqueuer,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBatch>,
) -> Result<Response, ApiError> {
    if body.jobs.is_empty() || body.jobs.len() > MAX_BATCH {
        return Err(ApiError::Unprocessable(
            InvalidJob::BatchSize {
                got: body.jobs.len(),
                max: MAX_BATCH,
            }
            .to_string(),
        ));
    }
    let tp = traceparent(&headers);
    let jobs = body
        .jobs
        .into_iter()
        .enumerate()
        .map(|(index, j)| {
            j.into_checked_job(tp.clone())
                .map_err(|e| ApiError::Unprocessable(format!("job {index} of the batch: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = enqueue_batch(&state, jobs).await?;
    for e in out.iter().filter(|e| e.created) {
        state
            .metrics
            .enqueued
            .with_label_values(&[&e.job.kind])
            .inc();
    }
    let jobs: Vec<Job> = out.into_iter().map(|e| e.job).collect();
    Ok((StatusCode::CREATED, Json(json!({ "jobs": jobs }))).into_response())
}

/// The batch in one transaction, written again when it lost a race (a deadlock or
/// serialization failure): all or nothing, and a lost race is not the caller's problem.
async fn enqueue_batch(
    state: &AppState,
    jobs: Vec<NewJob>,
) -> Result<Vec<sluice_common::model::Enqueued>, ApiError> {
    let mut tries = 0;
    loop {
        match state.client.enqueue_batch(&jobs).await {
            Err(err)
                if err.failure() == Failure::Conflict
                    && tries < crate::batcher::CONFLICT_RETRIES =>
            {
                tries += 1;
                tracing::info!(error = %err, tries, "batch enqueue lost a race; writing it again");
            }
            other => return other.map_err(ApiError::from),
        }
    }
}

/// Query of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    /// Long-poll up to this long (`30s`) for a terminal state.
    wait: Option<String>,
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::BadRequest(format!("job id {raw:?} is not an integer")))
}

async fn find(state: &AppState, id: i64) -> Result<Job, ApiError> {
    state
        .client
        .find(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} does not exist")))
}

async fn show(
    State(state): State<AppState>,
    Reader(_who): Reader,
    Path(raw): Path<String>,
    query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&raw)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => parse_duration(w)
            .map_err(|e| ApiError::BadRequest(format!("wait: {e}")))?
            .min(state.settings.max_wait),
    };
    // SPEC.md §4: a drain never waits on `?wait=`. A long-poll arriving while draining is
    // answered at once, and one in flight is woken by the drain token below.
    let draining = state.readiness.drain_started();
    if wait.is_zero() || draining.is_cancelled() {
        return find(&state, id).await.map(Json);
    }
    let deadline = tokio::time::Instant::now() + wait;
    let waiter = state.waiters.register(id);
    loop {
        // Arm before reading, so a NOTIFY between the read and the wait is not missed.
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let job = find(&state, id).await?;
        if job.state.is_terminal()
            || tokio::time::Instant::now() >= deadline
            || draining.is_cancelled()
        {
            return Ok(Json(job));
        }
        tokio::select! {
            _ = &mut notified => {}
            // Read once more and answer with the job as it stands.
            _ = draining.cancelled() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            // A missed notification costs at most this long.
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// One of the six states.
    state: Option<String>,
    /// Exact kind.
    kind: Option<String>,
    /// 1..=1000, default 100.
    limit: Option<String>,
    /// From a previous page's `next_cursor`.
    cursor: Option<String>,
}

/// Opaque cursor for "jobs with id below this".
pub fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("v1:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::BadRequest("cursor is not one this API handed out".into()))
}

async fn list(
    State(state): State<AppState>,
    Reader(_who): Reader,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let job_state = q
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("state: {e}")))?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit {l:?} is not an integer in 1..=1000"))
            })?,
    };
    if let Some(k) = q.kind.as_deref() {
        validate_text("kind", k).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let jobs = state
        .client
        .list(job_state, q.kind.as_deref(), before, limit)
        .await?;
    let next = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| encode_cursor(j.id)))
        .flatten();
    Ok(Json(json!({ "jobs": jobs, "next_cursor": next })))
}

/// Optional JSON body of operator actions.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why; written to `audit_log.reason`.
    reason: Option<String>,
}

/// Query of operator actions.
#[derive(Debug, Deserialize)]
pub struct ActionQuery {
    /// Why; written to `audit_log.reason`.
    reason: Option<String>,
}

/// The reason from `?reason=` or the JSON body (which may be empty).
pub fn action_reason(
    query: Result<Query<ActionQuery>, axum::extract::rejection::QueryRejection>,
    body: &Bytes,
) -> Result<Option<String>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice::<ActionBody>(body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::BadRequest(format!("malformed JSON body: {e}"))
            } else {
                ApiError::Unprocessable(format!("invalid body: {e}"))
            }
        })?
    };
    let reason = from_body.reason.or(q.reason);
    if let Some(r) = reason.as_deref() {
        validate_text("reason", r).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    Ok(reason)
}

macro_rules! job_action {
    ($name:ident, $method:ident) => {
        async fn $name(
            State(state): State<AppState>,
            Admin(who): Admin,
            Path(raw): Path<String>,
            query: Result<Query<ActionQuery>, axum::extract::rejection::QueryRejection>,
            body: Bytes,
        ) -> Result<Json<Job>, ApiError> {
            let id = parse_id(&raw)?;
            let reason = action_reason(query, &body)?;
            let actor = Actor {
                name: &who.name,
                reason: reason.as_deref(),
            };
            Ok(Json(state.client.$method(id, &actor).await?))
        }
    };
}

job_action!(cancel, cancel);
job_action!(retry, retry);
job_action!(release, release);
