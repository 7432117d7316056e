//! The retention cleaner of the real `sluice-worker` binary against a real Postgres: it
//! deletes exactly what is past its window, only one worker cleans at a time, and a
//! cleaner killed with SIGKILL mid-batch leaves nothing half-done.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

mod support;

use std::time::{Duration, Instant};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, PgConnection, PgPool,
};
use support::{pool_for, url_of, wait_until, write_temp, Worker};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

/// Inserts `n` finished jobs `age` old, marked with what retention must do to them.
async fn seed(pool: &PgPool, kind: &str, state: &str, age: &str, n: i32, expect: &str) {
    sqlx::query(
        "INSERT INTO jobs (kind, state, finished_at, payload)
         SELECT $1, $2, now() - $3::interval, jsonb_build_object('expect', $4::text)
           FROM generate_series(1, $5)",
    )
    .bind(kind)
    .bind(state)
    .bind(age)
    .bind(expect)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn deleted_metric(w: &Worker) -> u64 {
    let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", w.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with("sluice_jobs_deleted_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn assert_counters_agree(pool: &PgPool) {
    sluice_common::storage::fold_job_counts(pool).await.unwrap();
    let cheap: Vec<(String, String, i64)> =
        sluice_common::storage::count_jobs_by_kind_and_state(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.kind, c.state.as_str().to_string(), c.count))
            .collect();
    let truth: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state ORDER BY kind, state",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(cheap, truth);
}

fn passes(w: &Worker) -> usize {
    w.log().matches("retention pass done").count()
}

/// Waits until the worker has finished `more` further cleaning passes.
async fn wait_passes(w: &Worker, more: usize) {
    let target = passes(w) + more;
    let deadline = Instant::now() + Duration::from_secs(30);
    while passes(w) < target {
        assert!(Instant::now() < deadline, "no cleaning pass: {}", w.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const HANDLERS: &str = r#"
[kinds."sluice.sleep"]
retention_completed = "off"

[kinds."remote.thing"]
url = "http://127.0.0.1:9/"
retention_failed = "10m"
"#;

fn cleaner_env(handlers: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SLUICE_RETENTION_COMPLETED", "1h".into()),
        ("SLUICE_RETENTION_FAILED", "2h".into()),
        ("SLUICE_RETENTION_CANCELLED", "off".into()),
        ("SLUICE_RETENTION_INTERVAL", "200ms".into()),
        ("SLUICE_RETENTION_BATCH", "1000".into()),
        ("SLUICE_HANDLERS_FILE", handlers.into()),
        ("RUST_LOG", "info,sluice_worker::cleaner=debug".into()),
    ]
}

fn start(url: &str, env: &[(&'static str, String)]) -> Worker {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Worker::start(url, &env)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_cleaner_deletes_exactly_what_is_past_its_window_per_state_kind_override_and_off(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    // Defaults: completed 1h, failed 2h, cancelled off.
    seed(
        &pool,
        "sluice.noop",
        "completed",
        "2 hours",
        2500,
        "deleted",
    )
    .await; // 3 batches
    seed(&pool, "sluice.noop", "completed", "30 minutes", 10, "kept").await;
    seed(&pool, "sluice.noop", "failed", "3 hours", 10, "deleted").await;
    seed(&pool, "sluice.noop", "failed", "90 minutes", 10, "kept").await;
    seed(&pool, "sluice.noop", "cancelled", "30 days", 10, "kept").await; // off
                                                                          // sluice.sleep keeps completed forever; its failed inherit 2h.
    seed(&pool, "sluice.sleep", "completed", "30 days", 10, "kept").await;
    seed(&pool, "sluice.sleep", "failed", "3 hours", 10, "deleted").await;
    // remote.thing keeps failed 10m (shorter than the default).
    seed(&pool, "remote.thing", "failed", "20 minutes", 10, "deleted").await;
    seed(&pool, "remote.thing", "failed", "5 minutes", 10, "kept").await;
    // A kind no worker runs gets the defaults.
    seed(&pool, "someone.else", "completed", "2 hours", 10, "deleted").await;
    // Live jobs are never retention's, whatever their timestamps say.
    sqlx::query("INSERT INTO jobs (kind, state, finished_at, run_at, payload) VALUES ('someone.else', 'queued', now() - interval '9 days', now() + interval '1 day', '{\"expect\":\"kept\"}')")
        .execute(&pool)
        .await
        .unwrap();
    let kept = count(
        &pool,
        "SELECT count(*) FROM jobs WHERE payload->>'expect' = 'kept'",
    )
    .await;
    let doomed = count(
        &pool,
        "SELECT count(*) FROM jobs WHERE payload->>'expect' = 'deleted'",
    )
    .await;

    let handlers = write_temp("handlers.toml", HANDLERS);
    // Restricted to one kind: it must still honour the other kinds' overrides.
    let mut env = cleaner_env(handlers.to_str().unwrap());
    env.push(("SLUICE_WORKER_KINDS", "sluice.noop".into()));
    let mut w = start(&url_of(&opts), &env);
    w.wait_ready().await;
    wait_until(
        &pool,
        "SELECT count(*) = 0 FROM jobs WHERE payload->>'expect' = 'deleted'",
        Duration::from_secs(30),
    )
    .await;
    // Two more full passes: nothing else may go.
    wait_passes(&w, 2).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE payload->>'expect' = 'kept'"
        )
        .await,
        kept,
        "{}",
        w.log()
    );
    assert_eq!(deleted_metric(&w).await, doomed as u64);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit_log").await,
        0,
        "routine deletes are not audited"
    );
    assert_counters_agree(&pool).await;
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(15)).await.code(), Some(0));
    let _ = std::fs::remove_file(handlers);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_workers_never_clean_at_the_same_time(_o: PgPoolOptions, opts: PgConnectOptions) {
    let pool = pool_for(&opts).await;
    seed(
        &pool,
        "sluice.noop",
        "completed",
        "2 hours",
        3000,
        "deleted",
    )
    .await;
    seed(&pool, "sluice.noop", "completed", "1 minute", 10, "kept").await;
    let handlers = write_temp("handlers.toml", HANDLERS);
    let mut env = cleaner_env(handlers.to_str().unwrap());
    env.push(("SLUICE_RETENTION_BATCH", "100".into()));

    // A third party holds the cleaner's lock, as a worker in the middle of a pass would.
    let mut holder = PgConnection::connect_with(&opts).await.unwrap();
    assert!(sluice_common::storage::try_lock_retention(&mut holder)
        .await
        .unwrap());
    let mut a = start(&url_of(&opts), &env);
    let mut b = start(&url_of(&opts), &env);
    a.wait_ready().await;
    b.wait_ready().await;
    for w in [&a, &b] {
        w.wait_log("another worker is cleaning", Duration::from_secs(30))
            .await;
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs").await,
        3010,
        "neither cleans while the lock is held"
    );

    // Released: the two share the work, one pass at a time, each row deleted once.
    // While they clean, at most one session ever holds the lock.
    sluice_common::storage::unlock_retention(&mut holder)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (left, holders): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs WHERE payload->>'expect' = 'deleted'),
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                        AND ((classid::int8 << 32) | objid::int8) = $1)",
        )
        .bind(sluice_common::storage::RETENTION_LOCK)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(holders <= 1, "two sessions hold the cleaner lock");
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not cleaned: {}", a.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(deleted_metric(&a).await + deleted_metric(&b).await, 3000);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 10);
    assert_counters_agree(&pool).await;
    let _ = std::fs::remove_file(handlers);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_cleaner_killed_mid_batch_leaves_nothing_half_done(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    seed(&pool, "sluice.noop", "completed", "2 hours", 500, "deleted").await;
    seed(&pool, "sluice.noop", "completed", "1 minute", 20, "kept").await;
    let handlers = write_temp("handlers.toml", HANDLERS);
    let env = cleaner_env(handlers.to_str().unwrap());

    // Block the batch inside its DELETE: its counter trigger needs to append to
    // job_count_deltas, which this transaction locks against writes.
    let mut blocker = PgConnection::connect_with(&opts).await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_count_deltas IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut w = start(&url_of(&opts), &env);
    wait_until(
        &pool,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database() AND application_name = 'sluice-worker'
                           AND wait_event_type = 'Lock' AND query LIKE '%DELETE FROM jobs%')",
        Duration::from_secs(30),
    )
    .await;
    w.signal(libc::SIGKILL);
    w.wait_exit(Duration::from_secs(10)).await;
    tx.rollback().await.unwrap();
    // Its backend goes once it notices the client is gone.
    wait_until(
        &pool,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE datname = current_database() AND application_name = 'sluice-worker')",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE payload->>'expect' = 'deleted'"
        )
        .await,
        500,
        "the killed batch deleted nothing"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE payload->>'expect' = 'kept'"
        )
        .await,
        20
    );
    assert_counters_agree(&pool).await;

    // The next cleaner finishes the job.
    let mut w = start(&url_of(&opts), &env);
    w.wait_ready().await;
    wait_until(
        &pool,
        "SELECT count(*) = 20 FROM jobs",
        Duration::from_secs(30),
    )
    .await;
    assert_counters_agree(&pool).await;
    let _ = std::fs::remove_file(handlers);
}

#[test]
fn bad_retention_settings_exit_2_naming_the_variable() {
    let bad_file = write_temp(
        "bad.toml",
        "[kinds.\"sluice.noop\"]\nretention_completed = \"1 fortnight\"\n",
    );
    for (env, needle) in [
        (
            ("SLUICE_RETENTION_COMPLETED", "a day"),
            "SLUICE_RETENTION_COMPLETED",
        ),
        (("SLUICE_RETENTION_FAILED", "7"), "SLUICE_RETENTION_FAILED"),
        (
            ("SLUICE_RETENTION_INTERVAL", "1ms"),
            "SLUICE_RETENTION_INTERVAL",
        ),
        (("SLUICE_RETENTION_BATCH", "0"), "SLUICE_RETENTION_BATCH"),
        (
            ("SLUICE_HANDLERS_FILE", bad_file.to_str().unwrap()),
            "retention_completed",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
            .env_clear()
            .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
            .env(env.0, env.1)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.lines().count() == 1,
            "{env:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(bad_file);
}
