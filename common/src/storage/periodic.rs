//! Periodic jobs: every worker that has a `[periodic.NAME]` table enqueues its ticks, and
//! each tick still becomes exactly one job, because the job carries the deterministic
//! idempotency key [`periodic_idempotency_key`] and is inserted with
//! `ON CONFLICT (kind, idempotency_key) DO NOTHING` (the same unique constraint the API's
//! `Idempotency-Key` uses). No leader, no lock held across ticks: a worker being replaced
//! in a rolling restart loses nothing, because its successor (or any other worker)
//! enqueues the same tick under the same key.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;

use crate::error::Result;
use crate::model::{validate_kind, DEFAULT_MAX_ATTEMPTS};

use super::REQUEUE_STATE;

/// A periodic job's definition, as a worker's handlers file gives it and as the workers
/// recorded it in `periodic_jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PeriodicJob {
    /// The table's name in the file (`[periodic."nightly-report"]`): part of every tick's key.
    pub name: String,
    /// `cron 0 3 * * *` or `every 10s`, as written.
    pub schedule: String,
    /// IANA zone the cron expression is read in (`UTC` unless set).
    pub timezone: String,
    /// Kind of the jobs it enqueues.
    pub kind: String,
    pub payload: Value,
    /// Priority of its jobs; the jobs table's default (0) when unset.
    pub priority: Option<i16>,
    /// Attempts of its jobs; the default (25) when unset.
    pub max_attempts: Option<i32>,
    /// The next tick (as of the last time a worker looked).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The newest tick a job was enqueued for, and when it was.
    pub last_tick_at: Option<DateTime<Utc>>,
    pub last_enqueued_at: Option<DateTime<Utc>>,
    /// The worker that last wrote the definition, and when (a definition no running worker
    /// has any more keeps its old `updated_at`).
    pub updated_by: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// When a worker first recorded it: ticks before this are never enqueued (a new
    /// definition does not run at once for a tick it never had).
    pub created_at: DateTime<Utc>,
}

/// The idempotency key of `name`'s job for `tick`: `periodic:<name>@<tick, RFC 3339 UTC>`.
/// Deterministic, so every worker computes the same key for the same tick.
pub fn periodic_idempotency_key(name: &str, tick: DateTime<Utc>) -> String {
    format!(
        "periodic:{name}@{}",
        tick.to_rfc3339_opts(SecondsFormat::Millis, true)
    )
}

/// Records (upserts) a worker's periodic definitions and returns them as stored, with
/// each one's `created_at` (kept from the first worker that recorded it).
pub async fn record_periodic_jobs(
    exec: impl PgExecutor<'_>,
    worker: &str,
    defs: &[PeriodicJob],
) -> Result<Vec<PeriodicJob>> {
    for d in defs {
        validate_kind(&d.kind)?;
    }
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    let schedules: Vec<&str> = defs.iter().map(|d| d.schedule.as_str()).collect();
    let zones: Vec<&str> = defs.iter().map(|d| d.timezone.as_str()).collect();
    let kinds: Vec<&str> = defs.iter().map(|d| d.kind.as_str()).collect();
    let payloads: Vec<&Value> = defs.iter().map(|d| &d.payload).collect();
    let priorities: Vec<Option<i16>> = defs.iter().map(|d| d.priority).collect();
    let attempts: Vec<Option<i32>> = defs.iter().map(|d| d.max_attempts).collect();
    let next: Vec<Option<DateTime<Utc>>> = defs.iter().map(|d| d.next_run_at).collect();
    Ok(sqlx::query_as(
        "INSERT INTO periodic_jobs AS p (name, schedule, timezone, kind, payload, priority, max_attempts,
                                         next_run_at, updated_by)
         SELECT *, $9 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::int2[], $7::int4[], $8::timestamptz[])
          ORDER BY 1
         ON CONFLICT (name) DO UPDATE
            SET schedule = excluded.schedule, timezone = excluded.timezone, kind = excluded.kind,
                payload = excluded.payload, priority = excluded.priority,
                max_attempts = excluded.max_attempts, next_run_at = excluded.next_run_at,
                updated_by = excluded.updated_by, updated_at = now()
         RETURNING p.*",
    )
    .bind(&names)
    .bind(&schedules)
    .bind(&zones)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&priorities)
    .bind(&attempts)
    .bind(&next)
    .bind(worker)
    .fetch_all(exec)
    .await?)
}

/// Enqueues `def`'s job for `tick` unless some worker already has, and records the tick
/// and `next_run_at` on the definition, in one statement. Returns whether this call
/// created the job (`false`: the tick's key existed, another worker got there first).
///
/// The job goes in `paused` while its kind is paused (the same kind gate as every other
/// insert), runnable now, with the definition's payload, priority and attempts.
pub async fn enqueue_periodic_tick(
    exec: impl PgExecutor<'_>,
    def: &PeriodicJob,
    tick: DateTime<Utc>,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<bool> {
    let sql = format!(
        "WITH ins AS (
             INSERT INTO jobs (kind, payload, state, priority, max_attempts, idempotency_key)
             SELECT j.kind, $2, {REQUEUE_STATE}, coalesce($3, 0), coalesce($4, {DEFAULT_MAX_ATTEMPTS}), $5
               FROM (VALUES ($1::text)) AS j(kind)
             ON CONFLICT (kind, idempotency_key) DO NOTHING
             RETURNING id
         ), rec AS (
             UPDATE periodic_jobs
                SET next_run_at = $7,
                    last_tick_at = greatest(last_tick_at, $6),
                    last_enqueued_at = CASE WHEN EXISTS (SELECT 1 FROM ins) THEN now() ELSE last_enqueued_at END
              WHERE name = $8
         )
         SELECT count(*) > 0 FROM ins"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(&def.kind)
        .bind(&def.payload)
        .bind(def.priority)
        .bind(def.max_attempts)
        .bind(periodic_idempotency_key(&def.name, tick))
        .bind(tick)
        .bind(next_run_at)
        .bind(&def.name)
        .fetch_one(exec)
        .await?)
}

/// Every recorded periodic definition, by name.
pub async fn list_periodic_jobs(exec: impl PgExecutor<'_>) -> Result<Vec<PeriodicJob>> {
    Ok(sqlx::query_as("SELECT * FROM periodic_jobs ORDER BY name")
        .fetch_all(exec)
        .await?)
}

/// A periodic definition as operators see it (`GET /v1/periodic`, `sluicectl periodic`):
/// the definition and whether a worker is still keeping it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PeriodicStatus {
    /// The definition, its next run and last tick.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub def: PeriodicJob,
    /// Its next run is more than a minute past on the database clock: no running worker
    /// has this table in its handlers file (or none can reach the database), so nothing
    /// will be enqueued until one starts.
    pub overdue: bool,
}

/// Every recorded periodic definition with its status, by name.
pub async fn list_periodic_status(exec: impl PgExecutor<'_>) -> Result<Vec<PeriodicStatus>> {
    Ok(sqlx::query_as(
        "SELECT *, coalesce(next_run_at < now() - interval '1 minute', false) AS overdue
           FROM periodic_jobs ORDER BY name",
    )
    .fetch_all(exec)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticks_key_names_the_periodic_job_and_the_tick_in_utc() {
        let tick = DateTime::parse_from_rfc3339("2026-12-03T04:00:00+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            periodic_idempotency_key("nightly", tick),
            "periodic:nightly@2026-12-03T03:00:00.000Z"
        );
    }
}
