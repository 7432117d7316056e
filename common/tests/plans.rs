#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The hot statements' plans on a table Postgres has never analyzed (issue 14): a fresh
//! deployment that gets a backlog before autovacuum's first visit. The plans are read
//! with `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of the very statements the worker runs
//! (`storage::LEASE_JOBS_SQL`, `storage::COMPLETE_JOBS_SQL`), inside a transaction that
//! is rolled back, so each test reads the plan and the work it did, not a guess.
//!
//! A bad plan here is one that reads the backlog instead of the few rows it needs: a
//! sequential scan of `jobs`, or any node that produces far more `jobs` rows than the
//! statement leases or completes.

use serde_json::Value;
use sluice_common::model::{KindLease, Lease};
use sluice_common::storage;
use sqlx::PgPool;

use sluice_test_support::jobs::explain_lease as explain_lease_of;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

const KINDS: usize = 10;
const QUEUED: i64 = 50_000;

/// 50k queued jobs over ten kinds, various priorities and `run_at`s (some in the future),
/// on a table autovacuum is kept away from, so it stays never analyzed for the test.
async fn never_analyzed_backlog(pool: &PgPool) {
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = off)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (kind, priority, run_at)
         SELECT 'kind' || (g % $2), (g % 3) - 1,
                now() - interval '1 hour' + (g % 1000) * interval '1 s'
                      + CASE WHEN g % 50 = 0 THEN interval '1 day' ELSE interval '0' END
           FROM generate_series(1, $1::int8) g",
    )
    .bind(QUEUED)
    .bind(KINDS as i32)
    .execute(pool)
    .await
    .unwrap();
    let never: bool = sqlx::query_scalar(
        "SELECT c.reltuples < 0 AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL
           FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
          WHERE c.oid = 'jobs'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(never, "the table must be one Postgres has never analyzed");
}

fn all_kinds() -> Vec<KindLease> {
    (0..KINDS)
        .map(|k| KindLease {
            kind: format!("kind{k}"),
            lease_timeout: std::time::Duration::from_secs(300),
        })
        .collect()
}

/// Every plan node, depth first.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for c in children {
            nodes(c, out);
        }
    }
}

/// The nodes reading `jobs` (a scan of the table or one of its indexes), as
/// (node type, index name, rows produced over all loops).
fn jobs_scans(root: &Value) -> Vec<(String, String, f64)> {
    let mut all = Vec::new();
    nodes(&root["Plan"], &mut all);
    all.iter()
        .filter(|n| n.get("Relation Name").and_then(Value::as_str) == Some("jobs"))
        .filter(|n| n["Node Type"] != "ModifyTable")
        .map(|n| {
            let rows = n["Actual Rows"].as_f64().unwrap() * n["Actual Loops"].as_f64().unwrap();
            (
                n["Node Type"].as_str().unwrap().to_string(),
                n.get("Index Name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                rows,
            )
        })
        .collect()
}

async fn explain_lease(pool: &PgPool, limit: i64) -> Value {
    explain_lease_with(pool, limit, false).await
}

/// `floored`: the statement with claim floors (`storage::LEASE_JOBS_FROM_FLOORS_SQL`),
/// every other kind given a floor an hour back at priority 0 (the rest none).
async fn explain_lease_with(pool: &PgPool, limit: i64, floored: bool) -> Value {
    let kinds = all_kinds();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let floors: Vec<Option<storage::ClaimFloor>> = (0..kinds.len())
        .map(|i| {
            (floored && i % 2 == 0).then_some(storage::ClaimFloor {
                priority: 0,
                run_at: hour_ago,
            })
        })
        .collect();
    explain_lease_of(pool, &kinds, &floors, limit).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lease_on_a_never_analyzed_backlog_reads_index_entries_of_its_own_batch_only(
    pool: PgPool,
) {
    never_analyzed_backlog(&pool).await;
    for (limit, floored) in [1_i64, 16, 100]
        .into_iter()
        .flat_map(|l| [(l, false), (l, true)])
    {
        let plan = explain_lease_with(&pool, limit, floored).await;
        let scans = jobs_scans(&plan);
        assert!(
            scans
                .iter()
                .any(|(t, idx, _)| t == "Index Scan" && idx == "jobs_claim_idx"),
            "the claim walks the per-kind claim index: {scans:?}\n{plan:#}"
        );
        for (node, index, rows) in &scans {
            assert_ne!(node, "Seq Scan", "no scan of the whole table:\n{plan:#}");
            assert_ne!(
                node, "Bitmap Heap Scan",
                "no bitmap scan of the backlog:\n{plan:#}"
            );
            // Each kind's scan may lock up to `limit` rows; nothing may read the backlog.
            assert!(
                *rows <= (limit as f64) * KINDS as f64,
                "{node} on {index} produced {rows} rows for a lease of {limit}:\n{plan:#}"
            );
        }
        assert_eq!(
            plan["Plan"]["Actual Rows"].as_f64().unwrap() as i64,
            limit,
            "the lease takes what it asked for:\n{plan:#}"
        );
        // The backlog's heap alone is about a thousand pages; a lease reads its kinds'
        // first index pages, the rows it locks and the counter trigger's few.
        let buffers = plan["Plan"]["Shared Hit Blocks"].as_i64().unwrap()
            + plan["Plan"]["Shared Read Blocks"].as_i64().unwrap();
        assert!(
            buffers < 40 * limit + 400,
            "a lease of {limit} touched {buffers} buffers:\n{plan:#}"
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_completion_on_a_never_analyzed_table_looks_its_batch_up_by_primary_key(pool: PgPool) {
    never_analyzed_backlog(&pool).await;
    // A completer's typical backlog: many rows processing at once, of which one batch
    // completes.
    let leased = storage::lease_jobs(&pool, "plans-test", &all_kinds(), 2_000)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2_000);
    let batch: Vec<Lease> = leased.iter().take(100).map(|j| j.lease()).collect();
    let ids: Vec<i64> = batch.iter().map(|l| l.job_id).collect();
    let tokens: Vec<i64> = batch.iter().map(|l| l.token).collect();
    let mut tx = pool.begin().await.unwrap();
    let plan: Value = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        storage::COMPLETE_JOBS_SQL
    ))
    .bind(&ids)
    .bind(&tokens)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let plan = plan[0].clone();
    let scans = jobs_scans(&plan);
    assert!(
        !scans.is_empty()
            && scans
                .iter()
                .all(|(t, idx, _)| t == "Index Scan" && idx == "jobs_pkey"),
        "the batch is looked up by primary key only: {scans:?}\n{plan:#}"
    );
    for (_, _, rows) in &scans {
        assert!(*rows <= 100.0, "read {rows} rows for 100:\n{plan:#}");
    }
    // And the statement itself completes exactly the batch.
    let mut conn = pool.acquire().await.unwrap();
    let done = storage::complete_jobs(&mut conn, &batch).await.unwrap();
    assert_eq!(done.len(), 100);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_cleaner_analyzes_a_jobs_table_that_has_no_statistics_once(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        !storage::analyze_jobs_if_never_analyzed(&mut conn)
            .await
            .unwrap(),
        "an empty, untouched table is left alone"
    );
    never_analyzed_backlog(&pool).await;
    // The insert's counts reach the statistics views once its backend reports them (up
    // to ~10 s after it went idle); clearing the snapshot shows the latest.
    let mut analyzed = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if storage::analyze_jobs_if_never_analyzed(&mut conn)
            .await
            .unwrap()
        {
            analyzed = true;
            break;
        }
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        analyzed,
        "the 50k-row backlog without statistics is analyzed"
    );
    let reltuples: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert!(
        reltuples > 10_000.0,
        "statistics now count the backlog: {reltuples}"
    );
    assert!(
        !storage::analyze_jobs_if_never_analyzed(&mut conn)
            .await
            .unwrap(),
        "a table with statistics is not analyzed again"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lease_after_statistics_taken_while_nothing_was_queued_still_walks_the_claim_index(
    pool: PgPool,
) {
    // Issue 11's slow drain: a table of finished rows analyzed while nothing was queued
    // (its statistics say "no queued rows"), then a backlog arrives before the next
    // ANALYZE. The plain clause `state = 'queued'` then let the planner fetch and sort a
    // kind's whole backlog through `jobs_state_kind_id_idx` on every lease.
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = off)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (kind, state, attempts, finished_at)
         SELECT 'kind' || (g % $1), (ARRAY['completed','completed','failed','cancelled'])[1 + g % 4],
                1, now() - (g % 3600) * interval '1 s'
           FROM generate_series(1, 100000) g",
    )
    .bind(KINDS as i32)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (kind) SELECT 'kind' || (g % $1) FROM generate_series(1, 20000) g",
    )
    .bind(KINDS as i32)
    .execute(&pool)
    .await
    .unwrap();
    for limit in [1_i64, 16, 100] {
        let plan = explain_lease(&pool, limit).await;
        let scans = jobs_scans(&plan);
        assert!(
            scans
                .iter()
                .any(|(t, idx, _)| t == "Index Scan" && idx == "jobs_claim_idx"),
            "the claim walks the claim index: {scans:?}\n{plan:#}"
        );
        for (node, index, rows) in &scans {
            assert!(
                *rows <= (limit as f64) * KINDS as f64,
                "{node} on {index} produced {rows} rows for a lease of {limit}:\n{plan:#}"
            );
        }
    }
}
