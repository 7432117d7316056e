//! HTTP-target kinds against a real local server: 2xx completes, 500 retries, 400 fails,
//! and the `Idempotency-Key` is the job id on every attempt.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{insert, state, url_of, wait_until, write_temp, Worker};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

type Deliveries = Arc<Mutex<HashMap<String, Vec<String>>>>;

async fn record(route: &str, deliveries: &Deliveries, headers: &HeaderMap) -> usize {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mut d = deliveries.lock().unwrap();
    let list = d.entry(route.to_string()).or_default();
    list.push(key);
    list.len()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn http_targets_complete_on_2xx_retry_on_500_and_fail_on_400(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let deliveries: Deliveries = Arc::default();
    let app = Router::new()
        .route(
            "/ok",
            post(|State(d): State<Deliveries>, h: HeaderMap| async move {
                record("ok", &d, &h).await;
                StatusCode::OK
            }),
        )
        .route(
            "/flaky",
            post(|State(d): State<Deliveries>, h: HeaderMap| async move {
                if record("flaky", &d, &h).await == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/bad",
            post(|State(d): State<Deliveries>, h: HeaderMap| async move {
                record("bad", &d, &h).await;
                StatusCode::BAD_REQUEST
            }),
        )
        .with_state(deliveries.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let handlers = write_temp(
        "http.toml",
        &format!(
            "[kinds.\"t.ok\"]\nurl = \"http://{addr}/ok\"\n\n\
             [kinds.\"t.flaky\"]\nurl = \"http://{addr}/flaky\"\nbackoff_base = \"10ms\"\n\n\
             [kinds.\"t.bad\"]\nurl = \"http://{addr}/bad\"\n"
        ),
    );
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts.clone())
        .await
        .unwrap();
    let ok = insert(&pool, "t.ok", r#"{"a": 1}"#).await;
    let flaky = insert(&pool, "t.flaky", "{}").await;
    let bad = insert(&pool, "t.bad", "{}").await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap())],
    );
    w.wait_ready().await;
    wait_until(
        &pool,
        &format!("SELECT count(*) = 3 FROM jobs WHERE id IN ({ok}, {flaky}, {bad}) AND state IN ('completed', 'failed')"),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(state(&pool, ok).await.0, "completed");
    assert_eq!(state(&pool, flaky).await.0, "completed");
    assert_eq!(state(&pool, flaky).await.1, 2);
    assert_eq!(
        (
            state(&pool, bad).await.0.as_str(),
            state(&pool, bad).await.1
        ),
        ("failed", 1)
    );
    let d = deliveries.lock().unwrap().clone();
    assert_eq!(d["ok"], vec![ok.to_string()]);
    assert_eq!(
        d["flaky"],
        vec![flaky.to_string(), flaky.to_string()],
        "same key on every attempt"
    );
    assert_eq!(d["bad"], vec![bad.to_string()]);
    let err: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(bad)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(err.unwrap().contains("400"));
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    let _ = std::fs::remove_file(handlers);
}
