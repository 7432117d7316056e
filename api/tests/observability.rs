#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! What the API tells operators about its requests, in process against a fresh database:
//! request ids, one metric count per response (unmatched routes and timeouts included), an
//! in-flight gauge that survives abandoned requests, and the 408 problem document.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use serde_json::Value;
use sluice_api::{config::Settings, router, state::AppState};
use sqlx::PgPool;
use tower::ServiceExt;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

/// The router and its state; stops the state's background tasks when the test ends.
struct TestApp {
    router: Router,
    state: AppState,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.background.cancel();
    }
}

/// Without tokens (auth is not what these tests are about), with `request_timeout`.
fn app(pool: PgPool, request_timeout: Duration) -> TestApp {
    let settings = Settings {
        tokens: None,
        request_timeout,
        max_wait: Duration::from_secs(60),
        ..Settings::default()
    };
    let state = AppState::new(pool, settings);
    TestApp {
        router: router(state.clone()),
        state,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

/// The value of the `sluice_http_requests_total` series with exactly these labels.
fn requests_total(app: &TestApp, route: &str, method: &str, status: &str) -> Option<u64> {
    let text = sluice_common::metrics::encode(&app.state.metrics.registry);
    let want = format!(
        "sluice_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map(|v| v.parse().unwrap())
}

async fn create_job(app: &TestApp) -> i64 {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"kind":"noop","payload":{}}"#))
        .unwrap();
    let (status, _, body) = send(&app.router, req).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    lens == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
        && parts[2].starts_with('4')
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn request_ids_are_fresh_uuids_unless_the_caller_sent_one(pool: PgPool) {
    let app = app(pool, Duration::from_secs(90));
    let (_, h1, _) = send(&app.router, get("/health/live")).await;
    let (_, h2, _) = send(&app.router, get("/health/live")).await;
    let id1 = h1["x-request-id"].to_str().unwrap().to_string();
    let id2 = h2["x-request-id"].to_str().unwrap().to_string();
    assert!(is_uuid_v4(&id1), "{id1}");
    assert!(is_uuid_v4(&id2), "{id2}");
    assert_ne!(id1, id2);
    let req = Request::builder()
        .uri("/health/live")
        .header("x-request-id", "caller-chosen-id")
        .body(Body::empty())
        .unwrap();
    let (_, h, _) = send(&app.router, req).await;
    assert_eq!(h["x-request-id"], "caller-chosen-id");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_response_is_counted_unmatched_routes_under_one_label(pool: PgPool) {
    let app = app(pool, Duration::from_secs(90));
    for path in ["/no/such/route", "/another/random/path"] {
        let (status, _, _) = send(&app.router, get(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let req = Request::builder()
        .method("DELETE")
        .uri("/health/live")
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&app.router, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = send(&app.router, get("/v1/jobs/987654")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(requests_total(&app, "unmatched", "GET", "404"), Some(2));
    assert_eq!(
        requests_total(&app, "/health/live", "DELETE", "405"),
        Some(1),
        "a 405 is counted under its route"
    );
    assert_eq!(requests_total(&app, "/v1/jobs/{id}", "GET", "404"), Some(1));
    let text = sluice_common::metrics::encode(&app.state.metrics.registry);
    assert!(
        !text.contains("/no/such/route"),
        "raw paths never become labels"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_request_over_the_time_limit_gets_a_408_problem_document_and_is_counted(pool: PgPool) {
    let app = app(pool, Duration::from_millis(300));
    let id = create_job(&app).await;
    // Nobody runs the job, so the long-poll outlives the request timeout.
    let (status, headers, body) = send(&app.router, get(&format!("/v1/jobs/{id}?wait=30s"))).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(body["status"], 408);
    assert_eq!(body["type"], "https://sluice.dev/problems/request-timeout");
    assert!(!body["detail"].as_str().unwrap().is_empty());
    assert_eq!(requests_total(&app, "/v1/jobs/{id}", "GET", "408"), Some(1));
    assert_eq!(app.state.metrics.in_flight.get(), 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_request_the_client_abandons_leaves_the_in_flight_gauge(pool: PgPool) {
    let app = app(pool, Duration::from_secs(90));
    let id = create_job(&app).await;
    let mut polls = Vec::new();
    for _ in 0..3 {
        let router = app.router.clone();
        let uri = format!("/v1/jobs/{id}?wait=30s");
        polls.push(tokio::spawn(async move { send(&router, get(&uri)).await }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.state.metrics.in_flight.get() < 3 {
        assert!(Instant::now() < deadline, "the long-polls never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What hyper does when a client disconnects: the request's future is dropped.
    for p in &polls {
        p.abort();
    }
    for p in polls {
        assert!(p.await.unwrap_err().is_cancelled());
    }
    assert_eq!(app.state.metrics.in_flight.get(), 0);
    assert!(app.state.in_flight.snapshot().is_empty());
}

#[test]
fn the_openapi_document_lists_408_on_every_api_operation() {
    let doc = sluice_api::routes::openapi::document();
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, ops) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
        for (method, op) in ops.as_object().unwrap() {
            let r = &op["responses"]["408"];
            assert!(
                r["content"]["application/problem+json"].is_object(),
                "{method} {path} lacks a 408 problem response"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} operations found");
}
