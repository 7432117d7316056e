//! Reads: jobs by id, filter or idempotency key, kinds, the audit trail. (Counts are in
//! `stats`.)

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::error::{Error, Result};
use crate::model::{AuditEntry, Job, JobState, KindInfo, JOB_COLUMNS};

/// One job by id.
pub async fn find_job(exec: impl PgExecutor<'_>, id: i64) -> Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(exec).await?)
}

/// States of these jobs, for long-poll waiters woken by [`DONE_CHANNEL`].
pub async fn find_job_states(
    exec: impl PgExecutor<'_>,
    ids: &[i64],
) -> Result<Vec<(i64, JobState)>> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, state FROM jobs WHERE id = ANY($1::int8[])")
            .bind(ids)
            .fetch_all(exec)
            .await?;
    rows.into_iter()
        .map(|(id, s)| {
            s.parse()
                .map(|st| (id, st))
                .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))
        })
        .collect()
}

/// Jobs newest first, optionally filtered, continuing below `before_id` (keyset
/// pagination: stable while jobs are being added, and as cheap on page 1000 as on page 1).
pub async fn list_jobs(
    exec: impl PgExecutor<'_>,
    state: Option<JobState>,
    kind: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs
          WHERE ($1::text IS NULL OR state = $1)
            AND ($2::text IS NULL OR kind = $2)
            AND ($3::int8 IS NULL OR id < $3)
          ORDER BY id DESC
          LIMIT $4"
    );
    Ok(sqlx::query_as(&sql)
        .bind(state.map(JobState::as_str))
        .bind(kind)
        .bind(before_id)
        .bind(limit)
        .fetch_all(exec)
        .await?)
}

/// Jobs currently leased, oldest lease first (what "drained" is read from).
pub async fn find_processing_jobs(
    exec: impl PgExecutor<'_>,
    kind: Option<&str>,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs
          WHERE state = 'processing' AND ($1::text IS NULL OR kind = $1)
          ORDER BY leased_at, id"
    );
    Ok(sqlx::query_as(&sql).bind(kind).fetch_all(exec).await?)
}

/// For each kind with runnable queued jobs, when the oldest of them became runnable
/// (first entries of `jobs_queued_kind_run_at_idx`, whose predicate is repeated here).
pub async fn find_oldest_runnable_by_kind(
    exec: impl PgExecutor<'_>,
) -> Result<Vec<(String, DateTime<Utc>)>> {
    Ok(sqlx::query_as(
        "SELECT kind, min(run_at) FROM jobs
          WHERE state = 'queued' AND run_at <= now() AND run_at > '-infinity'
          GROUP BY kind ORDER BY kind",
    )
    .fetch_all(exec)
    .await?)
}

/// Every kind known: registered by a worker, paused by an operator, or present in `jobs`
/// (found with a loose index scan on `(kind, idempotency_key)`, not a table scan).
pub async fn list_kinds(exec: impl PgExecutor<'_>) -> Result<Vec<KindInfo>> {
    Ok(sqlx::query_as(
        "WITH RECURSIVE seen(kind) AS (
             (SELECT kind FROM jobs ORDER BY kind LIMIT 1)
             UNION ALL
             SELECT (SELECT j.kind FROM jobs j WHERE j.kind > s.kind ORDER BY j.kind LIMIT 1)
               FROM seen s WHERE s.kind IS NOT NULL
         ), all_kinds AS (
             SELECT kind FROM seen WHERE kind IS NOT NULL
             UNION
             SELECT kind FROM job_kinds
         )
         SELECT a.kind, coalesce(k.paused, false) AS paused, k.paused_at, k.paused_by, k.reason
           FROM all_kinds a LEFT JOIN job_kinds k USING (kind)
          ORDER BY a.kind",
    )
    .fetch_all(exec)
    .await?)
}

/// Audit rows at or after `since`, oldest first, at most `limit`.
pub async fn list_audit_log(
    exec: impl PgExecutor<'_>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    Ok(sqlx::query_as(
        "SELECT id, at, actor, action, target, reason, details FROM audit_log
          WHERE ($1::timestamptz IS NULL OR at >= $1) ORDER BY id LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// The database's clock. Lease ages and expiries are computed against it, not the
/// operator's laptop clock, because `leased_at` and `lease_expires_at` were stamped by it.
pub async fn fetch_database_now(exec: impl PgExecutor<'_>) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(exec).await?)
}

/// The newest `limit` audit rows at or after `since`, returned oldest first: what an
/// operator wants from "show me the audit trail" (the latest entries, read in order).
pub async fn list_recent_audit_log(
    exec: impl PgExecutor<'_>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    Ok(sqlx::query_as(
        "SELECT * FROM (
             SELECT id, at, actor, action, target, reason, details FROM audit_log
              WHERE ($1::timestamptz IS NULL OR at >= $1) ORDER BY id DESC LIMIT $2
         ) newest ORDER BY id",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// The newest migration applied successfully (`None`: the migrations table has no
/// successful row). An unmigrated database answers `undefined_table` (42P01), which
/// [`crate::db::DatabaseCheck`] reports as `schema_missing`.
pub async fn read_schema_version(exec: impl PgExecutor<'_>) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(exec)
            .await?,
    )
}
