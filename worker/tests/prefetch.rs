//! `SLUICE_WORKER_PREFETCH`: a worker that leases ahead of its free slots into a small
//! local buffer (issue 14). The real binary against a real Postgres, real signals.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

mod support;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{pool_for, url_of, wait_until, HeldLock, Worker};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

#[sqlx::test(migrator = "MIGRATOR")]
async fn prefetched_jobs_are_capped_and_put_back_at_once_on_sigterm_with_their_attempt_restored(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let lock = HeldLock::take(&opts, 11).await;
    // First a thousand quick jobs, so the worker has been starting jobs fast (the buffer
    // is sized by that rate: 4 jobs in 50 ms needs only 80 jobs/s), then eleven held
    // ones behind them.
    sqlx::query(
        "INSERT INTO jobs (kind, payload, priority)
         SELECT 'sluice.noop', '{}', 10 FROM generate_series(1, 1000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (kind, payload) SELECT 'sluice.hold', '{\"key\": 11}' FROM generate_series(1, 11)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_CONCURRENCY", "1"),
            ("SLUICE_WORKER_PREFETCH", "4"),
            ("SLUICE_WORKER_TEST_KINDS", "on"),
        ],
    );
    w.wait_ready().await;
    // One held job runs in the only slot once the quick ones are done; the buffer took up
    // to 4 more with it (how many depends on how the last leases fell), never more.
    wait_until(
        &pool,
        "SELECT count(*) = 1000 FROM jobs WHERE kind = 'sluice.noop' AND state = 'completed'
           AND EXISTS (SELECT 1 FROM jobs WHERE kind = 'sluice.hold' AND state = 'processing')",
        Duration::from_secs(60),
    )
    .await;
    let processing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'sluice.hold' AND state = 'processing'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let buffered = processing - 1;
    assert!(
        (0..=4).contains(&buffered),
        "the buffer holds at most SLUICE_WORKER_PREFETCH jobs: {buffered}"
    );

    w.signal(libc::SIGTERM);
    if buffered > 0 {
        w.wait_log("put prefetched jobs back", Duration::from_secs(10))
            .await;
    } else {
        w.wait_log("waiting for in-flight jobs", Duration::from_secs(10))
            .await;
    }
    // The running held job still runs (the lock is still taken), yet the buffered ones
    // are back.
    let (processing, queued, leased, attempts): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'processing'),
                count(*) FILTER (WHERE state = 'queued'),
                count(*) FILTER (WHERE state = 'queued' AND leased_at IS NOT NULL),
                coalesce(sum(attempts), 0)
           FROM jobs WHERE kind = 'sluice.hold'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (processing, queued, leased, attempts),
        (1, 10, 0, 1),
        "prefetched jobs are queued again at once, no attempt used ({buffered} were buffered)"
    );
    lock.release().await;
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'sluice.hold' AND state = 'completed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(completed, 1, "the running one finished in the drain");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_prefetching_worker_runs_a_backlog_through_its_buffer_once_each(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    sqlx::query(
        "INSERT INTO jobs (kind, payload) SELECT 'sluice.sleep', '{\"ms\": 0}' FROM generate_series(1, 2000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_CONCURRENCY", "4"),
            ("SLUICE_WORKER_PREFETCH", "100"),
            ("SLUICE_WORKER_TEST_KINDS", "on"),
        ],
    );
    w.wait_ready().await;
    wait_until(
        &pool,
        "SELECT count(*) = 2000 FROM jobs WHERE state = 'completed'",
        Duration::from_secs(120),
    )
    .await;
    let (max_attempts, batches): (i32, i64) =
        sqlx::query_as("SELECT max(attempts), count(DISTINCT leased_at) FROM jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(max_attempts, 1, "every job ran once");
    // 2000 jobs, 4 slots: without the buffer a lease takes at most 4 jobs (500+ leases).
    assert!(
        batches < 200,
        "leases come in batches bigger than the free slots: {batches} leases"
    );
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
}
