//! The HTML of every page (maud; every `(value)` is escaped), the shared layout, and the
//! UI's error type, which renders as a page rather than as problem+json.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use sluice_common::{Error as CommonError, JobState};

use crate::{auth::Scope, ui::session::UiUser};

/// Which section the page belongs to (marks the current navigation link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/ui`.
    Overview,
    /// `/ui/jobs…`.
    Jobs,
    /// `/ui/audit`.
    Audit,
    /// Sign-in and error pages.
    None,
}

/// What the layout needs besides the page's own content.
#[derive(Debug)]
pub struct Frame<'a> {
    /// `<title>` and `<h1>`.
    pub title: &'a str,
    /// Current section.
    pub section: Section,
    /// The signed-in user (navigation and the sign-out form).
    pub user: Option<&'a UiUser>,
    /// Reload every this many seconds.
    pub refresh_secs: Option<u64>,
}

/// The shared page: header with navigation and sign-out, then `content`.
pub fn layout(frame: &Frame<'_>, content: Markup) -> Markup {
    let nav = [
        (Section::Overview, "/ui", "Overview"),
        (Section::Jobs, "/ui/jobs", "Jobs"),
        (Section::Audit, "/ui/audit", "Audit log"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = frame.refresh_secs {
                    meta http-equiv="refresh" content=(secs);
                }
                title { (frame.title) " · Sluice" }
                link rel="stylesheet" href="/ui/static/ui.css";
                link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Sluice" }
                    @if let Some(user) = frame.user {
                        nav aria-label="Main" {
                            ul {
                                @for (section, href, label) in nav {
                                    li {
                                        @if section == frame.section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        div.who {
                            span { "Signed in as " strong { (user.principal.name) } " (" (scope_label(user.principal.scope)) ")" }
                            form method="post" action="/ui/sign-out" {
                                input type="hidden" name="csrf" value=(user.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (frame.title) }
                    (content)
                }
            }
        }
    }
}

fn scope_label(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => "read-only",
        Scope::Enqueue => "enqueue, read-only here",
        Scope::Admin => "admin",
    }
}

/// The sign-in page.
pub fn sign_in(
    csrf: &str,
    next: &str,
    notice: Option<&str>,
    error: Option<&str>,
    no_auth: bool,
) -> Markup {
    let frame = Frame {
        title: "Sign in",
        section: Section::None,
        user: None,
        refresh_secs: None,
    };
    layout(
        &frame,
        html! {
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.card.sign-in method="post" action="/ui/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                input id="token" name="token" type="password" autocomplete="off" required[!no_auth] autofocus;
                p.hint {
                    @if no_auth {
                        "This API runs without authentication (--insecure-no-auth): any token signs you in as an admin."
                    } @else {
                        "One of the API tokens of SLUICE_API_TOKENS. A read token can look; an admin token can also act."
                    }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A page with a message and a way back, for errors.
pub fn message_page(title: &str, user: Option<&UiUser>, message: &str) -> Markup {
    let frame = Frame {
        title,
        section: Section::None,
        user,
        refresh_secs: None,
    };
    layout(
        &frame,
        html! {
            p.error role="alert" { (message) }
            p { a href="/ui" { "Back to the overview" } }
        },
    )
}

/// Errors of UI pages and actions, rendered as HTML pages.
#[derive(Debug)]
pub enum UiError {
    /// Unreadable input.
    BadRequest(String),
    /// Missing or wrong CSRF token.
    Csrf,
    /// The token cannot do this.
    Forbidden(Scope),
    /// No such job, kind, page.
    NotFound(String),
    /// The job's state does not allow the action.
    Conflict(String),
    /// Database unreachable; retry.
    Unavailable,
    /// Anything else (logged).
    Internal,
}

impl From<CommonError> for UiError {
    fn from(err: CommonError) -> Self {
        match err {
            CommonError::Invalid(e) => UiError::BadRequest(e.to_string()),
            CommonError::NotFound(_) | CommonError::UnknownKind(_) => {
                UiError::NotFound(err.to_string())
            }
            CommonError::InvalidTransition { .. } => UiError::Conflict(err.to_string()),
            CommonError::Database(db) => match crate::problem::db_error(db) {
                crate::problem::ApiError::Unavailable => UiError::Unavailable,
                _ => UiError::Internal,
            },
            CommonError::Migrate(e) => {
                tracing::error!(error = %e, "migration error");
                UiError::Internal
            }
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m.clone()),
            UiError::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form is missing its security token or it is out of date. Go back, reload the page and try again.".into(),
            ),
            UiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                format!(
                    "Your token has the {} scope: it can view everything but change nothing. Sign in with an admin token to act.",
                    scope.as_str()
                ),
            ),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m.clone()),
            UiError::Conflict(m) => (StatusCode::CONFLICT, "Not possible now", m.clone()),
            UiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The database is unavailable right now. Retry in a few seconds.".into(),
            ),
            UiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "Something went wrong; the server log has the details.".into(),
            ),
        };
        let mut resp = (status, message_page(title, None, &message)).into_response();
        if matches!(self, UiError::Unavailable) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}

/// A timestamp as operators read it: UTC, to the second.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An age in the largest two units: `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `1234567` as `1,234,567`.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A state as a badge.
pub fn state_badge(state: JobState) -> Markup {
    html! { span class=(format!("badge state-{}", state.as_str())) { (state.as_str()) } }
}

/// `/ui/jobs?…` with these filters, URL-encoded.
pub fn jobs_href(pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    if pairs.is_empty() {
        "/ui/jobs".into()
    } else {
        format!(
            "/ui/jobs?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_counts_read_naturally() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(192.0), "3m 12s");
        assert_eq!(age(7500.0), "2h 5m");
        assert_eq!(age(-3.0), "0s");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
    }

    #[test]
    fn filter_links_are_url_encoded() {
        assert_eq!(
            jobs_href(&[("kind", "a&b<c>"), ("state", "")]),
            "/ui/jobs?kind=a%26b%3Cc%3E"
        );
    }
}
