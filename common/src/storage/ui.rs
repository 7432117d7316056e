//! What the operator web UI reads and does beyond the API's own statements: the overview's
//! counts and per-minute chart, finding a job by idempotency key across kinds, bulk retry
//! and cancel by filter (one audited transaction each), and sign-in sessions.
//!
//! Every read here is bounded by an index or by what an operator is looking at (unfinished
//! and failed jobs, the last hour), never by the number of completed jobs ever run, except
//! the chart, which scans the finished jobs of the last hour (see
//! [`count_finished_jobs_per_minute`]).

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Acquire, PgExecutor, Postgres};

use crate::error::Result;
use crate::model::{validate_kind, Actor, AuditEntry, Job, JobState, JOB_COLUMNS};

use super::admin::{
    insert_audit_row, retry_assignments, CANCELLABLE_STATES, CANCEL_ASSIGNMENTS, RETRYABLE_STATES,
};
use super::DONE_IDS_PER_STATEMENT;

/// Most jobs one bulk action changes: it runs as one transaction holding these rows'
/// locks, so it is bounded; an operator with more repeats it (the page says so).
pub const MAX_BULK: i64 = 10_000;

/// Unfinished and failed jobs of one kind, the overview's columns.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct KindCounts {
    pub kind: String,
    pub queued: i64,
    pub processing: i64,
    pub paused: i64,
    pub failed: i64,
}

/// Counts of `queued`, `processing`, `paused` and `failed` jobs per kind. Completed and
/// cancelled jobs are not counted: they are most of the table and an operator does not
/// act on them, so this costs what is waiting or broken, not what retention keeps.
pub async fn count_unfinished_jobs_by_kind(exec: impl PgExecutor<'_>) -> Result<Vec<KindCounts>> {
    Ok(sqlx::query_as(
        "SELECT kind,
                count(*) FILTER (WHERE state = 'queued') AS queued,
                count(*) FILTER (WHERE state = 'processing') AS processing,
                count(*) FILTER (WHERE state = 'paused') AS paused,
                count(*) FILTER (WHERE state = 'failed') AS failed
           FROM jobs
          WHERE state IN ('queued', 'processing', 'paused', 'failed')
          GROUP BY kind
          ORDER BY kind",
    )
    .fetch_all(exec)
    .await?)
}

/// Jobs of one kind that finished in one minute of the last hour.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MinuteCount {
    pub kind: String,
    /// 0 is the minute ending now, 59 the one starting an hour ago.
    pub minutes_ago: i32,
    pub completed: i64,
    pub failed: i64,
}

/// Completions and (final) failures per kind and minute over the last hour, by the
/// database clock. There is no index on `finished_at` (each one would cost every
/// completion an index insert on the hot path), so this reads the finished jobs; the UI
/// runs it in the background at most every few seconds while someone looks, whatever the
/// number of open dashboards, and never on a page's request path.
pub async fn count_finished_jobs_per_minute(exec: impl PgExecutor<'_>) -> Result<Vec<MinuteCount>> {
    Ok(sqlx::query_as(
        "SELECT kind,
                least(floor(extract(epoch FROM now() - finished_at) / 60), 59)::int4 AS minutes_ago,
                count(*) FILTER (WHERE state = 'completed') AS completed,
                count(*) FILTER (WHERE state = 'failed') AS failed
           FROM jobs
          WHERE state IN ('completed', 'failed') AND finished_at > now() - interval '60 minutes'
          GROUP BY 1, 2
          ORDER BY 1, 2",
    )
    .fetch_all(exec)
    .await?)
}

/// Jobs with this idempotency key, of any of `kinds` (the unique `(kind, idempotency_key)`
/// index is probed once per kind instead of scanning the table).
pub async fn find_jobs_by_idempotency_key(
    exec: impl PgExecutor<'_>,
    kinds: &[String],
    key: &str,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs
          WHERE kind = ANY($1::text[]) AND idempotency_key = $2
          ORDER BY id DESC LIMIT 100"
    );
    Ok(sqlx::query_as(&sql)
        .bind(kinds)
        .bind(key)
        .fetch_all(exec)
        .await?)
}

/// Audit rows about one target (`job:42`, `kind:email.send`), newest first.
pub async fn list_audit_log_for_target(
    exec: impl PgExecutor<'_>,
    target: &str,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    Ok(sqlx::query_as(
        "SELECT id, at, actor, action, target, reason, details FROM audit_log
          WHERE target = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// The audit rows older than `before_id` (all when `None`), newest first: the audit
/// page's keyset pages.
pub async fn list_audit_log_before(
    exec: impl PgExecutor<'_>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    Ok(sqlx::query_as(
        "SELECT id, at, actor, action, target, reason, details FROM audit_log
          WHERE ($1::int8 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(before_id)
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// A bulk action: what it does and which jobs it may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// `failed` / `cancelled` → `queued`, as [`super::retry_job`] does.
    Retry,
    /// `queued` / `paused` / `processing` → `cancelled`, as [`super::cancel_job`] does.
    Cancel,
}

impl BulkAction {
    /// The states this action applies to.
    pub fn applies_to(self) -> &'static [JobState] {
        match self {
            BulkAction::Retry => &[JobState::Failed, JobState::Cancelled],
            BulkAction::Cancel => &[JobState::Queued, JobState::Paused, JobState::Processing],
        }
    }

    /// `audit_log.action` of the bulk row.
    pub fn audit_action(self) -> &'static str {
        match self {
            BulkAction::Retry => "bulk_retry",
            BulkAction::Cancel => "bulk_cancel",
        }
    }
}

/// The jobs a bulk action would take: the filter's state (or every state the action
/// applies to), the filter's kind, ids up to `up_to_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkFilter {
    pub action: BulkAction,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    /// Only jobs that existed when the operator saw the count (the confirmation page's
    /// newest id): a job failing after that is not swept up unseen.
    pub up_to_id: Option<i64>,
}

impl BulkFilter {
    /// The states the action will touch, or `None` when the filter's state is one the
    /// action cannot apply to (retrying `completed` jobs, cancelling `failed` ones).
    pub fn states(&self) -> Option<Vec<&'static str>> {
        let allowed = self.action.applies_to();
        match self.state {
            None => Some(allowed.iter().map(|s| s.as_str()).collect()),
            Some(s) if allowed.contains(&s) => Some(vec![s.as_str()]),
            Some(_) => None,
        }
    }
}

/// How many jobs a bulk action would take (counted up to [`MAX_BULK`] + 1, so a huge
/// match costs no more than the action itself), and the newest id among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkPreview {
    /// Matching jobs, at most `MAX_BULK + 1` (more than `MAX_BULK` means "more than one
    /// action's worth").
    pub count: i64,
    /// The newest matching id, to fence the action to what was counted.
    pub max_id: Option<i64>,
}

/// Counts what [`run_bulk_action`] would change (the oldest first, as it takes them).
pub async fn preview_bulk_action(
    exec: impl PgExecutor<'_>,
    filter: &BulkFilter,
) -> Result<BulkPreview> {
    if let Some(kind) = &filter.kind {
        validate_kind(kind)?;
    }
    let Some(states) = filter.states() else {
        return Ok(BulkPreview {
            count: 0,
            max_id: None,
        });
    };
    let (count, max_id): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(id) FROM (
             SELECT id FROM jobs
              WHERE state = ANY($1::text[]) AND ($2::text IS NULL OR kind = $2)
                AND ($3::int8 IS NULL OR id <= $3)
              ORDER BY id LIMIT $4) m",
    )
    .bind(&states)
    .bind(&filter.kind)
    .bind(filter.up_to_id)
    .bind(MAX_BULK + 1)
    .fetch_one(exec)
    .await?;
    Ok(BulkPreview { count, max_id })
}

/// What a bulk action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Jobs changed.
    pub changed: u64,
    /// Matching jobs left alone because another transaction held them (a worker
    /// answering for one at that instant); running the action again takes them.
    pub skipped_busy: u64,
}

/// Retries or cancels up to [`MAX_BULK`] jobs matching `filter`, oldest first, with the
/// same assignments as the single-job [`super::retry_job`] / [`super::cancel_job`], in one
/// transaction with one `audit_log` row (action `bulk_retry` / `bulk_cancel`, the filter,
/// the count and the ids). One row per bulk action rather than per job: an operator
/// reading the trail sees one decision, not ten thousand lines drowning everything else,
/// and the ids are still there to answer "was job N part of it". Rows another
/// transaction holds are skipped (never waited on, so a bulk action cannot deadlock a
/// worker's batch); the outcome says how many. Cancelled running jobs are announced on
/// `sluice_done`, as a single cancel does, so their workers stop them.
pub async fn run_bulk_action<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    filter: &BulkFilter,
    actor: &Actor<'_>,
) -> Result<BulkOutcome> {
    if let Some(kind) = &filter.kind {
        validate_kind(kind)?;
    }
    // A state the action cannot apply to matches nothing (the UI offers no such button).
    let Some(states) = filter.states() else {
        return Ok(BulkOutcome {
            changed: 0,
            skipped_busy: 0,
        });
    };
    let mut tx = db.begin().await?;
    let matching: Vec<(i64, bool)> = sqlx::query_as(
        "WITH m AS (
             SELECT id FROM jobs
              WHERE state = ANY($1::text[]) AND ($2::text IS NULL OR kind = $2)
                AND ($3::int8 IS NULL OR id <= $3)
              ORDER BY id LIMIT $4
         ), free AS (
             SELECT j.id FROM jobs j JOIN m USING (id) FOR UPDATE OF j SKIP LOCKED
         )
         SELECT m.id, free.id IS NOT NULL FROM m LEFT JOIN free USING (id) ORDER BY m.id",
    )
    .bind(&states)
    .bind(&filter.kind)
    .bind(filter.up_to_id)
    .bind(MAX_BULK)
    .fetch_all(&mut *tx)
    .await?;
    let locked: Vec<i64> = matching
        .iter()
        .filter(|(_, f)| *f)
        .map(|(id, _)| *id)
        .collect();
    let skipped_busy = (matching.len() - locked.len()) as u64;
    let mut changed_ids: Vec<i64> = Vec::with_capacity(locked.len());
    for chunk in locked.chunks(DONE_IDS_PER_STATEMENT) {
        let sql = match filter.action {
            BulkAction::Retry => format!(
                "UPDATE jobs j SET {assignments}
                  WHERE j.id = ANY($1::int8[]) AND j.state IN {RETRYABLE_STATES}
                 RETURNING j.id",
                assignments = retry_assignments()
            ),
            BulkAction::Cancel => format!(
                "WITH c AS (
                     UPDATE jobs j SET {CANCEL_ASSIGNMENTS}
                      WHERE j.id = ANY($1::int8[]) AND j.state IN {CANCELLABLE_STATES}
                     RETURNING j.id
                 ), told AS (
                     SELECT pg_notify('sluice_done', string_agg(id::text, ',')) FROM c HAVING count(*) > 0
                 )
                 SELECT id FROM c WHERE (SELECT count(*) FROM told) >= 0"
            ),
        };
        let ids: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(chunk)
            .fetch_all(&mut *tx)
            .await?;
        changed_ids.extend(ids);
    }
    changed_ids.sort_unstable();
    let target = format!(
        "filter:state={},kind={}",
        filter.state.map(JobState::as_str).unwrap_or("*"),
        filter.kind.as_deref().unwrap_or("*")
    );
    let details = json!({
        "count": changed_ids.len(),
        "skipped_busy": skipped_busy,
        "states": states,
        "kind": filter.kind,
        "up_to_id": filter.up_to_id,
        "ids": changed_ids,
    });
    if !changed_ids.is_empty() {
        insert_audit_row(
            &mut tx,
            actor,
            filter.action.audit_action(),
            &target,
            details,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(BulkOutcome {
        changed: changed_ids.len() as u64,
        skipped_busy,
    })
}

/// A UI sign-in session as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UiSession {
    /// SHA-256 of the token signed in with.
    pub token_digest: Vec<u8>,
    /// The session's CSRF token.
    pub csrf: String,
    /// Past its expiry by the database clock.
    pub expired: bool,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// Stores a new session valid for `ttl_secs` by the database clock.
pub async fn insert_ui_session(
    exec: impl PgExecutor<'_>,
    id_hash: &[u8],
    token_digest: &[u8],
    csrf: &str,
    ttl_secs: f64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO ui_sessions (id_hash, token_digest, csrf, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 second')",
    )
    .bind(id_hash)
    .bind(token_digest)
    .bind(csrf)
    .bind(ttl_secs)
    .execute(exec)
    .await?;
    Ok(())
}

/// The session with this id hash, expired or not.
pub async fn find_ui_session(
    exec: impl PgExecutor<'_>,
    id_hash: &[u8],
) -> Result<Option<UiSession>> {
    Ok(sqlx::query_as(
        "SELECT token_digest, csrf, expires_at <= now() AS expired, expires_at
           FROM ui_sessions WHERE id_hash = $1",
    )
    .bind(id_hash)
    .fetch_optional(exec)
    .await?)
}

/// Ends one session (sign out, or found expired).
pub async fn delete_ui_session(exec: impl PgExecutor<'_>, id_hash: &[u8]) -> Result<()> {
    sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(exec)
        .await?;
    Ok(())
}

/// Deletes expired sessions (run at each sign-in, so the table stays the size of the
/// sessions alive).
pub async fn delete_expired_ui_sessions(exec: impl PgExecutor<'_>) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= now()")
            .execute(exec)
            .await?
            .rows_affected(),
    )
}
