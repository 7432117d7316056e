//! Enqueue: one job or a batch of up to [`MAX_BATCH`](super::MAX_BATCH) in one statement,
//! with `(kind, idempotency_key)` deduplication.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use crate::error::{Error, Result};
use crate::model::{Enqueued, InvalidJob, Job, NewJob, JOB_COLUMNS};

use super::{KIND_GATE_CLASS, MAX_BATCH};

/// Inserts one job; an existing `(kind, idempotency_key)` returns that job instead.
///
/// Takes a connection so it can run inside the caller's own transaction: the job then
/// exists exactly when the caller's own writes do.
pub async fn insert_job(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued> {
    job.validate()?;
    let sql = format!(
        "INSERT INTO jobs (kind, payload, state, priority, run_at, max_attempts, idempotency_key, traceparent)
         SELECT $1, $2,
                CASE WHEN coalesce((SELECT k.paused FROM job_kinds k WHERE k.kind = $1
                                       AND pg_advisory_xact_lock_shared({KIND_GATE_CLASS}, hashtext(k.kind)) IS NOT NULL
                                       FOR SHARE), false)
                     THEN 'paused' ELSE 'queued' END,
                $3, coalesce($4, now()), $5, $6, $7
         ON CONFLICT (kind, idempotency_key) DO NOTHING
         RETURNING {JOB_COLUMNS}"
    );
    // `FOR SHARE` serialises this insert against a pause/resume of the kind in flight: see
    // `REQUEUE_STATE` in the module root for why that keeps `paused` and `queued` right.
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
/// Rows are written sorted by `(kind, idempotency_key)`, whatever the input order: two
/// batches whose keys overlap then wait for each other's conflicting rows in the same
/// order, so they queue instead of deadlocking.
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
    // A stable sort keeps the first of repeated keys first, so it is the one created.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| {
        (&jobs[a].kind, &jobs[a].idempotency_key).cmp(&(&jobs[b].kind, &jobs[b].idempotency_key))
    });
    let sorted: Vec<&NewJob> = order.iter().map(|&i| &jobs[i]).collect();
    let written = insert_sorted_jobs(conn, &sorted).await?;
    let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    for (enqueued, &index) in written.into_iter().zip(&order) {
        out[index] = Some(enqueued);
    }
    out.into_iter()
        .map(|e| e.ok_or(Error::Database(sqlx::Error::RowNotFound)))
        .collect()
}

/// [`insert_jobs`] on input already validated and sorted; results in input order.
async fn insert_sorted_jobs(conn: &mut PgConnection, jobs: &[&NewJob]) -> Result<Vec<Enqueued>> {
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let payloads: Vec<&Value> = jobs.iter().map(|j| &j.payload).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority).collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.idempotency_key.as_deref()).collect();
    let traceparents: Vec<Option<&str>> = jobs.iter().map(|j| j.traceparent.as_deref()).collect();

    // Rows are produced in `ord` order and RETURNING reports them in insertion order, so
    // keyless jobs can be matched to their input by position.
    //
    // `gate` then `k` take each kind's advisory lock shared and its row `FOR SHARE`, once
    // per statement (not once per job): that serialises the batch against a pause/resume
    // in flight, as `REQUEUE_STATE` in the module root explains. Advisory locks are taken
    // in kind order, so batches of several kinds cannot deadlock with pauses of several.
    // MATERIALIZED keeps the row lock inside the CTE, since `FOR SHARE` may not sit on the
    // nullable side of the LEFT JOIN.
    let sql = format!(
        "WITH gate AS MATERIALIZED (
             SELECT pg_advisory_xact_lock_shared({KIND_GATE_CLASS}, hashtext(kind))
               FROM (SELECT DISTINCT kind FROM unnest($1::text[]) AS u(kind) ORDER BY kind) s
         ), k AS MATERIALIZED (
             SELECT kind, paused FROM job_kinds
              WHERE kind = ANY($1::text[]) AND (SELECT count(*) FROM gate) >= 0
              ORDER BY kind
                FOR SHARE
         )
         INSERT INTO jobs (kind, payload, state, priority, run_at, max_attempts, idempotency_key, traceparent)
         SELECT t.kind, t.payload,
                CASE WHEN coalesce(k.paused, false) THEN 'paused' ELSE 'queued' END,
                t.priority, coalesce(t.run_at, now()), t.max_attempts, t.key, t.tp
           FROM unnest($1::text[], $2::jsonb[], $3::int2[], $4::timestamptz[], $5::int4[], $6::text[], $7::text[])
                WITH ORDINALITY AS t(kind, payload, priority, run_at, max_attempts, key, tp, ord)
           LEFT JOIN k ON k.kind = t.kind
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
