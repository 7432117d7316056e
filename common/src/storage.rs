//! All of Sluice's SQL, one function per statement (or per short transaction), named for
//! what it does.
//!
//! Rules every function here keeps:
//! - A worker's answer about a job (complete, fail, interrupt, heartbeat) is one statement
//!   whose `WHERE` proves the lease is still the caller's: `state = 'processing' AND
//!   lease_token = <token handed out by the lease>`. A job that an operator re-queued, the
//!   rescuer reclaimed, or another worker re-leased is never touched by a late answer.
//! - Hot-path statements take many jobs at once (arrays bound as parameters and `unnest`ed),
//!   so one round trip and one commit serve a whole batch.
//! - `state = 'queued'` and `state = 'processing'` are written as literals where they
//!   select rows, so the planner can use the partial indexes of the migration.
//! - Manual actions (pause, resume, release, cancel, retry) write their `audit_log` row in
//!   the same transaction as the change: there is no change without its record.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{Acquire, PgConnection, PgExecutor, Postgres};

use crate::error::{Error, Result};
use crate::model::{
    validate_kind, Actor, AuditEntry, Enqueued, FailOutcome, Failure, InvalidJob, Job, JobState,
    KindInfo, KindLease, Lease, LeasedJob, NewJob, Rescued, StateCount, JOB_COLUMNS,
};

/// Channel the workers LISTEN on for runnable jobs (sent by the migration's triggers).
pub const JOBS_CHANNEL: &str = "sluice_jobs";
/// Channel carrying comma-separated ids of jobs that reached a terminal state, for
/// long-polling readers (`GET /v1/jobs/{id}?wait=`).
pub const DONE_CHANNEL: &str = "sluice_done";
/// Most jobs accepted by one batch enqueue (SPEC.md §4).
pub const MAX_BATCH: usize = 1000;
/// Ids per `sluice_done` notification: NOTIFY payloads must stay under 8000 bytes, and
/// an id is at most 20 bytes with its comma.
const DONE_IDS_PER_STATEMENT: usize = 350;

/// SQL for "the state a job goes back to when it may run again": `paused` while its kind
/// is paused through the API/CLI, else `queued`.
const REQUEUE_STATE: &str =
    "CASE WHEN EXISTS (SELECT 1 FROM job_kinds p WHERE p.kind = j.kind AND p.paused) THEN 'paused' ELSE 'queued' END";

// ---------------------------------------------------------------------------------------
// Enqueue
// ---------------------------------------------------------------------------------------

/// Inserts one job; an existing `(kind, idempotency_key)` returns that job instead.
///
/// Takes a connection so it can run inside the caller's own transaction: the job then
/// exists exactly when the caller's own writes do.
pub async fn insert_job(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued> {
    job.validate()?;
    let sql = format!(
        "INSERT INTO jobs (kind, payload, state, priority, run_at, max_attempts, idempotency_key, traceparent)
         SELECT $1, $2,
                CASE WHEN EXISTS (SELECT 1 FROM job_kinds k WHERE k.kind = $1 AND k.paused) THEN 'paused' ELSE 'queued' END,
                $3, coalesce($4, now()), $5, $6, $7
         ON CONFLICT (kind, idempotency_key) DO NOTHING
         RETURNING {JOB_COLUMNS}"
    );
    let inserted: Option<Job> = sqlx::query_as(&sql)
        .bind(&job.kind)
        .bind(&job.payload)
        .bind(job.priority)
        .bind(job.run_at)
        .bind(job.max_attempts)
        .bind(&job.idempotency_key)
        .bind(&job.traceparent)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(job) = inserted {
        return Ok(Enqueued { job, created: true });
    }
    // ON CONFLICT DO NOTHING waited for the other inserter to commit; a new statement
    // (new snapshot) now sees its row.
    let key = job.idempotency_key.as_deref().unwrap_or_default();
    let existing = find_job_by_idempotency_key(&mut *conn, &job.kind, key).await?;
    existing
        .map(|job| Enqueued {
            job,
            created: false,
        })
        .ok_or_else(|| Error::Database(sqlx::Error::RowNotFound))
}

/// Inserts up to [`MAX_BATCH`] jobs in one statement; all are validated first and nothing
/// is written if any is invalid. Results come back in input order; jobs whose
/// `(kind, idempotency_key)` already existed (or repeat an earlier one of the same batch)
/// come back as the existing job with `created: false`.
///
/// Atomic only when `conn` is in a transaction (or the batch needs no idempotency
/// fallback); the API wraps it in one.
pub async fn insert_jobs(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() || jobs.len() > MAX_BATCH {
        return Err(InvalidJob::BatchSize {
            got: jobs.len(),
            max: MAX_BATCH,
        }
        .into());
    }
    for (index, job) in jobs.iter().enumerate() {
        job.validate().map_err(|e| InvalidJob::InBatch {
            index,
            source: Box::new(e),
        })?;
    }
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let payloads: Vec<&Value> = jobs.iter().map(|j| &j.payload).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority).collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.idempotency_key.as_deref()).collect();
    let traceparents: Vec<Option<&str>> = jobs.iter().map(|j| j.traceparent.as_deref()).collect();

    // Rows are produced in `ord` order and RETURNING reports them in insertion order, so
    // keyless jobs can be matched to their input by position.
    let sql = format!(
        "INSERT INTO jobs (kind, payload, state, priority, run_at, max_attempts, idempotency_key, traceparent)
         SELECT t.kind, t.payload,
                CASE WHEN k.paused THEN 'paused' ELSE 'queued' END,
                t.priority, coalesce(t.run_at, now()), t.max_attempts, t.key, t.tp
           FROM unnest($1::text[], $2::jsonb[], $3::int2[], $4::timestamptz[], $5::int4[], $6::text[], $7::text[])
                WITH ORDINALITY AS t(kind, payload, priority, run_at, max_attempts, key, tp, ord)
           LEFT JOIN job_kinds k ON k.kind = t.kind
          ORDER BY t.ord
         ON CONFLICT (kind, idempotency_key) DO NOTHING
         RETURNING {JOB_COLUMNS}"
    );
    let inserted: Vec<Job> = sqlx::query_as(&sql)
        .bind(&kinds)
        .bind(&payloads)
        .bind(&priorities)
        .bind(&run_ats)
        .bind(&max_attempts)
        .bind(&keys)
        .bind(&traceparents)
        .fetch_all(&mut *conn)
        .await?;

    let mut keyed_new = std::collections::HashMap::new();
    let mut keyless = Vec::new();
    for job in inserted {
        match job.idempotency_key.clone() {
            Some(key) => {
                keyed_new.insert((job.kind.clone(), key), job);
            }
            None => keyless.push(job),
        }
    }
    let mut keyless = keyless.into_iter();
    // Keys that were not inserted by this statement: fetch the rows that won.
    let missing: Vec<(&str, &str)> = jobs
        .iter()
        .filter_map(|j| j.idempotency_key.as_deref().map(|k| (j.kind.as_str(), k)))
        .filter(|(kind, key)| !keyed_new.contains_key(&(kind.to_string(), key.to_string())))
        .collect();
    let mut existing = std::collections::HashMap::new();
    if !missing.is_empty() {
        let (mk, mkey): (Vec<&str>, Vec<&str>) = missing.into_iter().unzip();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
              WHERE (kind, idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        );
        let rows: Vec<Job> = sqlx::query_as(&sql)
            .bind(&mk)
            .bind(&mkey)
            .fetch_all(&mut *conn)
            .await?;
        for job in rows {
            let key = job.idempotency_key.clone().unwrap_or_default();
            existing.insert((job.kind.clone(), key), job);
        }
    }

    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let entry = match &job.idempotency_key {
            None => keyless.next().map(|job| Enqueued { job, created: true }),
            Some(key) => {
                let id = (job.kind.clone(), key.clone());
                if let Some(new) = keyed_new.remove(&id) {
                    // The first occurrence in the batch created it; later repeats see it.
                    existing.insert(id, new.clone());
                    Some(Enqueued {
                        job: new,
                        created: true,
                    })
                } else {
                    existing.get(&id).cloned().map(|job| Enqueued {
                        job,
                        created: false,
                    })
                }
            }
        };
        out.push(entry.ok_or(Error::Database(sqlx::Error::RowNotFound))?);
    }
    Ok(out)
}

/// The job enqueued with this `(kind, idempotency_key)`, if any.
pub async fn find_job_by_idempotency_key(
    exec: impl PgExecutor<'_>,
    kind: &str,
    key: &str,
) -> Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE kind = $1 AND idempotency_key = $2");
    Ok(sqlx::query_as(&sql)
        .bind(kind)
        .bind(key)
        .fetch_optional(exec)
        .await?)
}

// ---------------------------------------------------------------------------------------
// The worker's hot path
// ---------------------------------------------------------------------------------------

/// Leases up to `limit` runnable jobs of the given kinds in one statement: locks them with
/// `FOR UPDATE SKIP LOCKED` (concurrent leasers never wait on, or get, each other's rows),
/// moves them to `processing`, counts the attempt, and stamps the lease: `leased_by`,
/// `leased_at`, `lease_expires_at` from the kind's timeout, and a fresh fencing token.
///
/// Jobs of kinds paused through the API/CLI are skipped even if still `queued` (an enqueue
/// that raced the pause). Higher priority first, then oldest `run_at`.
///
/// The statement commits with `synchronous_commit = off` (transaction-local, set inside
/// the statement itself so it stays one round trip). Waiting for an fsync per lease would
/// cap a worker at a few hundred leases a second, and durability buys nothing here: if
/// Postgres crashes before the lease reaches disk, the job is simply `queued` again and
/// the old worker's answer is fenced off by its token; and any later synchronous commit
/// (a completion) flushes the WAL up to itself, lease included, so a durable completion
/// never rests on a lost lease. Call it on a pool connection, not inside a transaction
/// whose other writes need a synchronous commit.
pub async fn lease_jobs(
    exec: impl PgExecutor<'_>,
    worker: &str,
    kinds: &[KindLease],
    limit: usize,
) -> Result<Vec<LeasedJob>> {
    if kinds.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
    let timeouts_ms: Vec<i64> = kinds
        .iter()
        .map(|k| k.lease_timeout.as_millis() as i64)
        .collect();
    let rows = sqlx::query_as(
        "WITH claimed AS MATERIALIZED (
             SELECT j.id, j.kind
               FROM jobs j
              WHERE j.state = 'queued'
                AND j.run_at <= now()
                AND j.kind = ANY($2::text[])
                AND NOT EXISTS (SELECT 1 FROM job_kinds p WHERE p.kind = j.kind AND p.paused)
                AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
              ORDER BY j.priority DESC, j.run_at, j.id
              LIMIT $4
                FOR UPDATE OF j SKIP LOCKED
         )
         UPDATE jobs j
            SET state = 'processing',
                attempts = j.attempts + 1,
                leased_by = $1,
                leased_at = now(),
                lease_expires_at = now() + t.timeout_ms * interval '1 millisecond',
                lease_token = nextval('jobs_lease_token_seq'),
                updated_at = now()
           FROM claimed c
           JOIN unnest($2::text[], $3::int8[]) AS t(kind, timeout_ms) ON t.kind = c.kind
          WHERE j.id = c.id
         RETURNING j.id, j.kind, j.payload, j.priority, j.attempts, j.max_attempts, j.lease_token,
                   j.lease_expires_at, j.run_at, j.created_at, j.traceparent",
    )
    .bind(worker)
    .bind(&names)
    .bind(&timeouts_ms)
    .bind(limit as i64)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

fn split_leases(leases: &[Lease]) -> (Vec<i64>, Vec<i64>) {
    leases.iter().map(|l| (l.job_id, l.token)).unzip()
}

/// Marks leased jobs `completed`, fenced on each lease. Returns the ids it applied to;
/// the rest had lost their lease (released, rescued, cancelled, re-leased) and were left
/// alone. Sends their ids on [`DONE_CHANNEL`] in the same statement.
pub async fn complete_jobs(conn: &mut PgConnection, leases: &[Lease]) -> Result<Vec<i64>> {
    let mut applied = Vec::with_capacity(leases.len());
    for chunk in leases.chunks(DONE_IDS_PER_STATEMENT) {
        let (ids, tokens) = split_leases(chunk);
        let rows: Vec<i64> = sqlx::query_scalar(
            "WITH done AS (
                 UPDATE jobs j
                    SET state = 'completed', finished_at = now(), updated_at = now(),
                        lease_expires_at = NULL, lease_token = NULL, last_error = NULL
                   FROM unnest($1::int8[], $2::int8[]) AS l(id, token)
                  WHERE j.id = l.id AND j.lease_token = l.token AND j.state = 'processing'
                 RETURNING j.id
             ), told AS (
                 SELECT pg_notify('sluice_done', string_agg(id::text, ',')) FROM done HAVING count(*) > 0
             )
             SELECT id FROM done WHERE (SELECT count(*) FROM told) >= 0",
        )
        .bind(&ids)
        .bind(&tokens)
        .fetch_all(&mut *conn)
        .await?;
        applied.extend(rows);
    }
    Ok(applied)
}

/// Records failed attempts, fenced on each lease. A job with attempts left (and not
/// `permanent`) goes back to `queued` (or `paused`, if its kind is) to run again after its
/// `retry_in`; otherwise it ends `failed`. `last_error` keeps the message either way.
pub async fn fail_jobs(conn: &mut PgConnection, failures: &[Failure]) -> Result<Vec<FailOutcome>> {
    let mut out = Vec::with_capacity(failures.len());
    for chunk in failures.chunks(DONE_IDS_PER_STATEMENT) {
        let ids: Vec<i64> = chunk.iter().map(|f| f.lease.job_id).collect();
        let tokens: Vec<i64> = chunk.iter().map(|f| f.lease.token).collect();
        let errors: Vec<&str> = chunk.iter().map(|f| f.error.as_str()).collect();
        let delays: Vec<i64> = chunk
            .iter()
            .map(|f| f.retry_in.as_millis() as i64)
            .collect();
        let permanent: Vec<bool> = chunk.iter().map(|f| f.permanent).collect();
        let sql = format!(
            "WITH f AS (
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::bool[])
                          AS f(id, token, error, delay_ms, permanent)
             ), changed AS (
                 UPDATE jobs j
                    SET state = CASE WHEN f.permanent OR j.attempts >= j.max_attempts THEN 'failed'
                                     ELSE {REQUEUE_STATE} END,
                        run_at = CASE WHEN f.permanent OR j.attempts >= j.max_attempts THEN j.run_at
                                      ELSE now() + f.delay_ms * interval '1 millisecond' END,
                        finished_at = CASE WHEN f.permanent OR j.attempts >= j.max_attempts THEN now() END,
                        leased_by = CASE WHEN f.permanent OR j.attempts >= j.max_attempts THEN j.leased_by END,
                        leased_at = CASE WHEN f.permanent OR j.attempts >= j.max_attempts THEN j.leased_at END,
                        last_error = f.error,
                        lease_expires_at = NULL, lease_token = NULL, updated_at = now()
                   FROM f
                  WHERE j.id = f.id AND j.lease_token = f.token AND j.state = 'processing'
                 RETURNING j.id, j.state
             ), told AS (
                 SELECT pg_notify('sluice_done', string_agg(id::text, ','))
                   FROM changed WHERE state = 'failed' HAVING count(*) > 0
             )
             SELECT id, state FROM changed WHERE (SELECT count(*) FROM told) >= 0"
        );
        let rows: Vec<(i64, String)> = sqlx::query_as(&sql)
            .bind(&ids)
            .bind(&tokens)
            .bind(&errors)
            .bind(&delays)
            .bind(&permanent)
            .fetch_all(&mut *conn)
            .await?;
        for (job_id, state) in rows {
            let state = state
                .parse()
                .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))?;
            out.push(FailOutcome { job_id, state });
        }
    }
    Ok(out)
}

/// Puts leased jobs back without using up their attempt: the worker is shutting down and
/// did not finish them, which says nothing about the job. They are runnable at once.
pub async fn interrupt_jobs(
    exec: impl PgExecutor<'_>,
    leases: &[Lease],
    reason: &str,
) -> Result<Vec<i64>> {
    let (ids, tokens) = split_leases(leases);
    let sql = format!(
        "UPDATE jobs j
            SET state = {REQUEUE_STATE},
                attempts = greatest(j.attempts - 1, 0),
                last_error = $3,
                leased_by = NULL, leased_at = NULL, lease_expires_at = NULL, lease_token = NULL,
                updated_at = now()
           FROM unnest($1::int8[], $2::int8[]) AS l(id, token)
          WHERE j.id = l.id AND j.lease_token = l.token AND j.state = 'processing'
         RETURNING j.id"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(&ids)
        .bind(&tokens)
        .bind(reason)
        .fetch_all(exec)
        .await?)
}

/// Extends leases that are still held (a heartbeat for long jobs). Returns the ids
/// extended; a missing id means the lease was lost and the job should stop.
pub async fn extend_leases(
    exec: impl PgExecutor<'_>,
    leases: &[(Lease, std::time::Duration)],
) -> Result<Vec<i64>> {
    let ids: Vec<i64> = leases.iter().map(|(l, _)| l.job_id).collect();
    let tokens: Vec<i64> = leases.iter().map(|(l, _)| l.token).collect();
    let ms: Vec<i64> = leases.iter().map(|(_, d)| d.as_millis() as i64).collect();
    // Asynchronous commit, like the lease: a heartbeat lost in a crash only lets a lease
    // expire a little early, which the fencing token already makes harmless.
    Ok(sqlx::query_scalar(
        "UPDATE jobs j
            SET lease_expires_at = now() + l.ms * interval '1 millisecond'
           FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS l(id, token, ms)
          WHERE j.id = l.id AND j.lease_token = l.token AND j.state = 'processing'
            AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
         RETURNING j.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&ms)
    .fetch_all(exec)
    .await?)
}

/// Takes back up to `limit` jobs whose lease expired (their worker died or hung): back to
/// `queued` (the crashed attempt counts), or `failed` once out of attempts. Safe for many
/// workers to run at once: each expired row is locked by exactly one of them.
pub async fn rescue_expired_leases(
    exec: impl PgExecutor<'_>,
    limit: usize,
) -> Result<Vec<Rescued>> {
    let sql = format!(
        "WITH expired AS MATERIALIZED (
             SELECT id FROM jobs
              WHERE state = 'processing' AND lease_expires_at < now()
              ORDER BY lease_expires_at
              LIMIT $1
                FOR UPDATE SKIP LOCKED
         ), prev AS (
             SELECT j.id, j.leased_by FROM jobs j JOIN expired e USING (id)
         )
         UPDATE jobs j
            SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE {REQUEUE_STATE} END,
                last_error = 'lease expired at ' || j.lease_expires_at || ' (held by ' || coalesce(j.leased_by, '?') || ')',
                finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
                leased_by = CASE WHEN j.attempts >= j.max_attempts THEN j.leased_by END,
                leased_at = CASE WHEN j.attempts >= j.max_attempts THEN j.leased_at END,
                lease_expires_at = NULL, lease_token = NULL, updated_at = now()
           FROM prev
          WHERE j.id = prev.id AND j.state = 'processing' AND j.lease_expires_at < now()
         RETURNING j.id, j.kind, j.state, prev.leased_by"
    );
    Ok(sqlx::query_as(&sql)
        .bind(limit as i64)
        .fetch_all(exec)
        .await?)
}

/// When the next job of these kinds becomes runnable or the next lease expires, whichever
/// is first: an idle worker sleeps until then instead of polling.
pub async fn find_next_wakeup(
    exec: impl PgExecutor<'_>,
    kinds: &[&str],
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "SELECT least((SELECT min(run_at) FROM jobs WHERE state = 'queued' AND kind = ANY($1::text[])),
                      (SELECT min(lease_expires_at) FROM jobs WHERE state = 'processing'))",
    )
    .bind(kinds)
    .fetch_one(exec)
    .await?)
}

/// Records the kinds a worker can run, so operators can pause a kind before any job of it
/// exists and `GET /v1/kinds` lists it.
pub async fn register_kinds(exec: impl PgExecutor<'_>, kinds: &[&str]) -> Result<()> {
    for kind in kinds {
        validate_kind(kind)?;
    }
    sqlx::query(
        "INSERT INTO job_kinds (kind) SELECT unnest($1::text[]) ON CONFLICT (kind) DO NOTHING",
    )
    .bind(kinds)
    .execute(exec)
    .await?;
    Ok(())
}

/// Deletes up to `limit` jobs that finished (completed, failed, cancelled) before
/// `older_than`, oldest first. Returns how many.
pub async fn delete_finished_jobs(
    exec: impl PgExecutor<'_>,
    older_than: DateTime<Utc>,
    limit: usize,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (
             SELECT id FROM jobs
              WHERE state IN ('completed', 'failed', 'cancelled') AND finished_at < $1
              LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(older_than)
    .bind(limit as i64)
    .execute(exec)
    .await?;
    Ok(done.rows_affected())
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

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

/// Counts by kind and state: the runbook's `SELECT state, count(*) FROM jobs GROUP BY
/// state`, split by kind.
pub async fn count_jobs_by_kind_and_state(exec: impl PgExecutor<'_>) -> Result<Vec<StateCount>> {
    Ok(sqlx::query_as(
        "SELECT kind, state, count(*) AS count FROM jobs GROUP BY kind, state ORDER BY kind, state",
    )
    .fetch_all(exec)
    .await?)
}

/// For each kind with runnable queued jobs, when the oldest of them became runnable.
pub async fn find_oldest_runnable_by_kind(
    exec: impl PgExecutor<'_>,
) -> Result<Vec<(String, DateTime<Utc>)>> {
    Ok(sqlx::query_as(
        "SELECT kind, min(run_at) FROM jobs WHERE state = 'queued' AND run_at <= now() GROUP BY kind ORDER BY kind",
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

// ---------------------------------------------------------------------------------------
// Manual actions (API admin routes, sluicectl): each one transaction with its audit row
// ---------------------------------------------------------------------------------------

async fn insert_audit_row(
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
    if !kind_exists(&mut tx, kind).await? {
        return Err(Error::UnknownKind(kind.to_string()));
    }
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
    if !kind_exists(&mut tx, kind).await? {
        return Err(Error::UnknownKind(kind.to_string()));
    }
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
    let before: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, leased_by FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
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
             UPDATE jobs j
                SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL, lease_token = NULL,
                    updated_at = now()
              WHERE j.id = $1 AND j.state IN ('queued', 'paused', 'processing')
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
        "UPDATE jobs j
            SET state = {REQUEUE_STATE}, attempts = 0, run_at = now(), finished_at = NULL,
                leased_by = NULL, leased_at = NULL, lease_expires_at = NULL, lease_token = NULL,
                updated_at = now()
          WHERE j.id = $1 AND j.state IN ('failed', 'cancelled')
         RETURNING {JOB_COLUMNS}"
    );
    transition_job(db, id, "retry", &sql, actor).await
}

// ---------------------------------------------------------------------------------------
// Operator reads (sluicectl)
// ---------------------------------------------------------------------------------------

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
