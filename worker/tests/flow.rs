//! Flow control (issue 13): snooze (a handler's "run me again later" that uses no attempt),
//! global concurrency and rate limits across workers. Real binaries, real Postgres; the
//! exactness properties are checked from the database's own stamps.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

mod support;

use std::time::Duration;

use axum::{http::StatusCode, routing::post, Router};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use support::{insert, state, url_of, wait_until, write_temp, Worker};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

async fn pool_for(opts: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone())
        .await
        .unwrap()
}

async fn create_runs_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE sluice_test_runs (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
                                        at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_snoozed_job_keeps_its_attempts_moves_its_run_at_and_runs_again(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    create_runs_table(&pool).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_TEST_KINDS", "on"),
            ("SLUICE_WORKER_KINDS", "sluice.record"),
        ],
    );
    w.wait_ready().await;
    let id = insert(&pool, "sluice.record", r#"{"ms": 0, "snooze_ms": 3000}"#).await;
    // The first run snoozed: queued again, the attempt given back, run_at ~3 s after it.
    wait_until(
        &pool,
        &format!(
            "SELECT count(*) = 1 FROM jobs j, sluice_test_runs r
              WHERE j.id = {id} AND r.job_id = j.id AND j.state = 'queued' AND j.attempts = 0
                AND j.lease_token IS NULL AND j.run_at >= r.at + interval '2.5 seconds'"
        ),
        Duration::from_secs(20),
    )
    .await;
    // And it runs again once due, this time to completion, having used one attempt.
    wait_until(
        &pool,
        &format!("SELECT state = 'completed' FROM jobs WHERE id = {id}"),
        Duration::from_secs(30),
    )
    .await;
    let (st, attempts, _) = state(&pool, id).await;
    assert_eq!((st.as_str(), attempts), ("completed", 1));
    let (runs, gap_ok): (i64, bool) = sqlx::query_as(
        "SELECT count(*), max(at) - min(at) >= interval '2.5 seconds' FROM sluice_test_runs WHERE job_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (runs, gap_ok),
        (2, true),
        "one snoozed run, one after the snooze"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", w.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_jobs_snoozed_total{kind=\"sluice.record\"} 1"),
        "{metrics}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_http_target_snoozes_a_job_with_a_sluice_snooze_header_on_a_2xx(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let app = Router::new().route(
        "/later",
        post(move || {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    (StatusCode::ACCEPTED, [("Sluice-Snooze", "2s")])
                } else {
                    (StatusCode::OK, [("X-Done", "yes")])
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let handlers = write_temp(
        "snooze.toml",
        &format!("[kinds.\"t.later\"]\nurl = \"http://{addr}/later\"\n"),
    );
    let pool = pool_for(&opts).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap()),
            ("SLUICE_WORKER_KINDS", "t.later"),
        ],
    );
    w.wait_ready().await;
    let id = insert(&pool, "t.later", "{}").await;
    wait_until(
        &pool,
        &format!(
            "SELECT state = 'queued' AND attempts = 0 AND run_at > created_at + interval '1.5 seconds'
               FROM jobs WHERE id = {id}"
        ),
        Duration::from_secs(20),
    )
    .await;
    wait_until(
        &pool,
        &format!("SELECT state = 'completed' AND attempts = 1 FROM jobs WHERE id = {id}"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}
