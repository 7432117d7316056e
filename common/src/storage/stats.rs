//! Cheap statistics: counts by kind and state at a cost that does not grow with the
//! number of finished jobs.
//!
//! Live states (`queued`, `processing`, `paused`) are counted from the table through
//! their indexes: that costs what the queue holds now. Finished states are read from the
//! counters the migration `20261203000003_storage.sql` keeps by trigger: `job_counts`
//! plus the `job_count_deltas` rows not folded yet, so the answer is exact at once,
//! including after the runbooks' manual `UPDATE`s and retention deletes. One worker at a
//! time folds the deltas ([`fold_job_counts`]) so there are never many of them.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::error::Result;
use crate::model::StateCount;

/// Advisory lock key of the counter fold ("sluice" in ASCII, then 2).
pub const FOLD_LOCK: i64 = 0x736c_7569_6365_0002;

/// Counts by kind and state (only non-zero ones), the cheap way; the same numbers as the
/// runbook's `SELECT state, count(*) FROM jobs GROUP BY state`, split by kind. What
/// `GET /v1/stats`, `sluicectl status` and the worker's `sluice_queue_depth` read.
pub async fn count_jobs_by_kind_and_state(exec: impl PgExecutor<'_>) -> Result<Vec<StateCount>> {
    Ok(sqlx::query_as(&format!(
        "SELECT kind, state, count FROM ({COUNTS}) c ORDER BY kind, state"
    ))
    .fetch_all(exec)
    .await?)
}

/// Counts by kind and state, non-zero ones, with `oldest`: for `queued` rows the
/// `run_at` of the kind's oldest runnable job (else NULL). Live states come from their
/// partial indexes (what the queue holds now), finished ones from the counters plus the
/// unfolded deltas.
const COUNTS: &str = "
     SELECT kind, 'queued' AS state, count(*) AS count,
            min(run_at) FILTER (WHERE run_at <= now()) AS oldest
       FROM jobs WHERE state = 'queued' GROUP BY kind
     UNION ALL
     SELECT kind, 'processing', count(*), NULL FROM jobs WHERE state = 'processing' GROUP BY kind
     UNION ALL
     SELECT kind, 'paused', count(*), NULL FROM jobs WHERE state = 'paused' GROUP BY kind
     UNION ALL
     SELECT kind, state, sum(n)::int8, NULL FROM (
         SELECT kind, state, n FROM job_counts
         UNION ALL
         SELECT kind, state, delta FROM job_count_deltas
     ) finished
      GROUP BY kind, state
     HAVING sum(n) <> 0";

/// The fold as SQL, for [`fold_job_counts`] and [`refresh_job_stats`]: CTEs that, when
/// this statement wins the fold lock, move every pending delta into `job_counts` (rows
/// that reach zero are deleted, the others upserted). Ends with `folded`: one row, NULL
/// when another session holds the lock, else the number of delta rows folded.
///
/// One statement, so no transaction to open and close: the advisory lock is
/// transaction-scoped and lasts exactly as long as the statement. Rows appended by
/// completers meanwhile are not in its snapshot and wait for the next fold.
const FOLD_CTES: &str = "
     mine AS (SELECT pg_try_advisory_xact_lock($1) AS mine),
     moved AS (
         DELETE FROM job_count_deltas WHERE (SELECT mine FROM mine)
         RETURNING kind, state, delta
     ), summed AS (
         SELECT kind, state, sum(delta)::int8 AS n, count(*) AS rows FROM moved GROUP BY kind, state
     ), zeroed AS (
         DELETE FROM job_counts c USING summed s
          WHERE c.kind = s.kind AND c.state = s.state AND c.n + s.n = 0
         RETURNING 1
     ), upserted AS (
         INSERT INTO job_counts (kind, state, n)
         SELECT s.kind, s.state, s.n FROM summed s
          WHERE s.n <> 0
            AND NOT EXISTS (SELECT 1 FROM job_counts c
                             WHERE c.kind = s.kind AND c.state = s.state AND c.n + s.n = 0)
         ON CONFLICT (kind, state) DO UPDATE SET n = job_counts.n + excluded.n
         RETURNING 1
     ), folded AS (
         SELECT CASE WHEN (SELECT mine FROM mine) THEN coalesce(sum(rows), 0)::int8 END AS rows
           FROM summed
          WHERE (SELECT count(*) FROM zeroed) + (SELECT count(*) FROM upserted) >= 0
     )";

/// Folds the pending `job_count_deltas` rows into `job_counts`, in one statement, unless
/// another worker is folding right now (then `None`). Returns how many delta rows were
/// folded. Completers never wait on this: they only append deltas, and rows appended
/// while it runs are left for the next fold.
pub async fn fold_job_counts(exec: impl PgExecutor<'_>) -> Result<Option<u64>> {
    let folded: Option<i64> =
        sqlx::query_scalar(&format!("WITH {FOLD_CTES} SELECT rows FROM folded"))
            .bind(FOLD_LOCK)
            .fetch_one(exec)
            .await?;
    Ok(folded.map(|n| n as u64))
}

/// What a worker's statistics refresh reads: counts by kind and state (as
/// [`count_jobs_by_kind_and_state`]) and, per kind, the `run_at` of the oldest runnable
/// queued job.
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    /// Non-zero counts by kind and state.
    pub counts: Vec<StateCount>,
    /// The oldest runnable queued job's `run_at`, per kind that has one.
    pub oldest_runnable: Vec<(String, DateTime<Utc>)>,
}

/// The worker's periodic refresh in ONE statement (an idle worker's cost is counted in
/// statements): folds the counter deltas (as [`fold_job_counts`]), counts by kind and
/// state, and finds each kind's oldest runnable job. The counts read the statement's
/// snapshot, taken before the fold moves anything, so `job_counts` plus the deltas is the
/// exact total whichever way the fold goes.
pub async fn refresh_job_stats(exec: impl PgExecutor<'_>) -> Result<JobStats> {
    let rows: Vec<(String, String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(&format!(
        "WITH {FOLD_CTES}
         SELECT kind, state, count, oldest FROM ({COUNTS}) c
          WHERE (SELECT count(*) FROM folded) >= 0
          ORDER BY kind, state"
    ))
    .bind(FOLD_LOCK)
    .fetch_all(exec)
    .await?;
    let mut stats = JobStats::default();
    for (kind, state, count, oldest) in rows {
        if let Some(at) = oldest {
            stats.oldest_runnable.push((kind.clone(), at));
        }
        let state = state
            .parse()
            .map_err(|e| crate::Error::Database(sqlx::Error::Decode(Box::new(e))))?;
        stats.counts.push(StateCount { kind, state, count });
    }
    Ok(stats)
}
