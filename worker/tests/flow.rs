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
use support::{insert, pool_for, state, url_of, wait_until, write_temp, Worker};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

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

/// Largest number of rows of `kind` ever seen `processing` while sampling until `done`
/// (a query returning one bool) holds.
async fn max_processing_until(pool: &PgPool, kind: &str, done: &str, limit: Duration) -> i64 {
    let deadline = std::time::Instant::now() + limit;
    let mut max = 0;
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state = 'processing' AND kind = $1",
        )
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap();
        max = max.max(n);
        let finished: bool = sqlx::query_scalar(done).fetch_one(pool).await.unwrap();
        if finished {
            return max;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not done within {limit:?} ({done}); max processing so far {max}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_worker_holding_a_global_limit_starts_the_next_job_when_one_of_its_own_finishes_not_at_the_poll(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let handlers = write_temp(
        "global2.toml",
        "[kinds.\"sluice.sleep\"]\nglobal_concurrency = 2\n",
    );
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap()),
            ("SLUICE_WORKER_CONCURRENCY", "8"),
            ("SLUICE_WORKER_POLL_INTERVAL", "60s"),
        ],
    );
    w.wait_ready().await;
    // Ten jobs in one statement: one notification. The limit holds eight back; after that
    // only this worker's own jobs finishing can free a slot, and the poll is a minute away.
    sqlx::query(
        "INSERT INTO jobs (kind, payload) SELECT 'sluice.sleep', '{\"ms\": 100}' FROM generate_series(1, 10)",
    )
    .execute(&pool)
    .await
    .unwrap();
    wait_until(
        &pool,
        "SELECT count(*) = 10 FROM jobs WHERE kind = 'sluice.sleep' AND state = 'completed'",
        Duration::from_secs(45),
    )
    .await;
    let max_gap: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(gap))::float8 FROM (
             SELECT leased_at - lag(finished_at) OVER (ORDER BY leased_at) AS gap
               FROM jobs WHERE kind = 'sluice.sleep') g",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        max_gap < 10.0,
        "a freed slot was taken {max_gap:.1} s after a job finished: {}",
        w.log()
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn three_workers_never_run_more_than_the_global_concurrency_and_a_killed_workers_slot_frees_when_its_lease_expires(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let handlers = write_temp(
        "global.toml",
        "[kinds.\"sluice.sleep\"]\nglobal_concurrency = 2\n\n\
         [kinds.\"sluice.hold\"]\nglobal_concurrency = 1\nlease_timeout = \"2s\"\nbackoff_base = \"10ms\"\nbackoff_max = \"20ms\"\n",
    );
    let envs = [
        ("SLUICE_WORKER_TEST_KINDS", "on"),
        ("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap()),
        ("SLUICE_WORKER_CONCURRENCY", "8"),
        ("SLUICE_WORKER_KINDS", "sluice.sleep,sluice.hold"),
    ];
    let url = url_of(&opts);
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::start(&url, &envs)).collect();
    for w in &mut workers {
        w.wait_ready().await;
    }
    sqlx::query(
        "INSERT INTO jobs (kind, payload) SELECT 'sluice.sleep', '{\"ms\": 300}' FROM generate_series(1, 24)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let max = max_processing_until(
        &pool,
        "sluice.sleep",
        "SELECT count(*) = 24 FROM jobs WHERE kind = 'sluice.sleep' AND state = 'completed'",
        Duration::from_secs(120),
    )
    .await;
    assert!(
        max <= 2,
        "at most 2 processing across all workers, saw {max}"
    );
    assert!(max >= 1);
    let (spread_ok, workers_used): (bool, i64) = sqlx::query_as(
        "SELECT max(finished_at) - min(leased_at) >= interval '3.5 seconds', count(DISTINCT leased_by)
           FROM jobs WHERE kind = 'sluice.sleep'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // 24 jobs of 300 ms, two at a time, take at least 3.6 s whoever runs them.
    assert!(spread_ok, "the jobs ran two at a time at most");
    assert!(workers_used >= 1);

    // Kill a worker holding the one slot of `sluice.hold`: the other job of that kind
    // waits until the dead worker's lease expires and the rescuer takes it back.
    let mut lock = sqlx::pool::PoolConnection::detach(pool.acquire().await.unwrap());
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut lock)
        .await
        .unwrap();
    let first = support::insert(&pool, "sluice.hold", r#"{"key": 4242}"#).await;
    wait_until(
        &pool,
        &format!("SELECT state = 'processing' FROM jobs WHERE id = {first}"),
        Duration::from_secs(30),
    )
    .await;
    let second = support::insert(&pool, "sluice.hold", r#"{"key": 4242}"#).await;
    let holder: String =
        sqlx::query_scalar(&format!("SELECT leased_by FROM jobs WHERE id = {first}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    let victim = workers
        .iter()
        .position(|w| holder.ends_with(&w.identity_suffix()))
        .unwrap();
    workers[victim].signal(9);
    // Until the lease expires and is rescued, the second job must not start; afterwards
    // one of the two holds the slot (the first is back in the queue after a short backoff).
    let max = max_processing_until(
        &pool,
        "sluice.hold",
        &format!(
            "SELECT (SELECT coalesce(last_error LIKE 'lease expired%', false) FROM jobs WHERE id = {first})
                AND (SELECT count(*) FROM jobs WHERE kind = 'sluice.hold' AND state = 'processing') = 1"
        ),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(max, 1, "never two jobs of a kind limited to 1");
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut lock)
        .await
        .unwrap();
    let max = max_processing_until(
        &pool,
        "sluice.hold",
        &format!(
            "SELECT count(*) = 2 FROM jobs WHERE id IN ({first}, {second}) AND state = 'completed'"
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(max <= 1, "saw {max}");
    let metrics = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        workers[(victim + 1) % 3].port
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics
            .contains("sluice_jobs_held_back{kind=\"sluice.hold\",limit=\"global_concurrency\"}"),
        "{metrics}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rate_limit_of_20_per_second_spreads_200_starts_over_9_seconds_with_no_second_holding_more_than_20(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let handlers = write_temp(
        "rate.toml",
        "[kinds.\"sluice.noop\"]\nrate_limit = \"20/s\"\n",
    );
    let envs = [
        ("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap()),
        ("SLUICE_WORKER_CONCURRENCY", "8"),
        ("SLUICE_WORKER_KINDS", "sluice.noop"),
    ];
    let url = url_of(&opts);
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::start(&url, &envs)).collect();
    for w in &mut workers {
        w.wait_ready().await;
    }
    sqlx::query("INSERT INTO jobs (kind) SELECT 'sluice.noop' FROM generate_series(1, 200)")
        .execute(&pool)
        .await
        .unwrap();
    wait_until(
        &pool,
        "SELECT count(*) = 200 FROM jobs WHERE kind = 'sluice.noop' AND state = 'completed'",
        Duration::from_secs(120),
    )
    .await;
    // Starts are the lease stamps; every job started once (noop never fails).
    let (spread, worst, attempts): (f64, i64, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(leased_at) - min(leased_at))::float8,
                (SELECT max(c) FROM (SELECT (SELECT count(*) FROM jobs b
                                              WHERE b.kind = 'sluice.noop'
                                                AND b.leased_at BETWEEN a.leased_at AND a.leased_at + interval '1 second') AS c
                                       FROM jobs a WHERE a.kind = 'sluice.noop') w),
                sum(attempts)
           FROM jobs WHERE kind = 'sluice.noop'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 200);
    assert!(worst <= 20, "a 1-second window held {worst} starts");
    assert!(spread >= 9.0, "200 starts at 20/s spread over {spread} s");
    let used: i64 = sqlx::query_scalar("SELECT count(DISTINCT leased_by) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(used >= 1);
}
