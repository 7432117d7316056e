#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! Every route in process (`tower::ServiceExt::oneshot`) against a fresh database per test:
//! exact statuses, problem+json bodies, and nothing written on bad input.

use std::time::Duration;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use sluice_api::{auth::Tokens, config::Settings, router, state::AppState};
use sqlx::PgPool;
use tower::ServiceExt;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const ENQ: &str = "enq-secret";
const ADM: &str = "adm-secret";

/// The router, plus a guard that stops the state's background tasks when the test ends
/// (the shared LISTEN connection would otherwise keep the test's pool from closing).
struct TestApp {
    router: Router,
    state: AppState,
}

impl std::ops::Deref for TestApp {
    type Target = Router;
    fn deref(&self) -> &Router {
        &self.router
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.background.cancel();
    }
}

fn app_with(pool: PgPool, body_limit: usize) -> TestApp {
    let settings = Settings {
        tokens: Some(Tokens::parse(&format!("enqueue:{ENQ},admin:ops:{ADM}")).unwrap()),
        body_limit,
        ..Settings::default()
    };
    let state = AppState::new(pool, settings);
    TestApp {
        router: router(state.clone()),
        state,
    }
}

fn app(pool: PgPool) -> TestApp {
    app_with(pool, 1024 * 1024)
}

struct Reply {
    status: StatusCode,
    content_type: String,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

fn assert_problem(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["status"], status.as_u16());
    assert!(r.body["type"].is_string() && r.body["title"].is_string());
    assert!(!r.body["detail"].as_str().unwrap().is_empty());
}

/// name, method, uri, token, body, expected status.
type BadCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<String>,
    StatusCode,
);

async fn job_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn create(app: &Router, body: Value) -> Reply {
    call(app, "POST", "/v1/jobs", Some(ENQ), Some(&body.to_string())).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn creating_a_job_returns_201_and_repeating_its_idempotency_key_returns_200(pool: PgPool) {
    let app = app(pool.clone());
    let body = json!({"kind": "email.send", "payload": {"to": "a@b"}, "idempotency_key": "k1", "priority": 5});
    let first = create(&app, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["state"], "queued");
    assert_eq!(first.body["priority"], 5);
    for col in [
        "id",
        "kind",
        "payload",
        "run_at",
        "attempts",
        "max_attempts",
        "leased_by",
        "leased_at",
        "last_error",
        "created_at",
    ] {
        assert!(first.body.get(col).is_some(), "missing {col}");
    }
    let again = create(&app, body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(job_count(&pool).await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_valid_traceparent_header_is_stored_on_the_job(pool: PgPool) {
    let app = app(pool.clone());
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {ENQ}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("traceparent", tp)
        .body(Body::from(json!({"kind": "k", "payload": 1}).to_string()))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().contains_key("x-request-id"));
    let stored: Option<String> = sqlx::query_scalar("SELECT traceparent FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(tp));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_batch_is_created_whole_or_refused_whole_naming_the_bad_index(pool: PgPool) {
    let app = app(pool.clone());
    let good = json!({"jobs": [{"kind": "a", "payload": 1}, {"kind": "b", "payload": 2}]});
    let r = call(
        &app,
        "POST",
        "/v1/jobs/batch",
        Some(ENQ),
        Some(&good.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 2);

    let bad = json!({"jobs": [{"kind": "a", "payload": 1}, {"kind": "a", "payload": 1, "priority": 5000}]});
    let r = call(
        &app,
        "POST",
        "/v1/jobs/batch",
        Some(ENQ),
        Some(&bad.to_string()),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body["detail"].as_str().unwrap().contains("job 1"),
        "{}",
        r.body
    );

    let empty = json!({"jobs": []});
    let r = call(
        &app,
        "POST",
        "/v1/jobs/batch",
        Some(ENQ),
        Some(&empty.to_string()),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(job_count(&pool).await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_class_of_bad_input_gets_a_problem_and_writes_nothing(pool: PgPool) {
    let app = app_with(pool.clone(), 2048);
    let big = json!({"kind": "a", "payload": "x".repeat(4096)}).to_string();
    let cases: Vec<BadCase> = vec![
        (
            "malformed JSON",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some("{\"kind\":".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown field",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a","payload":1,"colour":"red"}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong type",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a","payload":1,"priority":"high"}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing field",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a"}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "out of range",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a","payload":1,"max_attempts":0}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad kind",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a b","payload":1}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NUL in payload",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a","payload":{"k":"a\u0000b"}}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "number beyond a double's edge",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(r#"{"kind":"a","payload":1.7e308}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NUL in a batch",
            "POST",
            "/v1/jobs/batch",
            Some(ENQ),
            Some(
                r#"{"jobs":[{"kind":"a","payload":1},{"kind":"a","payload":{"\u0000":1}}]}"#.into(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NUL in a reason",
            "POST",
            "/v1/jobs/1/cancel?reason=%00",
            Some(ADM),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "over the size limit",
            "POST",
            "/v1/jobs",
            Some(ENQ),
            Some(big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "bad state filter",
            "GET",
            "/v1/jobs?state=running",
            Some(ENQ),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad cursor",
            "GET",
            "/v1/jobs?cursor=%21%21nope",
            Some(ENQ),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad limit",
            "GET",
            "/v1/jobs?limit=0",
            Some(ENQ),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad wait",
            "GET",
            "/v1/jobs/1?wait=forever",
            Some(ENQ),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad id",
            "GET",
            "/v1/jobs/abc",
            Some(ENQ),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing token",
            "POST",
            "/v1/jobs",
            None,
            Some(r#"{"kind":"a","payload":1}"#.into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "bad token",
            "POST",
            "/v1/jobs",
            Some("wrong"),
            Some(r#"{"kind":"a","payload":1}"#.into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong scope",
            "POST",
            "/v1/kinds/a/pause",
            Some(ENQ),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "unknown route",
            "GET",
            "/v2/nothing",
            Some(ENQ),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            "DELETE",
            "/v1/jobs",
            Some(ENQ),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (name, method, uri, token, body, status) in cases {
        let r = call(&app, method, uri, token, body.as_deref()).await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
        assert_problem(&r, status);
        if status == StatusCode::UNAUTHORIZED {
            assert!(r.headers.contains_key(header::WWW_AUTHENTICATE), "{name}");
        }
    }
    // No content type at all.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {ENQ}"))
        .body(Body::from(r#"{"kind":"a","payload":1}"#))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(job_count(&pool).await, 0);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audit, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn listing_pages_through_jobs_newest_first_with_an_opaque_cursor(pool: PgPool) {
    let app = app(pool.clone());
    for i in 0..5 {
        create(
            &app,
            json!({"kind": if i % 2 == 0 { "even" } else { "odd" }, "payload": i}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/jobs?limit=2".to_string();
    loop {
        let r = call(&app, "GET", &uri, Some(ENQ), None).await;
        assert_eq!(r.status, StatusCode::OK);
        for j in r.body["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_i64().unwrap());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 5);
    let r = call(
        &app,
        "GET",
        "/v1/jobs?kind=even&state=queued",
        Some(ENQ),
        None,
    )
    .await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn admin_actions_change_jobs_write_audit_rows_and_refuse_impossible_transitions(
    pool: PgPool,
) {
    let app = app(pool.clone());
    let id = create(&app, json!({"kind": "a", "payload": 1})).await.body["id"]
        .as_i64()
        .unwrap();
    let r = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/cancel?reason=oops"),
        Some(ADM),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "cancelled");
    let r = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(ADM),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT);
    let r = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/release"),
        Some(ADM),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT);
    let r = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/retry"),
        Some(ADM),
        Some(r#"{"reason":"fixed"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "queued");
    let r = call(&app, "POST", "/v1/jobs/999999/cancel", Some(ADM), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/retry"),
        Some(ENQ),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN);
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT actor, action, reason FROM audit_log ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("ops".into(), "cancel".into(), Some("oops".into())),
            ("ops".into(), "retry".into(), Some("fixed".into())),
        ]
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn kinds_are_listed_paused_and_resumed_and_unknown_kinds_are_404(pool: PgPool) {
    let app = app(pool.clone());
    create(&app, json!({"kind": "report", "payload": 1})).await;
    let r = call(
        &app,
        "POST",
        "/v1/kinds/report/pause?reason=incident",
        Some(ADM),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["jobs"], 1);
    let r = call(&app, "GET", "/v1/kinds", Some(ENQ), None).await;
    assert_eq!(r.body["kinds"][0]["kind"], "report");
    assert_eq!(r.body["kinds"][0]["paused"], true);
    let r = create(&app, json!({"kind": "report", "payload": 2})).await;
    assert_eq!(r.body["state"], "paused");
    let r = call(&app, "POST", "/v1/kinds/report/resume", Some(ADM), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["jobs"], 2);
    let r = call(&app, "POST", "/v1/kinds/nope/pause", Some(ADM), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn stats_count_by_state_and_kind_with_every_state_present(pool: PgPool) {
    let app = app(pool.clone());
    let r = call(&app, "GET", "/v1/stats", Some(ENQ), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["by_state"]["processing"], 0);
    create(&app, json!({"kind": "a", "payload": 1})).await;
    let r = call(&app, "GET", "/v1/stats", Some(ENQ), None).await;
    assert_eq!(r.body["by_state"]["queued"], 1);
    assert_eq!(r.body["by_kind"]["a"]["queued"], 1);
    assert_eq!(r.body["by_kind"]["a"]["processing"], 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_long_poll_returns_as_soon_as_the_job_reaches_a_terminal_state(pool: PgPool) {
    let app = app(pool.clone());
    let id = create(&app, json!({"kind": "a", "payload": 1})).await.body["id"]
        .as_i64()
        .unwrap();
    let r = call(
        &app,
        "GET",
        &format!("/v1/jobs/{id}?wait=200ms"),
        Some(ENQ),
        None,
    )
    .await;
    assert_eq!(
        r.body["state"], "queued",
        "answers with the current state at the deadline"
    );
    let poll = {
        let app = app.router.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("/v1/jobs/{id}?wait=30s"),
                Some(ENQ),
                None,
            )
            .await
        })
    };
    // Wait until the long-poll is being served (its correctness does not depend on this;
    // it makes the test exercise the wakeup rather than the first read).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.state.metrics.in_flight.get() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "long-poll never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(ADM),
        None,
    )
    .await;
    assert_eq!(c.status, StatusCode::OK);
    // Under the poll's 10 s fallback re-read: the NOTIFY woke it, not the fallback.
    let r = tokio::time::timeout(Duration::from_secs(9), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "cancelled");
    let r = call(&app, "GET", "/v1/jobs/424242", Some(ENQ), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_same_idempotency_key_fifty_times_at_once_makes_exactly_one_job(pool: PgPool) {
    let app = app(pool.clone());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let app = app.router.clone();
        tasks.push(tokio::spawn(async move {
            create(
                &app,
                json!({"kind": "pay", "payload": {"amount": 1}, "idempotency_key": "order-7"}),
            )
            .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::OK,
            "{}",
            r.body
        );
        if r.status == StatusCode::CREATED {
            created += 1;
        }
        ids.insert(r.body["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert_eq!(job_count(&pool).await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn health_routes_need_no_token_and_readiness_answers_from_memory(pool: PgPool) {
    let settings = Settings {
        tokens: Some(Tokens::parse("admin:x").unwrap()),
        ..Settings::default()
    };
    let state = AppState::new(pool, settings);
    let app = TestApp {
        router: router(state.clone()),
        state: state.clone(),
    };
    let r = call(&app, "GET", "/health/live", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    // The background database check flips readiness on shortly after start.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = call(&app, "GET", "/health/ready", None, None).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.body, json!({"status": "ready"}));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.readiness.start_draining();
    let r = call(&app, "GET", "/health/ready", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, json!({"status": "draining"}));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_served_openapi_document_equals_the_checked_in_copy(pool: PgPool) {
    let app = app(pool);
    let r = call(&app, "GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&r.body).unwrap() + "\n").unwrap();
    }
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        r.body, checked_in,
        "run UPDATE_OPENAPI=1 cargo test -p sluice-api to refresh docs/openapi.json"
    );
    for p in [
        "/v1/jobs",
        "/v1/jobs/batch",
        "/v1/jobs/{id}",
        "/v1/stats",
        "/v1/kinds",
        "/health/ready",
    ] {
        assert!(r.body["paths"].get(p).is_some(), "{p}");
    }
}

/// Holds `kind`'s `job_kinds` row locked until the transaction ends: enqueues of the kind
/// wait behind it, so requests made meanwhile coalesce into the batcher's next batch.
async fn hold_kind(pool: &PgPool, kind: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    sqlx::query("INSERT INTO job_kinds (kind) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(kind)
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM job_kinds WHERE kind = $1 FOR UPDATE")
        .bind(kind)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until `n` backends of this database wait on a lock.
async fn wait_lock_waiters(pool: &PgPool, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{waiting} waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `bodies` to `POST /v1/jobs` at once, while the kind's row is locked so that they
/// are batched together, and returns the statuses in order.
async fn enqueue_together(
    pool: &PgPool,
    app: &TestApp,
    kind: &str,
    bodies: Vec<Value>,
) -> Vec<StatusCode> {
    let held = hold_kind(pool, kind).await;
    let calls: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let router = app.router.clone();
            tokio::spawn(async move { create(&router, b).await.status })
        })
        .collect();
    // Every batch writer is parked behind the lock; the rest queue for the next batch.
    wait_lock_waiters(pool, 1).await;
    held.commit().await.unwrap();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn twenty_good_enqueues_racing_one_from_the_year_minus_5000_are_created_and_it_alone_refused(
    pool: PgPool,
) {
    let app = app(pool.clone());
    for bad_at in ["-5000-01-01T00:00:00Z", "+10000-01-01T00:00:00Z"] {
        let mut bodies: Vec<Value> = (0..20)
            .map(|i| json!({"kind": "race", "payload": {"i": i}}))
            .collect();
        bodies.insert(7, json!({"kind": "race", "payload": {}, "run_at": bad_at}));
        let statuses = enqueue_together(&pool, &app, "race", bodies).await;
        assert_eq!(statuses[7], StatusCode::UNPROCESSABLE_ENTITY, "{bad_at}");
        statuses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 7)
            .for_each(|(_, s)| {
                assert_eq!(*s, StatusCode::CREATED, "{bad_at}: {statuses:?}");
            });
        let r = create(
            &app,
            json!({"kind": "race", "payload": {}, "run_at": bad_at}),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            r.body["detail"].as_str().unwrap().contains("run_at"),
            "{}",
            r.body
        );
    }
    // The batch route refuses it too, naming the row, and writes nothing of the batch.
    let before = job_count(&pool).await;
    let batch = json!({"jobs": [{"kind": "race", "payload": {}},
                                {"kind": "race", "payload": {}, "run_at": "-5000-01-01T00:00:00Z"}]});
    let r = call(
        &app,
        "POST",
        "/v1/jobs/batch",
        Some(ENQ),
        Some(&batch.to_string()),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body["detail"].as_str().unwrap().contains("job 1"),
        "{}",
        r.body
    );
    assert_eq!(job_count(&pool).await, before);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_row_the_database_refuses_fails_only_its_own_caller_of_a_coalesced_batch(pool: PgPool) {
    // A rule of the database's that validation cannot know (an operator's constraint).
    sqlx::query("ALTER TABLE jobs ADD CONSTRAINT no_evil CHECK (payload->>'evil' IS NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let app = app(pool.clone());
    let mut bodies: Vec<Value> = (0..20)
        .map(|i| json!({"kind": "mixed", "payload": {"i": i}}))
        .collect();
    bodies.insert(3, json!({"kind": "mixed", "payload": {"evil": true}}));
    let statuses = enqueue_together(&pool, &app, "mixed", bodies).await;
    assert_eq!(statuses[3], StatusCode::INTERNAL_SERVER_ERROR);
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 20, "{statuses:?}");
    assert_eq!(job_count(&pool).await, 20);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn batches_with_overlapping_keys_in_opposite_orders_both_succeed(pool: PgPool) {
    let app = app(pool.clone());
    for round in 0..5 {
        let keys: Vec<String> = (0..200).map(|i| format!("r{round}-k{i}")).collect();
        let forward: Vec<Value> = keys
            .iter()
            .map(|k| json!({"kind": "overlap", "payload": {}, "idempotency_key": k}))
            .collect();
        let mut backward = forward.clone();
        backward.reverse();
        let calls: Vec<_> = [forward, backward]
            .into_iter()
            .map(|jobs| {
                let router = app.router.clone();
                let body = json!({ "jobs": jobs }).to_string();
                tokio::spawn(async move {
                    call(&router, "POST", "/v1/jobs/batch", Some(ENQ), Some(&body)).await
                })
            })
            .collect();
        for c in calls {
            let r = c.await.unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "round {round}: {}", r.body);
            assert_eq!(r.body["jobs"].as_array().unwrap().len(), 200);
        }
    }
    assert_eq!(job_count(&pool).await, 1000);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn errors_axum_raises_itself_are_problem_documents_too(pool: PgPool) {
    let app = app_with(pool, 2048);
    let big = json!({ "reason": "x".repeat(4096) }).to_string();
    let r = call(&app, "POST", "/v1/jobs/1/cancel", Some(ADM), Some(&big)).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE);
    let r = call(&app, "POST", "/v1/kinds/a/pause", Some(ADM), Some(&big)).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE);
    let r = call(&app, "POST", "/v1/kinds/%FF/pause", Some(ADM), None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    let r = call(&app, "GET", "/v1/jobs/%FF", Some(ENQ), None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_drain_answers_a_waiting_long_poll_at_once_and_closes_connections(pool: PgPool) {
    let app = app(pool);
    let id = create(&app, json!({"kind": "k", "payload": {}})).await.body["id"]
        .as_i64()
        .unwrap();
    let poll = {
        let router = app.router.clone();
        let uri = format!("/v1/jobs/{id}?wait=30s");
        tokio::spawn(async move { call(&router, "GET", &uri, Some(ENQ), None).await })
    };
    // Wait until the poll is registered and waiting, then drain.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.state.in_flight.snapshot().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the poll never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.state.readiness.start_draining();
    // Well inside the 30 s it would otherwise wait.
    let r = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "queued");
    assert_eq!(r.headers[header::CONNECTION], "close");
    // A long-poll arriving during the drain is answered at once as well.
    let r = call(
        &app,
        "GET",
        &format!("/v1/jobs/{id}?wait=30s"),
        Some(ENQ),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONNECTION], "close");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn periodic_lists_what_the_workers_recorded_with_the_next_run(pool: PgPool) {
    let app = app(pool.clone());
    let r = call(&app, "GET", "/v1/periodic", Some(ENQ), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"periodic": []}));
    sqlx::query(
        "INSERT INTO periodic_jobs (name, schedule, timezone, kind, payload, next_run_at)
         VALUES ('nightly-report', 'cron 0 3 * * *', 'Europe/Berlin', 'reports.nightly',
                 '{\"scope\": \"all\"}', now() + interval '1 hour')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let r = call(&app, "GET", "/v1/periodic", Some(ENQ), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let p = &r.body["periodic"][0];
    assert_eq!(p["name"], "nightly-report");
    assert_eq!(p["schedule"], "cron 0 3 * * *");
    assert_eq!(p["timezone"], "Europe/Berlin");
    assert_eq!(p["payload"], json!({"scope": "all"}));
    assert_eq!(p["overdue"], false);
    assert!(p["next_run_at"].is_string(), "{p}");
    let r = call(&app, "GET", "/v1/periodic", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED);
}
