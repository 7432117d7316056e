#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! Claim floors (`storage::ClaimFloor`, `storage::lease_jobs_from`) and retention's
//! `delete_expired_jobs_from`, against a real Postgres: while a long transaction holds
//! the vacuum horizon back (issue 11's stress benchmark), a lease or a retention batch that
//! starts where the last one ended reads only its own rows, where one that starts from the
//! oldest entry reads every row consumed since; and what a floor skips is found by a
//! lease without one, higher priorities at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_common::model::KindLease;
use sluice_common::storage::{self, ClaimFloor};
use sluice_common::JobState;
use sqlx::{Connection, PgConnection, PgPool};

use sluice_test_support::jobs::{explain_lease as explain_lease_plan, kinds, scan_buffers};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

/// A session that took an xid and sits idle in its transaction: nothing deleted or
/// updated after it began can be vacuumed, nor its index entries marked dead.
async fn hold_vacuum_horizon(pool: &PgPool) -> PgConnection {
    let opts = pool.connect_options();
    let mut conn = PgConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// `n` queued jobs of `kind`, one second apart in `run_at`, the last an hour ago.
async fn queue_spaced(pool: &PgPool, kind: &str, n: i64) {
    sqlx::query(
        "INSERT INTO jobs (kind, run_at)
         SELECT $1, now() - interval '1 hour' - ($2 - g) * interval '1 second'
           FROM generate_series(1, $2) g",
    )
    .bind(kind)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// The floored lease's rows and the buffers its claim-index scans touched, executed in a
/// transaction that is rolled back.
async fn explain_lease(
    pool: &PgPool,
    kinds: &[KindLease],
    floors: &[Option<ClaimFloor>],
) -> (i64, i64) {
    let plan = explain_lease_plan(pool, kinds, floors, 100).await;
    let top = &plan["Plan"];
    let rows = top["Actual Rows"].as_f64().unwrap() as i64;
    (rows, scan_buffers(top, "jobs_claim_idx"))
}

/// The floor a producer would keep after `jobs`: its last row in claim order, less 1 s.
fn floor_after(jobs: &[sluice_common::model::LeasedJob]) -> ClaimFloor {
    let last = jobs
        .iter()
        .max_by_key(|j| (std::cmp::Reverse(j.priority), j.run_at))
        .unwrap();
    ClaimFloor {
        priority: last.priority,
        run_at: last.run_at - Duration::from_secs(1),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_floored_lease_reads_only_its_own_rows_while_a_long_transaction_holds_vacuum_back(
    pool: PgPool,
) {
    let held = hold_vacuum_horizon(&pool).await;
    let k = kinds(&["mail.send"]);
    queue_spaced(&pool, "mail.send", 6000).await;
    // The worker leases them all, as in a busy queue; each leaves its claim-index entry.
    let mut leased = Vec::new();
    loop {
        let got = storage::lease_jobs(&pool, "w1", &k, 500).await.unwrap();
        if got.is_empty() {
            break;
        }
        leased.extend(got);
    }
    assert_eq!(leased.len(), 6000);
    let floor = floor_after(&leased);
    // New work arrives.
    sqlx::query("INSERT INTO jobs (kind) SELECT 'mail.send' FROM generate_series(1, 5)")
        .execute(&pool)
        .await
        .unwrap();

    let (floored_rows, floored_buffers) = explain_lease(&pool, &k, &[Some(floor)]).await;
    let (full_rows, full_buffers) = explain_lease(&pool, &k, &[None]).await;
    assert_eq!(floored_rows, 5, "the floored lease takes the new jobs");
    assert_eq!(full_rows, 5, "so does the full one");
    assert!(
        full_buffers > 100,
        "from the oldest entry, a lease wades through every job leased since the session began: {full_buffers} buffers"
    );
    assert!(
        floored_buffers * 10 < full_buffers,
        "from the floor it reads only its own: {floored_buffers} buffers vs {full_buffers}"
    );
    held.close().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_row_behind_the_floor_waits_for_a_full_lease_but_a_higher_priority_is_taken_at_once(
    pool: PgPool,
) {
    let k = kinds(&["mail.send"]);
    let ids: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO jobs (kind, priority, run_at) VALUES
             ('mail.send', 0, now() - interval '1 hour'),   -- behind the floor (a rescued lease)
             ('mail.send', 5, now() - interval '1 hour'),   -- older, but more urgent
             ('mail.send', 0, now())                        -- new
         RETURNING id, CASE WHEN priority = 5 THEN 'urgent'
                            WHEN run_at < now() THEN 'behind' ELSE 'new' END",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let id = |what: &str| ids.iter().find(|(_, w)| w == what).unwrap().0;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let floor = ClaimFloor {
        priority: 0,
        run_at: now - Duration::from_secs(600),
    };
    let got = storage::lease_jobs_from(&pool, "w1", &k, &[Some(floor)], 10)
        .await
        .unwrap();
    let mut got: Vec<i64> = got.iter().map(|j| j.id).collect();
    got.sort();
    let mut want = vec![id("urgent"), id("new")];
    want.sort();
    assert_eq!(
        got, want,
        "the floor skips only the same priority's older rows"
    );
    let got = storage::lease_jobs_from(&pool, "w1", &k, &[None], 10)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![id("behind")],
        "a lease without a floor finds it"
    );
}

/// One retention batch of up to 1000 completed `mail.send` jobs finished more than a day
/// ago, from `from` on.
async fn delete_batch(
    conn: &mut PgConnection,
    from: Option<DateTime<Utc>>,
) -> storage::DeletedBatch {
    storage::delete_expired_jobs_from(
        conn,
        JobState::Completed,
        "mail.send",
        Duration::from_secs(86_400),
        1000,
        from,
    )
    .await
    .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retention_batch_from_where_the_last_ended_reads_only_its_own_rows_while_vacuum_is_held(
    pool: PgPool,
) {
    let held = hold_vacuum_horizon(&pool).await;
    sqlx::query(
        "INSERT INTO jobs (kind, state, attempts, finished_at)
         SELECT 'mail.send', 'completed', 1, now() - interval '2 days' + g * interval '1 second'
           FROM generate_series(1, 6000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut from = None;
    let mut deleted = 0;
    for _ in 0..5 {
        let b = delete_batch(&mut conn, from).await;
        deleted += b.rows;
        from = b.newest_finished_at.map(|t| t - Duration::from_secs(1));
    }
    assert_eq!(deleted, 5000);
    let explain = |from: Option<DateTime<Utc>>| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let plan: Value = sqlx::query_scalar(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
                 SELECT id FROM jobs
                  WHERE state = 'completed' AND kind = 'mail.send'
                    AND finished_at < now() - interval '1 day'
                    AND finished_at >= coalesce($1, '-infinity')
                  ORDER BY finished_at LIMIT 100",
            )
            .bind(from)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            tx.rollback().await.unwrap();
            scan_buffers(&plan[0]["Plan"], "jobs_completed_finished_idx")
        }
    };
    let floored = explain(from).await;
    let full = explain(None).await;
    assert!(
        full > 100 && floored * 10 < full,
        "the batch after the floor skips the {deleted} rows deleted before: {floored} buffers vs {full}"
    );
    let b = delete_batch(&mut conn, from).await;
    assert_eq!(b.rows, 1000, "and the next batch deletes what is left");
    held.close().await.unwrap();
}
