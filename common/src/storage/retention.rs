//! Retention: deleting finished jobs past their window, in small batches, by one worker
//! at a time.
//!
//! A cleaning pass holds the session-level advisory lock [`RETENTION_LOCK`] on one
//! connection for its duration, so two workers never clean at once; if the worker dies,
//! its connection closes and the lock goes with it. Each batch is its own short
//! transaction (`lock_timeout` [`RETENTION_LOCK_TIMEOUT_MS`]), a single `DELETE` of at most
//! `limit` rows found on the `(kind, finished_at)` partial index of its state: a killed
//! cleaner leaves nothing half-done, and no transaction is long enough to hold back
//! vacuum. The counters of `job_counts` follow through their triggers, in the same
//! transaction. No `audit_log` row: this is routine, not an intervention.

use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::{PgConnection, PgExecutor};

use crate::error::Result;
use crate::JobState;

/// Advisory lock key of the cleaner ("sluice" in ASCII, then 1).
pub const RETENTION_LOCK: i64 = 0x736c_7569_6365_0001;
/// `lock_timeout` of a retention batch: if a row or table lock is held by someone else,
/// give up on this batch quickly rather than queue other sessions behind our lock request.
pub const RETENTION_LOCK_TIMEOUT_MS: u64 = 1000;

/// The partial-index predicate literal of a finished state (a parameter would not match the
/// index predicate); `None` for states retention does not apply to.
fn finished_literal(state: JobState) -> Option<&'static str> {
    match state {
        JobState::Completed => Some("completed"),
        JobState::Failed => Some("failed"),
        JobState::Cancelled => Some("cancelled"),
        _ => None,
    }
}

/// Tries to become the cleaner: takes [`RETENTION_LOCK`] for this session without waiting.
/// `false`: another worker is cleaning now.
pub async fn try_lock_retention(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RETENTION_LOCK)
        .fetch_one(conn)
        .await?)
}

/// Gives [`RETENTION_LOCK`] back at the end of a pass.
pub async fn unlock_retention(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(RETENTION_LOCK)
        .fetch_one(conn)
        .await?)
}

/// The kinds that have any finished job in `state`: a loose index scan of the state's
/// `(kind, finished_at)` partial index (one probe per kind, not a scan of its rows). Kinds
/// no worker registered are found too.
pub async fn find_kinds_with_finished_jobs(
    exec: impl PgExecutor<'_>,
    state: JobState,
) -> Result<Vec<String>> {
    let Some(st) = finished_literal(state) else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "WITH RECURSIVE seen(kind) AS (
             (SELECT kind FROM jobs WHERE state = '{st}' ORDER BY kind LIMIT 1)
             UNION ALL
             SELECT (SELECT j.kind FROM jobs j WHERE j.state = '{st}' AND j.kind > s.kind
                      ORDER BY j.kind LIMIT 1)
               FROM seen s WHERE s.kind IS NOT NULL
         )
         SELECT kind FROM seen WHERE kind IS NOT NULL"
    );
    Ok(sqlx::query_scalar(&sql).fetch_all(exec).await?)
}

/// Deletes at most `limit` jobs of `kind` in the finished `state` that finished more than
/// `keep` ago, oldest first, in one short transaction of its own. Returns how many.
///
/// Rows locked by someone else (an operator retrying one right now) are skipped, not
/// waited for; any other lock wait longer than [`RETENTION_LOCK_TIMEOUT_MS`] fails the
/// batch, which then changed nothing.
pub async fn delete_expired_jobs(
    conn: &mut PgConnection,
    state: JobState,
    kind: &str,
    keep: Duration,
    limit: usize,
) -> Result<u64> {
    Ok(
        delete_expired_jobs_from(conn, state, kind, keep, limit, None)
            .await?
            .rows,
    )
}

/// What one retention batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedBatch {
    /// Rows deleted.
    pub rows: u64,
    /// The latest `finished_at` among them: where the next batch may start looking.
    pub newest_finished_at: Option<DateTime<Utc>>,
}

/// [`delete_expired_jobs`] that looks only at rows finished at or after `from` (`None`:
/// all), and says where it got to.
///
/// Why: every deleted row leaves its entry in the state's `(kind, finished_at)` index
/// until vacuum removes it, and while a session holds the vacuum horizon back none can be
/// marked dead, so a batch that scans from the oldest entry visits the heap for every row
/// deleted since that session began (16 ms per batch of 1000 after 20 s at 8k jobs/s, and
/// growing). Starting where the last batch ended skips them by the index bound. A row it
/// skips (finished earlier than `from`, committed later) is deleted by a pass without
/// `from`, which the cleaner runs regularly (`worker/src/cleaner.rs`).
pub async fn delete_expired_jobs_from(
    conn: &mut PgConnection,
    state: JobState,
    kind: &str,
    keep: Duration,
    limit: usize,
    from: Option<DateTime<Utc>>,
) -> Result<DeletedBatch> {
    let Some(st) = finished_literal(state) else {
        return Ok(DeletedBatch {
            rows: 0,
            newest_finished_at: None,
        });
    };
    let sql = format!(
        "WITH gone AS (
             DELETE FROM jobs j
              USING (SELECT id FROM jobs
                      WHERE state = '{st}' AND kind = $1
                        AND finished_at < now() - $2::int8 * interval '1 millisecond'
                        AND finished_at >= coalesce($4, '-infinity')
                      ORDER BY finished_at
                      LIMIT $3
                        FOR UPDATE SKIP LOCKED) expired
              WHERE j.id = expired.id
             RETURNING j.finished_at
         )
         SELECT count(*), max(finished_at) FROM gone"
    );
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{RETENTION_LOCK_TIMEOUT_MS}ms'"
    ))
    .execute(&mut *tx)
    .await?;
    let (rows, newest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(&sql)
        .bind(kind)
        .bind(keep.as_millis() as i64)
        .bind(limit as i64)
        .bind(from)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(DeletedBatch {
        rows: rows as u64,
        newest_finished_at: newest,
    })
}

/// How many jobs of `kind` in the finished `state` finished more than `older_than` ago,
/// counting at most `cap` of them (so the answer costs at most `cap` index entries however
/// far behind the cleaner is). `sluicectl doctor` uses it to tell a cleaner that is not
/// running from one that is.
pub async fn count_expired_jobs(
    exec: impl PgExecutor<'_>,
    state: JobState,
    kind: &str,
    older_than: Duration,
    cap: i64,
) -> Result<i64> {
    let Some(st) = finished_literal(state) else {
        return Ok(0);
    };
    let sql = format!(
        "SELECT count(*) FROM (
             SELECT 1 FROM jobs
              WHERE state = '{st}' AND kind = $1
                AND finished_at < now() - $2::int8 * interval '1 millisecond'
              LIMIT $3) expired"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(kind)
        .bind(older_than.as_millis() as i64)
        .bind(cap)
        .fetch_one(exec)
        .await?)
}
