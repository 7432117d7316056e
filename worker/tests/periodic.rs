//! Periodic jobs (issue 13): several workers with the same `[periodic.*]` table enqueue
//! exactly one job per tick, also across a rolling restart, and record the definition
//! with its next run. Real binaries, real Postgres; ticks are read from the jobs'
//! idempotency keys.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

mod support;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{pool_for, url_of, wait_until, write_temp, Worker};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

/// Periodic jobs' kind here: a kind no worker runs, so the jobs stay queued and countable.
const KIND: &str = "reports.tick";

fn envs(handlers: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "SLUICE_HANDLERS_FILE",
            handlers.to_str().unwrap().to_string(),
        ),
        ("SLUICE_WORKER_KINDS", "sluice.noop".to_string()),
    ]
}

fn start(url: &str, envs: &[(&'static str, String)]) -> Worker {
    let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Worker::start(url, &e)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn three_workers_with_every_1s_enqueue_one_job_per_second_and_never_two_for_a_tick(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let handlers = write_temp(
        "every.toml",
        &format!("[periodic.\"beat\"]\nevery = \"1s\"\nkind = \"{KIND}\"\npayload = {{ n = 1 }}\n"),
    );
    let envs = envs(&handlers);
    let url = url_of(&opts);
    let mut workers: Vec<Worker> = (0..3).map(|_| start(&url, &envs)).collect();
    for w in &mut workers {
        w.wait_ready().await;
    }
    // Watch 10 s of ticks, measured on the ticks themselves (the keys), from the first
    // tick enqueued after all three were up.
    wait_until(
        &pool,
        &format!("SELECT count(*) >= 1 FROM jobs WHERE kind = '{KIND}'"),
        Duration::from_secs(20),
    )
    .await;
    let first: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(&format!(
        "SELECT max(split_part(idempotency_key, '@', 2)::timestamptz) FROM jobs WHERE kind = '{KIND}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    // Wait (on the database clock) until the 10 s after `first` are over and their last
    // tick has had time to arrive.
    wait_until(
        &pool,
        &format!(
            "SELECT now() > '{}'::timestamptz + interval '12 seconds'",
            first.to_rfc3339()
        ),
        Duration::from_secs(60),
    )
    .await;
    let (in_window, distinct, total, total_distinct): (i64, i64, i64, i64) =
        sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE t > $1 AND t <= $1 + interval '10 seconds'),
                count(DISTINCT t) FILTER (WHERE t > $1 AND t <= $1 + interval '10 seconds'),
                count(*), count(DISTINCT t)
           FROM (SELECT split_part(idempotency_key, '@', 2)::timestamptz AS t
                   FROM jobs WHERE kind = '{KIND}') s"
        ))
        .bind(first)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, total_distinct, "never two jobs for one tick");
    assert!(
        (9..=11).contains(&in_window),
        "10 ± 1 jobs in 10 s, got {in_window}"
    );
    assert_eq!(in_window, distinct);
    // Jobs carry the definition.
    let payload: serde_json::Value = sqlx::query_scalar(&format!(
        "SELECT payload FROM jobs WHERE kind = '{KIND}' LIMIT 1"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload, serde_json::json!({"n": 1}));
    // The definition is recorded with a next run in the future of its last tick.
    let (schedule, next_after_last): (String, bool) = sqlx::query_as(
        "SELECT schedule, next_run_at > last_tick_at FROM periodic_jobs WHERE name = 'beat'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((schedule.as_str(), next_after_last), ("every 1s", true));
    // Each worker counted its ticks: enqueued + skipped over all three covers every tick.
    let mut enqueued = 0;
    for w in &workers {
        let m = reqwest::get(format!("http://127.0.0.1:{}/metrics", w.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in m.lines() {
            if line.starts_with("sluice_periodic_ticks_total{")
                && line.contains("outcome=\"enqueued\"")
            {
                enqueued += line.rsplit(' ').next().unwrap().parse::<i64>().unwrap();
            }
        }
    }
    let now_total: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE kind = '{KIND}'"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        enqueued >= total && enqueued <= now_total,
        "{enqueued} vs {total}..{now_total}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rolling_restart_of_every_worker_across_a_cron_minute_boundary_enqueues_that_minute_once(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let handlers = write_temp(
        "cron.toml",
        &format!("[periodic.\"minutely\"]\ncron = \"* * * * *\"\nkind = \"{KIND}\"\n"),
    );
    let envs = envs(&handlers);
    let url = url_of(&opts);
    let mut workers: Vec<Worker> = (0..3).map(|_| start(&url, &envs)).collect();
    for w in &mut workers {
        w.wait_ready().await;
    }
    // Start the restart a few seconds before a minute boundary (database clock).
    wait_until(
        &pool,
        "SELECT extract(second FROM now()) >= 55",
        Duration::from_secs(70),
    )
    .await;
    let boundary: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('minute', now()) + interval '1 minute'")
            .fetch_one(&pool)
            .await
            .unwrap();
    // Replace each worker in turn: the new one is up before the old one gets SIGTERM, as a
    // Deployment's rolling update does, so the boundary falls somewhere in the middle.
    for slot in workers.iter_mut() {
        let mut fresh = start(&url, &envs);
        fresh.wait_ready().await;
        let mut old = std::mem::replace(slot, fresh);
        old.signal(15);
        old.wait_exit(Duration::from_secs(30)).await;
    }
    wait_until(
        &pool,
        &format!(
            "SELECT now() > '{}'::timestamptz + interval '3 seconds'",
            boundary.to_rfc3339()
        ),
        Duration::from_secs(90),
    )
    .await;
    let key = sluice_common::storage::periodic_idempotency_key("minutely", boundary);
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = $1 AND idempotency_key = $2")
            .bind(KIND)
            .bind(&key)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 1, "exactly one job for the minute {boundary}");
    let dup: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) - count(DISTINCT idempotency_key) FROM jobs WHERE kind = '{KIND}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dup, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_tick_missed_while_no_worker_ran_is_enqueued_once_on_start_and_no_earlier_ones(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    // A definition first recorded an hour ago, whose last worker stopped then: the 60
    // minutely ticks since were all missed.
    sqlx::query(&format!(
        "INSERT INTO periodic_jobs (name, schedule, kind, created_at, updated_at)
         VALUES ('minutely', 'cron * * * * *', '{KIND}', now() - interval '1 hour', now() - interval '1 hour')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let handlers = write_temp(
        "missed.toml",
        &format!("[periodic.\"minutely\"]\ncron = \"* * * * *\"\nkind = \"{KIND}\"\n"),
    );
    let envs = envs(&handlers);
    let url = url_of(&opts);
    let mut w = start(&url, &envs);
    w.wait_ready().await;
    wait_until(
        &pool,
        &format!("SELECT count(*) >= 1 FROM jobs WHERE kind = '{KIND}'"),
        Duration::from_secs(20),
    )
    .await;
    // Only the latest missed tick: the current minute (or, right at a boundary, the next).
    let (n, recent): (i64, bool) = sqlx::query_as(&format!(
        "SELECT count(*), bool_and(split_part(idempotency_key, '@', 2)::timestamptz >= date_trunc('minute', now()) - interval '1 minute')
           FROM jobs WHERE kind = '{KIND}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(n <= 2 && recent, "{n} jobs, recent: {recent}");
    // A second worker starting now enqueues nothing new for the same tick.
    let mut w2 = start(&url, &envs);
    w2.wait_ready().await;
    w2.wait_log("periodic jobs recorded", Duration::from_secs(20))
        .await;
    let dup: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) - count(DISTINCT idempotency_key) FROM jobs WHERE kind = '{KIND}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dup, 0);
}
