#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! Storage that never bloats, against a real Postgres (a fresh database per test): the
//! trigger-kept counters agree with `GROUP BY` whatever SQL ran, retention deletes only
//! what is past its window, the cleaner's lock excludes a second cleaner, and the hot
//! statements read their kind-leading partial indexes however many finished rows exist.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_common::model::{Actor, Failure, Lease};
use sluice_common::{storage, JobClient, JobState};
use sqlx::{Connection, PgConnection, PgPool};

use sluice_test_support::jobs::{enqueue_n, kinds};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

fn actor() -> Actor<'static> {
    Actor {
        name: "test",
        reason: Some("test"),
    }
}

/// The truth: a full count, the runbook's `GROUP BY`, split by kind.
async fn counted(pool: &PgPool) -> BTreeMap<(String, String), i64> {
    sqlx::query_as::<_, (String, String, i64)>(
        "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(k, s, n)| ((k, s), n))
    .collect()
}

/// What the cheap source says.
async fn cheap(pool: &PgPool) -> BTreeMap<(String, String), i64> {
    storage::count_jobs_by_kind_and_state(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|c| ((c.kind, c.state.as_str().to_string()), c.count))
        .collect()
}

async fn assert_counts_agree(pool: &PgPool, step: &str) {
    assert_eq!(cheap(pool).await, counted(pool).await, "after {step}");
    // The worker's one-statement refresh: the same counts, whether or not it folds, the
    // oldest runnable job per kind, and no delta left behind by its fold.
    let stats = storage::refresh_job_stats(pool).await.unwrap();
    let refreshed: BTreeMap<(String, String), i64> = stats
        .counts
        .into_iter()
        .map(|c| ((c.kind, c.state.as_str().to_string()), c.count))
        .collect();
    assert_eq!(refreshed, counted(pool).await, "refresh after {step}");
    let oldest: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT kind, min(run_at) FROM jobs WHERE state = 'queued' AND run_at <= now()
          GROUP BY kind ORDER BY kind",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(stats.oldest_runnable, oldest, "oldest after {step}");
    let deltas: i64 = sqlx::query_scalar("SELECT count(*) FROM job_count_deltas")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(deltas, 0, "the refresh folded after {step}");
    assert_eq!(
        cheap(pool).await,
        counted(pool).await,
        "after {step}, refreshed"
    );
    // And after folding the deltas into the counters.
    storage::fold_job_counts(pool).await.unwrap();
    assert_eq!(
        cheap(pool).await,
        counted(pool).await,
        "after {step}, folded"
    );
}

async fn lease(pool: &PgPool, kind: &str, n: usize) -> Vec<Lease> {
    storage::lease_jobs(pool, "test:1", &kinds(&[kind]), n)
        .await
        .unwrap()
        .into_iter()
        .map(|j| Lease {
            job_id: j.id,
            token: j.token,
        })
        .collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn stats_agree_with_group_by_after_a_mixed_workload_including_the_runbooks_sql(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "mail.send", 50).await;
    enqueue_n(&client, "search.reindex", 30).await;
    assert_counts_agree(&pool, "enqueue").await;

    // Workers: complete some, fail some (permanent and retryable), in batches.
    let leased = lease(&pool, "mail.send", 20).await;
    let mut conn = pool.acquire().await.unwrap();
    storage::complete_jobs(&mut conn, &leased[..12])
        .await
        .unwrap();
    let failures: Vec<Failure> = leased[12..]
        .iter()
        .enumerate()
        .map(|(i, l)| Failure {
            lease: *l,
            error: "boom".into(),
            retry_in: Duration::from_millis(0),
            permanent: i % 2 == 0,
        })
        .collect();
    storage::fail_jobs(&mut conn, &failures).await.unwrap();
    assert_counts_agree(&pool, "complete and fail").await;

    // Operators through the CLI/API code paths: cancel, retry, pause, resume.
    let queued: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'queued' AND kind = 'search.reindex' ORDER BY id LIMIT 3",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for id in &queued {
        storage::cancel_job(&pool, *id, &actor()).await.unwrap();
    }
    storage::retry_job(&pool, queued[0], &actor())
        .await
        .unwrap();
    let failed: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'failed' LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    storage::retry_job(&pool, failed, &actor()).await.unwrap();
    storage::pause_kind(&pool, "search.reindex", &actor())
        .await
        .unwrap();
    assert_counts_agree(&pool, "cancel, retry, pause").await;
    storage::resume_kind(&pool, "search.reindex", &actor())
        .await
        .unwrap();

    // The runbooks' raw SQL, verbatim (docs/runbooks/drain-workers.md and the seed).
    sqlx::query(
        "UPDATE jobs\n   SET state='paused'\n WHERE state='queued'\n   AND kind='search.reindex';",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET state='queued' WHERE state='paused' AND kind='search.reindex'")
        .execute(&pool)
        .await
        .unwrap();
    let held = lease(&pool, "search.reindex", 5).await;
    sqlx::query(
        "UPDATE jobs\n   SET leased_at = NULL, leased_by = NULL, state = 'queued'\n WHERE id = $1;",
    )
    .bind(held[0].job_id)
    .execute(&pool)
    .await
    .unwrap();
    assert_counts_agree(&pool, "the runbooks' UPDATEs").await;

    // Operator SQL that touches finished rows directly: re-queue failed jobs by hand,
    // mark some done by hand, move a kind, delete old rows by hand.
    sqlx::query("UPDATE jobs SET state = 'queued', finished_at = NULL WHERE state = 'failed'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET state = 'completed', finished_at = now() WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' LIMIT 4)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET kind = 'mail.bulk' WHERE kind = 'mail.send' AND state = 'completed' AND id % 2 = 0")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM jobs WHERE state = 'cancelled'")
        .execute(&pool)
        .await
        .unwrap();
    // A bulk INSERT of finished rows (as a backfill or the benchmark does).
    sqlx::query("INSERT INTO jobs (kind, state, finished_at) SELECT 'import', 'completed', now() FROM generate_series(1, 500)")
        .execute(&pool)
        .await
        .unwrap();
    assert_counts_agree(&pool, "operator SQL on finished rows").await;

    // A statement that fails changes no counter.
    let err =
        sqlx::query("UPDATE jobs SET state = 'completed', attempts = -1 WHERE kind = 'import'")
            .execute(&pool)
            .await;
    assert!(err.is_err(), "the check constraint refuses it");
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM jobs WHERE kind = 'import'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_counts_agree(&pool, "a failed statement and a rolled back delete").await;

    // Retention deletes, and TRUNCATE.
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE kind = 'import'")
        .execute(&pool)
        .await
        .unwrap();
    let n = storage::delete_expired_jobs(
        &mut conn,
        JobState::Completed,
        "import",
        Duration::from_secs(3600),
        300,
    )
    .await
    .unwrap();
    assert_eq!(n, 300, "one batch of at most 300");
    assert_counts_agree(&pool, "a retention batch").await;
    sqlx::query("TRUNCATE jobs").execute(&pool).await.unwrap();
    assert_counts_agree(&pool, "TRUNCATE").await;
    assert!(cheap(&pool).await.is_empty());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn concurrent_completers_never_wait_on_a_shared_counter_row(pool: PgPool) {
    // Two completion transactions of the same kind, both open at once: with a single
    // counter row the second would block on the first's row lock. Deltas are appends.
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "k", 4).await;
    let leases = lease(&pool, "k", 4).await;
    let mut a = pool.begin().await.unwrap();
    storage::complete_jobs(&mut a, &leases[..2]).await.unwrap();
    let mut b = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *b)
        .await
        .unwrap();
    storage::complete_jobs(&mut b, &leases[2..]).await.unwrap();
    b.commit().await.unwrap();
    a.commit().await.unwrap();
    assert_counts_agree(&pool, "two concurrent completers").await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retention_batch_deletes_only_expired_rows_of_its_state_and_kind_oldest_first(
    pool: PgPool,
) {
    sqlx::query(
        "INSERT INTO jobs (kind, state, finished_at)
         SELECT k, s, now() - a * interval '1 minute'
           FROM unnest(ARRAY['a','b']) k, unnest(ARRAY['completed','failed','cancelled']) s,
                generate_series(1, 120) a",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO jobs (kind, finished_at) VALUES ('a', now() - interval '1 day')")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // Older than 60.5 min: minutes 61..=120 of (a, completed), 60 rows; in batches of 25.
    let mut batches = Vec::new();
    loop {
        let n = storage::delete_expired_jobs(
            &mut conn,
            JobState::Completed,
            "a",
            Duration::from_secs(3630),
            25,
        )
        .await
        .unwrap();
        batches.push(n);
        if n < 25 {
            break;
        }
    }
    assert_eq!(batches, vec![25, 25, 10]);
    let left: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT kind, state, count(*), extract(epoch FROM max(now() - finished_at))::float8 / 60
           FROM jobs WHERE finished_at IS NOT NULL AND state <> 'queued' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (kind, state, n, oldest_min) in left {
        if (kind.as_str(), state.as_str()) == ("a", "completed") {
            assert_eq!(n, 60);
            assert!(oldest_min <= 60.6, "{oldest_min}");
        } else {
            assert_eq!(n, 120, "{kind} {state} untouched");
        }
    }
    // The queued row with an old finished_at (an operator's mess) is never retention's.
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'queued'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 1);
    let kinds = storage::find_kinds_with_finished_jobs(&pool, JobState::Failed)
        .await
        .unwrap();
    assert_eq!(kinds, vec!["a", "b"]);
    assert_eq!(
        storage::count_expired_jobs(
            &pool,
            JobState::Failed,
            "b",
            Duration::from_secs(100 * 60),
            5
        )
        .await
        .unwrap(),
        5,
        "capped"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn only_one_session_holds_the_cleaner_lock_and_a_dead_one_gives_it_back(pool: PgPool) {
    let url = pool.connect_options();
    let mut first = PgConnection::connect_with(&url).await.unwrap();
    let mut second = PgConnection::connect_with(&url).await.unwrap();
    assert!(storage::try_lock_retention(&mut first).await.unwrap());
    assert!(!storage::try_lock_retention(&mut second).await.unwrap());
    // The holder dies (its connection closes): the lock goes with it.
    first.close().await.unwrap();
    let mut took = false;
    for _ in 0..200 {
        if storage::try_lock_retention(&mut second).await.unwrap() {
            took = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(took, "the lock of a closed session is released");
    assert!(storage::unlock_retention(&mut second).await.unwrap());
}

/// Index statistics of `jobs`, by index name: (scans, index entries read).
async fn index_reads(pool: &PgPool) -> BTreeMap<String, (i64, i64)> {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes WHERE relid = 'jobs'::regclass",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(n, s, r)| (n, (s, r)))
    .collect()
}

async fn seq_scans(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Runs `f` on one connection and returns how each index's statistics moved meanwhile
/// (the connection's statistics are flushed before and after), and the sequential scans.
async fn measure<F>(
    pool: &PgPool,
    conn: &mut PgConnection,
    f: F,
) -> (BTreeMap<String, (i64, i64)>, i64)
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> futures::future::BoxFuture<'c, ()>,
{
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    let before = index_reads(pool).await;
    let seq_before = seq_scans(pool).await;
    f(conn).await;
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    let after = index_reads(pool).await;
    let seq_after = seq_scans(pool).await;
    let delta = after
        .into_iter()
        .map(|(k, (s, r))| {
            let (s0, r0) = before.get(&k).copied().unwrap_or((0, 0));
            (k, (s - s0, r - r0))
        })
        .filter(|(_, d)| *d != (0, 0))
        .collect();
    (delta, seq_after - seq_before)
}

/// The figure is 2 M finished rows; this uses 200 000 (one generate_series
/// INSERT, then ANALYZE) so it runs in seconds, which is enough to make a plan that reads
/// finished rows, or other kinds' queued rows, show up as a six-digit entry count.
#[sqlx::test(migrator = "MIGRATOR")]
async fn the_hot_statements_read_their_kind_indexes_not_finished_rows_or_other_kinds(pool: PgPool) {
    sqlx::query(
        "INSERT INTO jobs (kind, state, finished_at, attempts)
         SELECT CASE WHEN g % 3 = 0 THEN 'mine' ELSE 'theirs' END,
                (ARRAY['completed','failed','cancelled'])[1 + g % 3], now() - g * interval '1 second', 1
           FROM generate_series(1, 200000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Another kind's backlog, ahead of ours by priority and age: the old claim index made a
    // worker of `mine` walk all of it on every lease.
    sqlx::query("INSERT INTO jobs (kind, priority, run_at) SELECT 'theirs', 5, now() - interval '1 hour' FROM generate_series(1, 20000)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs (kind) SELECT 'mine' FROM generate_series(1, 200)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();

    let mut conn = pool.acquire().await.unwrap().detach();
    // Eight leases, so a prepared statement's generic plan (after five) is covered too.
    let (reads, seq) = measure(&pool, &mut conn, |c| {
        Box::pin(async move {
            for _ in 0..8 {
                let got = storage::lease_jobs(&mut *c, "t:1", &kinds(&["mine"]), 16)
                    .await
                    .unwrap();
                assert_eq!(got.len(), 16);
            }
        })
    })
    .await;
    assert_eq!(seq, 0, "no sequential scan of jobs: {reads:?}");
    let claim = reads.get("jobs_claim_idx").copied().unwrap_or_default();
    assert!(
        claim.0 >= 8,
        "every lease scanned the claim index: {reads:?}"
    );
    let total: i64 = reads.values().map(|(_, r)| r).sum();
    assert!(
        total < 2_000,
        "leasing 128 jobs read {total} index entries (finished rows or the other kind's backlog): {reads:?}"
    );

    // A worker of both kinds still takes the best rows across kinds.
    let both = storage::lease_jobs(&pool, "t:1", &kinds(&["mine", "theirs"]), 4)
        .await
        .unwrap();
    assert!(
        both.iter().all(|j| j.kind == "theirs" && j.priority == 5),
        "{both:?}"
    );

    let (reads, seq) = measure(&pool, &mut conn, |c| {
        Box::pin(async move {
            for _ in 0..8 {
                storage::find_next_wakeup(&mut *c, &["mine", "theirs"])
                    .await
                    .unwrap();
            }
        })
    })
    .await;
    assert_eq!(seq, 0, "{reads:?}");
    assert!(
        reads
            .get("jobs_queued_kind_run_at_idx")
            .is_some_and(|d| d.0 >= 16),
        "next wake-up per kind from the (kind, run_at) index: {reads:?}"
    );
    // Eight calls; one that walked the other kind's backlog would read 20 000 entries each.
    // (The processing half reads the ~130 running jobs' entries: bounded by concurrency.)
    let total: i64 = reads.values().map(|(_, r)| r).sum();
    assert!(total < 5_000, "{total}: {reads:?}");

    // The cheap stats read the live states' indexes and the counters, never the finished
    // rows: their cost stays at the queue's size (~20k here), not the 200k finished.
    let (reads, seq) = measure(&pool, &mut conn, |c| {
        Box::pin(async move {
            let counts = storage::count_jobs_by_kind_and_state(&mut *c)
                .await
                .unwrap();
            let finished: i64 = counts
                .iter()
                .filter(|s| s.state.is_terminal())
                .map(|s| s.count)
                .sum();
            assert_eq!(finished, 200_000);
        })
    })
    .await;
    assert_eq!(seq, 0, "{reads:?}");
    let total: i64 = reads.values().map(|(_, r)| r).sum();
    assert!(total < 60_000, "{total}: {reads:?}");
}

/// Statistics taken while the queue was empty make the planner expect ~1 queued row. A
/// lease must still read only its batch, not scan and sort the kind's whole backlog (the
/// failure the storage benchmark showed before `jobs_queued_kind_run_at_idx` got its
/// predicate), with a generic plan (what a prepared statement ends up with) and a custom one.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lease_planned_from_statistics_of_an_empty_queue_still_reads_only_its_batch(
    pool: PgPool,
) {
    sqlx::query("INSERT INTO jobs (kind, state, finished_at) SELECT 'sluice.noop', 'completed', now() FROM generate_series(1, 50000)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO jobs (kind) SELECT 'sluice.noop' FROM generate_series(1, 50000)")
        .execute(&pool)
        .await
        .unwrap();
    for mode in ["force_generic_plan", "force_custom_plan"] {
        let mut conn = pool.acquire().await.unwrap().detach();
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (reads, seq) = measure(&pool, &mut conn, |c| {
            Box::pin(async move {
                for _ in 0..4 {
                    let got = storage::lease_jobs(
                        &mut *c,
                        "t:1",
                        &kinds(&["sluice.noop", "sluice.sleep"]),
                        16,
                    )
                    .await
                    .unwrap();
                    assert_eq!(got.len(), 16);
                }
            })
        })
        .await;
        assert_eq!(seq, 0, "{mode}: {reads:?}");
        let total: i64 = reads.values().map(|(_, r)| r).sum();
        assert!(
            total < 1_000,
            "{mode}: four leases of 16 read {total} index entries of a 50 000 backlog: {reads:?}"
        );
    }
}

/// A completer that fell behind leaves many `processing` rows; statistics taken before
/// expect few. Completing a batch must still cost the batch (primary-key look-ups), not a
/// pass over every processing row, or a completer that falls behind falls further behind.
#[sqlx::test(migrator = "MIGRATOR")]
async fn completing_a_batch_reads_the_batch_not_every_processing_row(pool: PgPool) {
    // Everything on one connection, so the statistics measured are this session's only.
    let mut conn = pool.acquire().await.unwrap().detach();
    sqlx::query("INSERT INTO jobs (kind, state, finished_at) SELECT 'sluice.noop', 'completed', now() FROM generate_series(1, 20000)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("ANALYZE jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs (kind) SELECT 'sluice.noop' FROM generate_series(1, 20000)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut leases: Vec<Lease> = Vec::new();
    while leases.len() < 20_000 {
        let got = storage::lease_jobs(&mut conn, "t:1", &kinds(&["sluice.noop"]), 1000)
            .await
            .unwrap();
        leases.extend(got.into_iter().map(|j| Lease {
            job_id: j.id,
            token: j.token,
        }));
    }
    // The generic plan is what a prepared statement runs once Postgres stops re-planning it
    // (a custom plan is costed with the real batch and, on a table this small, may
    // rightly prefer one sequential scan to 350 look-ups).
    for mode in ["force_generic_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let batch: Vec<Lease> = leases.drain(..350 * 6).collect();
        let (reads, seq) = measure(&pool, &mut conn, |c| {
            Box::pin(async move {
                for chunk in batch.chunks(350) {
                    let done = storage::complete_jobs(&mut *c, chunk).await.unwrap();
                    assert_eq!(done.len(), chunk.len());
                }
            })
        })
        .await;
        assert_eq!(seq, 0, "{mode}: {reads:?}");
        let total: i64 = reads.values().map(|(_, r)| r).sum();
        assert!(
            total < 20_000,
            "{mode}: six completions of 350 read {total} index entries with ~20 000 processing: {reads:?}"
        );
    }
}
