//! The operator web UI (SPEC.md §9): server-rendered pages under `/ui` on the API listener.
//!
//! - [`session`]: sign in with a token, server-side sessions in Postgres behind an
//!   HttpOnly, SameSite=Strict cookie, CSRF tokens, the [`session::UiUser`] extractor.
//! - [`pages`]: overview, jobs list (filter, find, keyset pages), one job, audit log,
//!   and the bulk action's confirmation page.
//! - [`actions`]: pause/resume a kind, retry/cancel/release a job, bulk retry/cancel;
//!   each through the same [`sluice_common::JobClient`] / storage call as the JSON API, so
//!   each writes its `audit_log` row in the same transaction as the change.
//! - [`views`]: the HTML, written with `maud`: templates are Rust expressions checked by
//!   the compiler, every interpolation is HTML-escaped unless explicitly marked otherwise,
//!   and rendering is a `String` push with no template files to ship or load at run time.
//! - [`chart`]: the per-minute completions/failures chart as inline SVG.
//!
//! Nothing is fetched from anywhere but this origin: the stylesheet and icon are compiled
//! into the binary, there is no script at all (the overview refreshes with a meta refresh
//! that can be switched off), and every response carries a Content-Security-Policy of
//! `default-src 'self'` without inline script or style.

pub mod actions;
pub mod chart;
pub mod pages;
pub mod session;
pub mod throttle;
pub mod views;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Extension, Router,
};
use sluice_common::config::parse_duration;

use crate::state::AppState;

/// The UI's command line / environment, flattened into [`crate::config::Config`].
#[derive(Debug, Clone, clap::Args)]
pub struct UiConfig {
    /// Link from a job's trace id to a tracing UI: a URL with `{trace_id}` in it, e.g.
    /// `https://tempo.example/trace/{trace_id}`.
    #[arg(long = "ui-trace-url", env = "SLUICE_UI_TRACE_URL", value_name = "SLUICE_UI_TRACE_URL",
          value_parser = parse_trace_url)]
    pub trace_url: Option<String>,

    /// How long a UI sign-in lasts before the operator signs in again.
    #[arg(long = "ui-session-ttl", env = "SLUICE_UI_SESSION_TTL", value_name = "SLUICE_UI_SESSION_TTL",
          default_value = "8h", value_parser = parse_duration)]
    pub session_ttl: Duration,
}

impl UiConfig {
    /// What the router needs.
    pub fn settings(&self) -> UiSettings {
        UiSettings {
            trace_url: self.trace_url.clone(),
            session_ttl: self.session_ttl,
            ..UiSettings::default()
        }
    }
}

/// Checks a trace link template: an http(s) URL holding `{trace_id}`.
pub fn parse_trace_url(text: &str) -> Result<String, String> {
    let t = text.trim();
    if !(t.starts_with("https://") || t.starts_with("http://")) {
        return Err("must be an http:// or https:// URL".into());
    }
    if !t.contains("{trace_id}") {
        return Err("must contain {trace_id}, e.g. https://tempo/trace/{trace_id}".into());
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<' || c == '>')
    {
        return Err("must not contain spaces, quotes or angle brackets".into());
    }
    Ok(t.to_string())
}

/// The UI's settings (part of [`crate::config::Settings`]).
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Trace link template with `{trace_id}`; no link without it.
    pub trace_url: Option<String>,
    /// Session lifetime from sign-in.
    pub session_ttl: Duration,
    /// Age past which the overview's chart is recomputed in the background (pages are served
    /// the latest chart meanwhile): the chart reads the last hour's finished jobs, so it is
    /// computed at most this often however many dashboards are open.
    pub chart_cache_ttl: Duration,
    /// How often the overview reloads itself.
    pub refresh_every: Duration,
}

impl Default for UiSettings {
    fn default() -> Self {
        UiSettings {
            trace_url: None,
            session_ttl: Duration::from_secs(8 * 3600),
            chart_cache_ttl: Duration::from_secs(10),
            refresh_every: Duration::from_secs(15),
        }
    }
}

/// The stylesheet, compiled in.
const CSS: &str = include_str!("../../static/ui.css");
/// The icon, compiled in (so the browser's icon request stays on this origin and finds one).
const FAVICON: &str = include_str!("../../static/favicon.svg");

/// The Content-Security-Policy of every UI response: only this origin, no inline script
/// or style, no framing, forms post only here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The UI's routes (merged into [`crate::router`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/jobs", get(pages::jobs))
        .route(
            "/ui/jobs/bulk",
            get(pages::bulk_confirm).post(actions::bulk),
        )
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/{action}", post(actions::job_action))
        .route("/ui/kinds/{action}", post(actions::kind_action))
        .route("/ui/audit", get(pages::audit))
        .route(
            "/ui/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/ui/sign-out", post(session::sign_out))
        .route(
            "/ui/static/ui.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/ui/static/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON) }),
        )
        .layer(Extension(Arc::new(chart::ChartCache::default())))
        .layer(middleware::from_fn(security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// CSP and friends on every UI response; pages are never cached (they show live state and
/// a CSRF token).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_url_templates_must_be_http_and_hold_the_placeholder() {
        assert!(parse_trace_url("https://tempo/trace/{trace_id}").is_ok());
        assert!(parse_trace_url("javascript:alert(1)//{trace_id}").is_err());
        assert!(parse_trace_url("https://tempo/trace/").is_err());
        assert!(parse_trace_url("https://tempo/\"{trace_id}").is_err());
    }
}
