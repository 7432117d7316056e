//! Manual actions (API admin routes, sluicectl, the UI): each one transaction with its
//! `audit_log` row, so there is no change without its record.

use serde_json::{json, Value};
use sqlx::{Acquire, PgConnection, Postgres};

use crate::error::{Error, Result};
use crate::model::{validate_kind, Actor, Job, JOB_COLUMNS};

use super::{KIND_GATE_CLASS, REQUEUE_STATE};

/// Writes one `audit_log` row; callers run it in the transaction of the change it records.
pub(super) async fn insert_audit_row(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    action: &str,
    target: &str,
    details: Value,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, target, reason, details) VALUES ($1, $2, $3, $4, $5)")
        .bind(actor.name)
        .bind(action)
        .bind(target)
        .bind(actor.reason)
        .bind(details)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the kind's gate exclusively for the rest of the transaction: writers that pick
/// `queued` vs `paused` wait for the pause/resume, and ones already in finish first (see
/// `REQUEUE_STATE` in the module root).
async fn close_kind_gate(conn: &mut PgConnection, kind: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(KIND_GATE_CLASS)
        .bind(kind)
        .execute(conn)
        .await?;
    Ok(())
}

/// The start of every pause or resume: close the kind's gate (so writers choosing
/// `queued` or `paused` wait for this transaction), then refuse a kind nobody knows.
async fn gate_known_kind(conn: &mut PgConnection, kind: &str) -> Result<()> {
    close_kind_gate(&mut *conn, kind).await?;
    if !kind_exists(conn, kind).await? {
        return Err(Error::UnknownKind(kind.to_string()));
    }
    Ok(())
}

async fn kind_exists(conn: &mut PgConnection, kind: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM job_kinds WHERE kind = $1) OR EXISTS (SELECT 1 FROM jobs WHERE kind = $1)",
    )
    .bind(kind)
    .fetch_one(conn)
    .await?)
}

/// Pauses a kind: its queued jobs become `paused`, jobs of it enqueued later start
/// `paused`, and none is leased until [`resume_kind`]. Jobs already running finish.
/// Returns how many queued jobs were paused.
pub async fn pause_kind<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    kind: &str,
    actor: &Actor<'_>,
) -> Result<u64> {
    validate_kind(kind)?;
    let mut tx = db.begin().await?;
    gate_known_kind(&mut tx, kind).await?;
    sqlx::query(
        "INSERT INTO job_kinds (kind, paused, paused_at, paused_by, reason, updated_at)
         VALUES ($1, true, now(), $2, $3, now())
         ON CONFLICT (kind) DO UPDATE
            SET paused = true, paused_at = now(), paused_by = $2, reason = $3, updated_at = now()",
    )
    .bind(kind)
    .bind(actor.name)
    .bind(actor.reason)
    .execute(&mut *tx)
    .await?;
    let paused = sqlx::query(
        "UPDATE jobs SET state = 'paused', updated_at = now() WHERE state = 'queued' AND kind = $1",
    )
    .bind(kind)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    insert_audit_row(
        &mut tx,
        actor,
        "pause",
        &format!("kind:{kind}"),
        json!({ "jobs": paused }),
    )
    .await?;
    tx.commit().await?;
    Ok(paused)
}

/// Resumes a kind paused by [`pause_kind`] (or by the runbook's UPDATE): its paused jobs
/// become `queued` and workers are woken. Returns how many jobs were resumed.
pub async fn resume_kind<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    kind: &str,
    actor: &Actor<'_>,
) -> Result<u64> {
    validate_kind(kind)?;
    let mut tx = db.begin().await?;
    gate_known_kind(&mut tx, kind).await?;
    sqlx::query(
        "UPDATE job_kinds SET paused = false, paused_at = NULL, paused_by = NULL, reason = NULL, updated_at = now()
          WHERE kind = $1",
    )
    .bind(kind)
    .execute(&mut *tx)
    .await?;
    let resumed = sqlx::query(
        "UPDATE jobs SET state = 'queued', updated_at = now() WHERE state = 'paused' AND kind = $1",
    )
    .bind(kind)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Jobs that stayed `queued` through the pause (an enqueue racing it) are leasable again
    // without any row changing state, so the trigger would not wake anyone for them.
    sqlx::query("SELECT pg_notify('sluice_jobs', $1)")
        .bind(kind)
        .execute(&mut *tx)
        .await?;
    insert_audit_row(
        &mut tx,
        actor,
        "resume",
        &format!("kind:{kind}"),
        json!({ "jobs": resumed }),
    )
    .await?;
    tx.commit().await?;
    Ok(resumed)
}

/// States [`cancel_job`] (and the UI's bulk cancel) moves to `cancelled`.
pub(super) const CANCELLABLE_STATES: &str = "('queued', 'paused', 'processing')";
/// What cancelling sets; shared with the bulk cancel so both mean the same.
pub(super) const CANCEL_ASSIGNMENTS: &str = "state = 'cancelled', finished_at = now(), \
     lease_expires_at = NULL, lease_token = NULL, updated_at = now()";
/// States [`retry_job`] (and the UI's bulk retry) runs again.
pub(super) const RETRYABLE_STATES: &str = "('failed', 'cancelled')";

/// What retrying sets (on rows aliased `j`); shared with the bulk retry.
pub(super) fn retry_assignments() -> String {
    format!(
        "state = {REQUEUE_STATE}, attempts = 0, run_at = now(), finished_at = NULL, \
         leased_by = NULL, leased_at = NULL, lease_expires_at = NULL, lease_token = NULL, \
         updated_at = now()"
    )
}

/// Runs one fenced single-job transition with its audit row; on no match, tells
/// "no such job" from "wrong state".
async fn transition_job<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    id: i64,
    action: &'static str,
    update_sql: &str,
    actor: &Actor<'_>,
) -> Result<Job> {
    let mut tx = db.begin().await?;
    // The kind's gate is taken (shared) before the row lock: the update below may pick
    // `queued` vs `paused` and take the gate then, and holding the job's row while
    // waiting for a pause that waits for that row would deadlock.
    let before: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT state, leased_by FROM jobs j
          WHERE j.id = $1 AND pg_advisory_xact_lock_shared($2, hashtext(j.kind)) IS NOT NULL
            FOR UPDATE",
    )
    .bind(id)
    .bind(KIND_GATE_CLASS)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((before_state, before_leased_by)) = before else {
        return Err(Error::NotFound(id));
    };
    let job: Option<Job> = sqlx::query_as(update_sql)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(job) = job else {
        let state = before_state
            .parse()
            .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))?;
        return Err(Error::InvalidTransition { id, state, action });
    };
    let details = json!({ "from": before_state, "to": job.state, "leased_by": before_leased_by });
    insert_audit_row(&mut tx, actor, action, &format!("job:{id}"), details).await?;
    tx.commit().await?;
    Ok(job)
}

/// The runbook's force re-lease: a `processing` job goes back to `queued` now; its old
/// lease is fenced off, so the old worker's late answer changes nothing.
pub async fn release_job<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    id: i64,
    actor: &Actor<'_>,
) -> Result<Job> {
    let sql = format!(
        "UPDATE jobs j
            SET state = {REQUEUE_STATE}, run_at = least(j.run_at, now()),
                leased_by = NULL, leased_at = NULL, lease_expires_at = NULL, lease_token = NULL,
                updated_at = now()
          WHERE j.id = $1 AND j.state = 'processing'
         RETURNING {JOB_COLUMNS}"
    );
    transition_job(db, id, "release", &sql, actor).await
}

/// Cancels a job that has not finished. A running job's worker is fenced off: its answer
/// will not apply, and its next heartbeat learns the lease is gone.
pub async fn cancel_job<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    id: i64,
    actor: &Actor<'_>,
) -> Result<Job> {
    let sql = format!(
        "WITH c AS (
             UPDATE jobs j SET {CANCEL_ASSIGNMENTS}
              WHERE j.id = $1 AND j.state IN {CANCELLABLE_STATES}
             RETURNING {JOB_COLUMNS}
         ), told AS (SELECT pg_notify('sluice_done', id::text) FROM c)
         SELECT * FROM c WHERE (SELECT count(*) FROM told) >= 0"
    );
    transition_job(db, id, "cancel", &sql, actor).await
}

/// Runs a `failed` or `cancelled` job again from scratch: `queued`, attempts reset,
/// runnable now. `last_error` is kept for the record until the next attempt ends.
pub async fn retry_job<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    id: i64,
    actor: &Actor<'_>,
) -> Result<Job> {
    let sql = format!(
        "UPDATE jobs j SET {assignments}
          WHERE j.id = $1 AND j.state IN {RETRYABLE_STATES}
         RETURNING {JOB_COLUMNS}",
        assignments = retry_assignments()
    );
    transition_job(db, id, "retry", &sql, actor).await
}
