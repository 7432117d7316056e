//! Cheap statistics: counts by kind and state at a cost that does not grow with the
//! number of finished jobs.
//!
//! Live states (`queued`, `processing`, `paused`) are counted from the table through
//! their indexes: that costs what the queue holds now. Finished states are read from the
//! counters the migration `20261203000003_storage.sql` keeps by trigger: `job_counts`
//! plus the `job_count_deltas` rows not folded yet, so the answer is exact at once,
//! including after the runbooks' manual `UPDATE`s and retention deletes. One worker at a
//! time folds the deltas ([`fold_job_counts`]) so there are never many of them.

use sqlx::PgExecutor;

use crate::error::Result;
use crate::model::StateCount;

/// Advisory lock key of the counter fold ("sluice" in ASCII, then 2).
pub const FOLD_LOCK: i64 = 0x736c_7569_6365_0002;

/// Counts by kind and state (only non-zero ones), the cheap way; the same numbers as the
/// runbook's `SELECT state, count(*) FROM jobs GROUP BY state`, split by kind. What
/// `GET /v1/stats`, `sluicectl status` and the worker's `sluice_queue_depth` read.
pub async fn count_jobs_by_kind_and_state(exec: impl PgExecutor<'_>) -> Result<Vec<StateCount>> {
    Ok(sqlx::query_as(
        "SELECT kind, state, count FROM (
             SELECT kind, 'queued' AS state, count(*) AS count
               FROM jobs WHERE state = 'queued' GROUP BY kind
             UNION ALL
             SELECT kind, 'processing', count(*) FROM jobs WHERE state = 'processing' GROUP BY kind
             UNION ALL
             SELECT kind, 'paused', count(*) FROM jobs WHERE state = 'paused' GROUP BY kind
             UNION ALL
             SELECT kind, state, sum(n)::int8 FROM (
                 SELECT kind, state, n FROM job_counts
                 UNION ALL
                 SELECT kind, state, delta FROM job_count_deltas
             ) finished
              GROUP BY kind, state
             HAVING sum(n) <> 0
         ) c
         ORDER BY kind, state",
    )
    .fetch_all(exec)
    .await?)
}

/// Folds the pending `job_count_deltas` rows into `job_counts` in one short transaction,
/// unless another worker is folding right now (then `None`). Returns how many delta rows
/// were folded. Completers never wait on this: they only append deltas, and rows appended
/// while it runs are left for the next fold.
pub async fn fold_job_counts(pool: &sqlx::PgPool) -> Result<Option<u64>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '1s'")
        .execute(&mut *tx)
        .await?;
    let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(FOLD_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !mine {
        tx.rollback().await?;
        return Ok(None);
    }
    let folded: i64 = sqlx::query_scalar(
        "WITH moved AS (
             DELETE FROM job_count_deltas RETURNING kind, state, delta
         ), summed AS (
             SELECT kind, state, sum(delta)::int8 AS n, count(*) AS rows FROM moved GROUP BY kind, state
         ), upserted AS (
             INSERT INTO job_counts (kind, state, n)
             SELECT kind, state, n FROM summed
             ON CONFLICT (kind, state) DO UPDATE SET n = job_counts.n + excluded.n
             RETURNING 1
         )
         SELECT coalesce(sum(rows), 0)::int8 FROM summed WHERE (SELECT count(*) FROM upserted) >= 0",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM job_counts WHERE n = 0")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(folded as u64))
}
