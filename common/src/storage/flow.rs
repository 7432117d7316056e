//! Flow control: snoozing a leased job (run again later without using an attempt), and
//! the claim statement of kinds with a global concurrency or rate limit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::error::Result;
use crate::model::{KindLease, Lease, LeasedJob};

use super::{DONE_IDS_PER_STATEMENT, REQUEUE_STATE};

/// Puts leased jobs back to `queued` (or `paused`, if their kind is) to run again after
/// their delay, without using up the attempt: the handler asked to be run later (a result
/// variant of a built-in handler, `Sluice-Snooze` on an HTTP target's 2xx), which says
/// nothing about the job failing. `run_at` moves to now + delay on the database clock.
/// Fenced on each lease like every answer; returns the ids it applied to.
pub async fn snooze_jobs(
    conn: &mut PgConnection,
    snoozes: &[(Lease, Duration)],
) -> Result<Vec<i64>> {
    let mut applied = Vec::with_capacity(snoozes.len());
    for chunk in snoozes.chunks(DONE_IDS_PER_STATEMENT) {
        let ids: Vec<i64> = chunk.iter().map(|(l, _)| l.job_id).collect();
        let tokens: Vec<i64> = chunk.iter().map(|(l, _)| l.token).collect();
        let delays: Vec<i64> = chunk.iter().map(|(_, d)| d.as_millis() as i64).collect();
        // Fenced like `complete_jobs` (`IS TRUE`: the batch is found by primary key).
        let sql = format!(
            "UPDATE jobs j
                SET state = {REQUEUE_STATE},
                    attempts = greatest(j.attempts - 1, 0),
                    run_at = now() + l.delay_ms * interval '1 millisecond',
                    leased_by = NULL, leased_at = NULL, lease_expires_at = NULL, lease_token = NULL,
                    updated_at = now()
               FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS l(id, token, delay_ms)
              WHERE j.id = l.id AND j.lease_token = l.token AND (j.state = 'processing') IS TRUE
             RETURNING j.id"
        );
        let rows: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(&ids)
            .bind(&tokens)
            .bind(&delays)
            .fetch_all(&mut *conn)
            .await?;
        applied.extend(rows);
    }
    Ok(applied)
}

/// A kind's limits as one worker's handlers file gives them, for [`register_kind_limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindLimits {
    pub kind: String,
    /// `global_concurrency`: most jobs of the kind `processing` across all workers.
    pub global_concurrency: Option<u32>,
    /// `rate_limit`: most starts in any window of `.1`, across all workers.
    pub rate_limit: Option<(u32, Duration)>,
}

/// Writes a worker's limits for its kinds into `job_kinds` (the worker that starts last
/// decides; a kind it does not limit loses any limit an earlier worker set) and makes sure
/// each limited kind has its slot rows (`kind_concurrency_slots`, `kind_rate_slots`: one
/// per unit of the limit). Slots beyond a lowered limit stay but are never used. One
/// transaction, so a kind is never limited without its slots.
pub async fn register_kind_limits(conn: &mut PgConnection, limits: &[KindLimits]) -> Result<()> {
    let kinds: Vec<&str> = limits.iter().map(|l| l.kind.as_str()).collect();
    let gc: Vec<Option<i32>> = limits
        .iter()
        .map(|l| l.global_concurrency.map(|n| n as i32))
        .collect();
    let rate: Vec<Option<i32>> = limits
        .iter()
        .map(|l| l.rate_limit.map(|(n, _)| n as i32))
        .collect();
    let window: Vec<Option<i64>> = limits
        .iter()
        .map(|l| l.rate_limit.map(|(_, w)| w.as_millis() as i64))
        .collect();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO job_kinds AS p (kind, global_concurrency, rate_limit, rate_window_ms)
         SELECT * FROM unnest($1::text[], $2::int4[], $3::int4[], $4::int8[]) ORDER BY 1
         ON CONFLICT (kind) DO UPDATE
            SET global_concurrency = excluded.global_concurrency,
                rate_limit = excluded.rate_limit, rate_window_ms = excluded.rate_window_ms
          WHERE (p.global_concurrency, p.rate_limit, p.rate_window_ms)
                IS DISTINCT FROM (excluded.global_concurrency, excluded.rate_limit, excluded.rate_window_ms)",
    )
    .bind(&kinds)
    .bind(&gc)
    .bind(&rate)
    .bind(&window)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO kind_concurrency_slots (kind, slot)
         SELECT l.kind, g FROM unnest($1::text[], $2::int4[]) AS l(kind, n), generate_series(0, l.n - 1) g
          WHERE l.n IS NOT NULL ORDER BY 1, 2
         ON CONFLICT DO NOTHING",
    )
    .bind(&kinds)
    .bind(&gc)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO kind_rate_slots (kind, slot)
         SELECT l.kind, g FROM unnest($1::text[], $2::int4[]) AS l(kind, n), generate_series(0, l.n - 1) g
          WHERE l.n IS NOT NULL ORDER BY 1, 2
         ON CONFLICT DO NOTHING",
    )
    .bind(&kinds)
    .bind(&rate)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What one lease of a limited kind got, and what its limit held back.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitedLease {
    pub jobs: Vec<LeasedJob>,
    /// Runnable jobs (of the ones asked for) that the limit kept from starting now.
    pub held_back: u32,
    /// The limit that bound: `global_concurrency` or `rate_limit` (None if none did).
    pub held_by: Option<&'static str>,
    /// When held back by the rate limit: how long until its next slot frees, on the
    /// database clock (the producer sets a timer instead of polling).
    pub next_slot_in: Option<Duration>,
}

/// One row of the limited lease: a leased job (all `None` when nothing was leased) beside
/// the round's summary, which every row repeats.
#[derive(sqlx::FromRow)]
struct LimitedRow {
    room: i64,
    runnable: i64,
    gc_room: Option<i64>,
    rate_room: Option<i64>,
    next_slot_ms: Option<f64>,
    id: Option<i64>,
    kind: Option<String>,
    payload: Option<serde_json::Value>,
    priority: Option<i16>,
    attempts: Option<i32>,
    max_attempts: Option<i32>,
    lease_token: Option<i64>,
    lease_expires_at: Option<DateTime<Utc>>,
    run_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
    traceparent: Option<String>,
}

/// Leases up to `want` jobs of one kind that has a global concurrency and/or rate limit
/// (as recorded in `job_kinds`), in one statement that enforces the limits exactly across
/// all workers, with no leader and no extra round trip:
///
/// - **Concurrency**: it locks free rows of `kind_concurrency_slots` (`slot < limit`)
///   `FOR UPDATE SKIP LOCKED` and writes each new job's id and lease token into one. A slot
///   is free when the job it names is not `processing` under that token (any way a job
///   leaves `processing` frees it: completion, failure, retry, the rescuer after its
///   lease expired, a release, a cancel, an operator's UPDATE).
///
///   The READ COMMITTED pitfall: that check reads `jobs` in the statement's snapshot. If
///   another worker claimed the slot and committed after our snapshot was taken, the lock
///   hands us the slot's newest version (Postgres re-checks a locked row on its latest
///   version) but the job it names still looks un-leased in our snapshot, so the slot
///   would look free and the limit could be exceeded by one. So a slot is taken only if
///   its token is the one our snapshot sees as well (a scalar read of the same row, which
///   uses the snapshot): a slot changed since the snapshot counts as busy for this round.
///   Tokens are fresh random values per lease, so a change is always visible.
/// - **Rate**: it locks rows of `kind_rate_slots` whose stamp is more than a window old
///   (re-checked on the latest version under the lock), and stamps each used one with the
///   job's `leased_at` (`now()` of this statement). Stamps on one slot are thus more than
///   a window apart, and no window holds more than `rate_limit` starts.
///
/// The number of jobs is the smallest of `want` and each limit's free slots. The jobs
/// themselves are claimed as in [`super::lease_jobs`] (same index, same order, same
/// asynchronous commit). A paused kind leases nothing. A kind whose row has no limit (it
/// was removed by a later worker) is leased without any.
pub async fn lease_limited_jobs(
    exec: impl PgExecutor<'_>,
    worker: &str,
    kind: &KindLease,
    want: usize,
) -> Result<LimitedLease> {
    if want == 0 {
        return Ok(LimitedLease {
            jobs: Vec::new(),
            held_back: 0,
            held_by: None,
            next_slot_in: None,
        });
    }
    let rows: Vec<LimitedRow> = sqlx::query_as(
        "WITH lim AS MATERIALIZED (
             SELECT p.global_concurrency AS gc, p.rate_limit AS rn, p.rate_window_ms AS rw
               FROM job_kinds p
              WHERE p.kind = $2 AND NOT p.paused
                AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
         ), cslots AS MATERIALIZED (
             SELECT s.slot
               FROM kind_concurrency_slots s, lim
              WHERE s.kind = $2 AND s.slot < lim.gc
                AND s.lease_token IS NOT DISTINCT FROM
                    (SELECT x.lease_token FROM kind_concurrency_slots x WHERE x.kind = s.kind AND x.slot = s.slot)
                AND NOT EXISTS (SELECT 1 FROM jobs j
                                 WHERE j.id = s.job_id AND j.lease_token = s.lease_token
                                   AND (j.state = 'processing') IS TRUE)
              ORDER BY s.slot
              LIMIT $4
                FOR UPDATE OF s SKIP LOCKED
         ), rslots AS MATERIALIZED (
             SELECT s.slot
               FROM kind_rate_slots s, lim
              WHERE s.kind = $2 AND s.slot < lim.rn
                AND s.used_at < now() - lim.rw * interval '1 millisecond'
              ORDER BY s.used_at, s.slot
              LIMIT $4
                FOR UPDATE OF s SKIP LOCKED
         ), room AS MATERIALIZED (
             SELECT CASE WHEN lim.gc IS NULL THEN NULL ELSE (SELECT count(*) FROM cslots) END AS gc_room,
                    CASE WHEN lim.rn IS NULL THEN NULL ELSE (SELECT count(*) FROM rslots) END AS rate_room
               FROM lim
         ), claimed AS MATERIALIZED (
             SELECT j.id
               FROM jobs j
              WHERE j.state = 'queued' AND j.kind = $2 AND j.run_at <= now()
              ORDER BY j.kind, j.priority DESC, j.run_at, j.id
              LIMIT (SELECT coalesce(max(least($4, gc_room, rate_room)), 0) FROM room)
                FOR UPDATE OF j SKIP LOCKED
         ), leased AS (
             UPDATE jobs j
                SET state = 'processing',
                    attempts = j.attempts + 1,
                    leased_by = $1,
                    leased_at = now(),
                    lease_expires_at = now() + $3 * interval '1 millisecond',
                    lease_token = sluice_new_lease_token(),
                    updated_at = now()
               FROM claimed c
              WHERE j.id = c.id
             RETURNING j.id, j.kind, j.payload, j.priority, j.attempts, j.max_attempts, j.lease_token,
                       j.lease_expires_at, j.run_at, j.created_at, j.traceparent
         ), numbered AS (
             SELECT id, lease_token, row_number() OVER (ORDER BY id) AS n FROM leased
         ), took_c AS (
             UPDATE kind_concurrency_slots s
                SET job_id = nb.id, lease_token = nb.lease_token
               FROM (SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM cslots) f
               JOIN numbered nb USING (n)
              WHERE s.kind = $2 AND s.slot = f.slot
             RETURNING 1
         ), took_r AS (
             UPDATE kind_rate_slots s
                SET used_at = now()
               FROM (SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM rslots) f
               JOIN numbered nb USING (n)
              WHERE s.kind = $2 AND s.slot = f.slot
             RETURNING 1
         ), summary AS (
             SELECT (SELECT count(*) FROM leased) AS room,
                    (SELECT count(*) FROM (SELECT 1 FROM jobs q
                                            WHERE q.state = 'queued' AND q.kind = $2 AND q.run_at <= now()
                                            LIMIT $4) r) AS runnable,
                    (SELECT gc_room FROM room) AS gc_room,
                    (SELECT rate_room FROM room) AS rate_room,
                    (SELECT extract(epoch FROM min(s.used_at + lim.rw * interval '1 millisecond') - now())::float8 * 1000
                       FROM kind_rate_slots s, lim
                      WHERE s.kind = $2 AND s.slot < lim.rn
                        AND (SELECT rate_room FROM room) < $4) AS next_slot_ms
              WHERE (SELECT count(*) FROM took_c) >= 0 AND (SELECT count(*) FROM took_r) >= 0
         )
         SELECT summary.*, l.* FROM summary LEFT JOIN leased l ON true",
    )
    .bind(worker)
    .bind(&kind.kind)
    .bind(kind.lease_timeout.as_millis() as i64)
    .bind(want as i64)
    .fetch_all(exec)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(LimitedLease {
            jobs: Vec::new(),
            held_back: 0,
            held_by: None,
            next_slot_in: None,
        });
    };
    let leased = first.room;
    let runnable = first.runnable.min(want as i64);
    // Jobs already leased are not in `runnable` (they left `queued` in this statement,
    // but the count reads the snapshot, which still has them queued).
    let held_back = (runnable - leased).max(0) as u32;
    let gc_room = first.gc_room.unwrap_or(i64::MAX);
    let rate_room = first.rate_room.unwrap_or(i64::MAX);
    let held_by = if held_back == 0 {
        None
    } else if gc_room <= rate_room {
        Some("global_concurrency")
    } else {
        Some("rate_limit")
    };
    let next_slot_in = first
        .next_slot_ms
        .filter(|_| held_by == Some("rate_limit"))
        .map(|ms| Duration::from_micros((ms.max(0.0) * 1000.0) as u64));
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let (Some(id), Some(kind), Some(payload), Some(priority), Some(attempts)) =
            (r.id, r.kind, r.payload, r.priority, r.attempts)
        else {
            continue;
        };
        let (
            Some(max_attempts),
            Some(token),
            Some(lease_expires_at),
            Some(run_at),
            Some(created_at),
        ) = (
            r.max_attempts,
            r.lease_token,
            r.lease_expires_at,
            r.run_at,
            r.created_at,
        )
        else {
            continue;
        };
        jobs.push(LeasedJob {
            id,
            kind,
            payload,
            priority,
            attempts,
            max_attempts,
            token,
            lease_expires_at,
            run_at,
            created_at,
            traceparent: r.traceparent,
        });
    }
    Ok(LimitedLease {
        jobs,
        held_back,
        held_by,
        next_slot_in,
    })
}
