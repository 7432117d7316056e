//! The worker's hot path and its housekeeping: lease, complete, fail, interrupt,
//! heartbeat, rescue, the next wake-up, kind registration and deletion of old jobs.
//! Every answer about a job is fenced on its lease token.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::error::{Error, Result};
use crate::model::{
    validate_kind, Backoff, FailOutcome, Failure, KindLease, KindRetry, Lease, LeasedJob, Rescued,
};

use super::{DONE_IDS_PER_STATEMENT, REQUEUE_STATE};

/// One index range of a kind's claim order on `jobs_claim_idx`, in that order: queued,
/// due rows of kind `k.kind` that also meet `$extra` (`""`: the whole order), locked
/// `SKIP LOCKED`, at most `$4`.
macro_rules! claim_range {
    ($extra:literal) => {
        concat!(
            "SELECT j.id, j.kind, j.priority, j.run_at
               FROM jobs j
              WHERE (j.state = 'queued') IS TRUE
                AND j.kind = k.kind ",
            $extra,
            "
                AND j.run_at <= now()
              ORDER BY j.kind, j.priority DESC, j.run_at, j.id
              LIMIT $4
                FOR UPDATE OF j SKIP LOCKED"
        )
    };
}

/// What both lease statements do with each kind's candidate rows `c`: drop paused and
/// globally limited kinds, keep the best `$4` across kinds, and stamp the lease.
macro_rules! lease_claimed {
    () => {
        "
              WHERE NOT EXISTS (SELECT 1 FROM job_kinds p WHERE p.kind = k.kind
                                   AND (p.paused OR p.global_concurrency IS NOT NULL OR p.rate_limit IS NOT NULL))
                AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
              ORDER BY c.priority DESC, c.run_at, c.id
              LIMIT $4
         )
         UPDATE jobs j
            SET state = 'processing',
                attempts = j.attempts + 1,
                leased_by = $1,
                leased_at = now(),
                lease_expires_at = now() + t.timeout_ms * interval '1 millisecond',
                lease_token = sluice_new_lease_token(),
                updated_at = now()
           FROM claimed c
           JOIN unnest($2::text[], $3::int8[]) AS t(kind, timeout_ms) ON t.kind = c.kind
          WHERE j.id = c.id
         RETURNING j.id, j.kind, j.payload, j.priority, j.attempts, j.max_attempts, j.lease_token,
                   j.lease_expires_at, j.run_at, j.created_at, j.traceparent"
    };
}

/// The statement of [`lease_jobs`], and of [`lease_jobs_from`] when no kind has a floor:
/// `$1` worker, `$2` kinds, `$3` their lease timeouts in ms, `$4` limit. Public so that
/// `common/tests/plans.rs` can `EXPLAIN` the very statement the worker runs.
pub const LEASE_JOBS_SQL: &str = concat!(
    "WITH claimed AS MATERIALIZED (
             SELECT c.id, c.kind
               FROM unnest($2::text[]) AS k(kind)
              CROSS JOIN LATERAL (",
    claim_range!(""),
    ") c",
    lease_claimed!()
);

/// The statement of [`lease_jobs_from`] when some kind has a floor: as
/// [`LEASE_JOBS_SQL`], plus `$5`/`$6` each kind's claim floor (priority, run_at; see
/// [`ClaimFloor`]), `32767`/`NULL` for none. Two statements, not one: this one costs
/// Postgres about three times as long to plan (three index ranges per kind, 1.1 ms
/// against 0.4), which an idle worker's lease of a single job, always without floors,
/// should not pay.
pub const LEASE_JOBS_FROM_FLOORS_SQL: &str = concat!(
    "WITH claimed AS MATERIALIZED (
             SELECT c.id, c.kind
               FROM unnest($2::text[], $5::int2[], $6::timestamptz[]) AS k(kind, fp, fr)
              CROSS JOIN LATERAL (
                    SELECT * FROM (
                        SELECT * FROM (",
    claim_range!("AND j.priority > k.fp"),
    ") above
                        UNION ALL
                        SELECT * FROM (",
    claim_range!("AND j.priority = k.fp AND j.run_at >= coalesce(k.fr, '-infinity')"),
    ") at_floor
                        UNION ALL
                        SELECT * FROM (",
    claim_range!("AND j.priority < k.fp"),
    ") below
                    ) u
                    LIMIT $4
                    ) c",
    lease_claimed!()
);

/// Where a kind's lease may start reading the claim index: no queued row of the kind at
/// this `priority` with a `run_at` before `run_at` is looked at (higher and lower
/// priorities are read in full).
///
/// Why: a lease finds its rows by walking `jobs_claim_idx` in claim order, and every job
/// leased before leaves an entry there until vacuum removes it. Normally those entries are
/// marked dead by the first scan that passes them and cost almost nothing. But while any
/// session holds the vacuum horizon back (a transaction left idle, a long report, a
/// replica with `hot_standby_feedback`), no entry can be marked dead, and every lease would
/// visit the heap for every job leased since that session began: at 8k jobs/s a lease took
/// 14 ms after 15 s, and the queue fell behind after 20 s (`make bench`, stress). A floor
/// taken from the last row the worker leased (minus a margin) lets the lease skip them by
/// the index bound. What the floor can miss (a row committed later than its `run_at` by
/// more than the margin, a rescued lease, an operator's `UPDATE` back to `queued`) is
/// found by a lease without floors, which the producer runs often enough to keep the
/// delay small while costing no more than a twentieth of its time
/// (`worker/src/producer.rs`, `Floors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimFloor {
    pub priority: i16,
    pub run_at: DateTime<Utc>,
}

/// Leases up to `limit` runnable jobs of the given kinds in one statement: locks them with
/// `FOR UPDATE SKIP LOCKED` (concurrent leasers never wait on, or get, each other's rows),
/// moves them to `processing`, counts the attempt, and stamps the lease: `leased_by`,
/// `leased_at`, `lease_expires_at` from the kind's timeout, and a fresh fencing token:
/// 64 random bits (`sluice_new_lease_token()`, migration 2), so no crash or failover can
/// hand out a value again the way a rolled-back sequence could.
///
/// Jobs of kinds paused through the API/CLI are skipped even if still `queued` (an enqueue
/// that raced the pause). Higher priority first, then oldest `run_at`. So are kinds with a
/// global concurrency or rate limit in `job_kinds` (read from the same row as `paused`, so
/// unlimited kinds pay nothing): those are leased only by [`super::lease_limited_jobs`],
/// and a worker whose handlers file does not know a kind's limit never breaks it.
///
/// The best rows are found per kind (a `LATERAL` over the kinds) on the partial index
/// `jobs_claim_idx (kind, priority DESC, run_at, id) WHERE (state = 'queued') IS TRUE`
/// (migration 5), whose predicate the statement repeats verbatim: no other index can
/// serve that clause, so stale statistics (taken while nothing was queued) cannot make
/// the planner fetch and sort a kind's whole backlog instead. A lease reads only
/// the worker's own kinds' entries, never other kinds' or finished rows. (`j.kind` leads
/// the inner `ORDER BY` only so the planner sees the index order; it is constant there.)
/// Each kind's scan may lock up to `limit` rows of which the outer `LIMIT` keeps the best
/// `limit`; the others stay locked only until this statement commits. With floors
/// ([`lease_jobs_from`]), each kind's rows are read in three index ranges, in claim order:
/// priorities above the floor's, the floor's priority from the floor's `run_at` on,
/// priorities below (for a kind without a floor: all of them, in the last two); a range is
/// read only while the kind still has fewer than `limit`.
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
    lease_jobs_from(exec, worker, kinds, &[], limit).await
}

/// [`lease_jobs`] with a [`ClaimFloor`] per kind (`floors[i]` for `kinds[i]`; missing or
/// `None`: the kind's whole claim order).
pub async fn lease_jobs_from(
    exec: impl PgExecutor<'_>,
    worker: &str,
    kinds: &[KindLease],
    floors: &[Option<ClaimFloor>],
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
    if floors.iter().all(Option::is_none) {
        let rows = sqlx::query_as(LEASE_JOBS_SQL)
            .bind(worker)
            .bind(&names)
            .bind(&timeouts_ms)
            .bind(limit as i64)
            .fetch_all(exec)
            .await?;
        return Ok(rows);
    }
    let (floor_priorities, floor_run_ats) = floor_arrays(kinds.len(), floors);
    let rows = sqlx::query_as(LEASE_JOBS_FROM_FLOORS_SQL)
        .bind(worker)
        .bind(&names)
        .bind(&timeouts_ms)
        .bind(limit as i64)
        .bind(&floor_priorities)
        .bind(&floor_run_ats)
        .fetch_all(exec)
        .await?;
    Ok(rows)
}

/// `$5` and `$6` of [`LEASE_JOBS_FROM_FLOORS_SQL`]: the floors, or for none the highest priority and
/// `NULL` (read as `-infinity`), which make the three ranges the whole claim order
/// (`> 32767` is empty).
pub fn floor_arrays(
    kinds: usize,
    floors: &[Option<ClaimFloor>],
) -> (Vec<i16>, Vec<Option<DateTime<Utc>>>) {
    (0..kinds)
        .map(|i| match floors.get(i).copied().flatten() {
            Some(f) => (f.priority, Some(f.run_at)),
            None => (i16::MAX, None),
        })
        .unzip()
}

fn split_leases(leases: &[Lease]) -> (Vec<i64>, Vec<i64>) {
    leases.iter().map(|l| (l.job_id, l.token)).unzip()
}

/// The statement of [`complete_jobs`]: `$1` job ids, `$2` their lease tokens. Public so
/// that `common/tests/plans.rs` can `EXPLAIN` the very statement the completer runs.
pub const COMPLETE_JOBS_SQL: &str = "WITH done AS (
                 UPDATE jobs j
                    SET state = 'completed', finished_at = now(), updated_at = now(),
                        lease_expires_at = NULL, lease_token = NULL, last_error = NULL
                   FROM unnest($1::int8[], $2::int8[]) AS l(id, token)
                  WHERE j.id = l.id AND j.lease_token = l.token AND (j.state = 'processing') IS TRUE
                 RETURNING j.id
             ), told AS (
                 SELECT pg_notify('sluice_done', string_agg(id::text, ',')) FROM done HAVING count(*) > 0
             )
             SELECT id FROM done WHERE (SELECT count(*) FROM told) >= 0";

/// Marks leased jobs `completed`, fenced on each lease. Returns the ids it applied to;
/// the rest had lost their lease (released, rescued, cancelled, re-leased) and were left
/// alone. Sends their ids on [`DONE_CHANNEL`] in the same statement.
///
/// The fence `(j.state = 'processing') IS TRUE` means exactly `j.state = 'processing'`
/// (state is never NULL) but is not indexable, so the planner looks the batch up by
/// primary key. With the plain comparison, from statistics that expect few `processing`
/// rows, it scans every processing row through a state index and hash-joins: each
/// completion then costs as much as the completer's backlog, and a completer that falls
/// behind falls further behind (seen in the storage benchmark). `fail_jobs` does the same.
pub async fn complete_jobs(conn: &mut PgConnection, leases: &[Lease]) -> Result<Vec<i64>> {
    let mut applied = Vec::with_capacity(leases.len());
    for chunk in leases.chunks(DONE_IDS_PER_STATEMENT) {
        let (ids, tokens) = split_leases(chunk);
        let rows: Vec<i64> = sqlx::query_scalar(COMPLETE_JOBS_SQL)
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
                  WHERE j.id = f.id AND j.lease_token = f.token AND (j.state = 'processing') IS TRUE
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

/// Takes back up to `limit` jobs whose lease expired (their worker died or hung), using
/// the rows' own settings. See [`rescue_expired_leases_for`].
pub async fn rescue_expired_leases(
    exec: impl PgExecutor<'_>,
    limit: usize,
) -> Result<Vec<Rescued>> {
    rescue_expired_leases_for(exec, limit, &[]).await
}

/// Takes back up to `limit` jobs whose lease expired (their worker died or hung): back to
/// `queued` (or `paused`) after the kind's backoff (the crashed attempt counts, and a job
/// that kills its worker must not be retried at once by every other one), or `failed`
/// once out of attempts, announced on [`super::DONE_CHANNEL`] like any other failure.
///
/// `kinds` carries the rescuing worker's registry, as the completer applies it: a kind's
/// `max_attempts` caps the row's (the smaller wins) and its backoff sets the delay. Rows
/// of kinds not in `kinds` use the row's `max_attempts` and the default backoff.
///
/// Safe for many workers to run at once: each expired row is locked by exactly one. At
/// most 350 rows per call (one `sluice_done` payload).
pub async fn rescue_expired_leases_for(
    exec: impl PgExecutor<'_>,
    limit: usize,
    kinds: &[KindRetry],
) -> Result<Vec<Rescued>> {
    let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
    let max_attempts: Vec<Option<i32>> = kinds.iter().map(|k| k.max_attempts).collect();
    let base_ms: Vec<i64> = kinds
        .iter()
        .map(|k| k.backoff.base.as_millis() as i64)
        .collect();
    let max_ms: Vec<i64> = kinds
        .iter()
        .map(|k| k.backoff.max.as_millis() as i64)
        .collect();
    let default = Backoff::default();
    // Out of attempts: the smaller of the row's and the kind's limit.
    let spent = "j.attempts >= least(j.max_attempts, coalesce(t.max_attempts, j.max_attempts))";
    // The backoff of `Backoff::delay`: base * 2^(attempts-1) capped at max, drawn from
    // its upper half.
    let delay_ms = "least(coalesce(t.base_ms, $6)::float8 * power(2::float8, least(greatest(j.attempts, 1), 63) - 1),
                          coalesce(t.max_ms, $7)::float8) * (0.5 + random() * 0.5)";
    let sql = format!(
        "WITH expired AS MATERIALIZED (
             SELECT id FROM jobs
              WHERE state = 'processing' AND lease_expires_at < now()
              ORDER BY lease_expires_at
              LIMIT $1
                FOR UPDATE SKIP LOCKED
         ), prev AS (
             SELECT j.id, j.kind, j.leased_by FROM jobs j JOIN expired e USING (id)
         ), t AS (
             SELECT * FROM unnest($2::text[], $3::int4[], $4::int8[], $5::int8[])
                      AS t(kind, max_attempts, base_ms, max_ms)
         ), changed AS (
             UPDATE jobs j
                SET state = CASE WHEN {spent} THEN 'failed' ELSE {REQUEUE_STATE} END,
                    run_at = CASE WHEN {spent} THEN j.run_at
                                  ELSE now() + ({delay_ms}) * interval '1 millisecond' END,
                    last_error = 'lease expired at ' || j.lease_expires_at || ' (held by ' || coalesce(j.leased_by, '?') || ')',
                    finished_at = CASE WHEN {spent} THEN now() END,
                    leased_by = CASE WHEN {spent} THEN j.leased_by END,
                    leased_at = CASE WHEN {spent} THEN j.leased_at END,
                    lease_expires_at = NULL, lease_token = NULL, updated_at = now()
               FROM prev LEFT JOIN t ON t.kind = prev.kind
              WHERE j.id = prev.id AND j.state = 'processing' AND j.lease_expires_at < now()
             RETURNING j.id, j.kind, j.state, prev.leased_by
         ), told AS (
             SELECT pg_notify('sluice_done', string_agg(id::text, ','))
               FROM changed WHERE state = 'failed' HAVING count(*) > 0
         )
         SELECT * FROM changed WHERE (SELECT count(*) FROM told) >= 0"
    );
    Ok(sqlx::query_as(&sql)
        .bind(limit.min(DONE_IDS_PER_STATEMENT) as i64)
        .bind(&names)
        .bind(&max_attempts)
        .bind(&base_ms)
        .bind(&max_ms)
        .bind(default.base.as_millis() as i64)
        .bind(default.max.as_millis() as i64)
        .fetch_all(exec)
        .await?)
}

/// When the next job of these kinds becomes runnable or the next lease expires, whichever
/// is first: an idle worker sleeps until then instead of polling. Per kind, the first
/// entry of `jobs_queued_kind_run_at_idx (kind, run_at)` (whose always-true predicate
/// `run_at > '-infinity'` is repeated here; see the migration for why it exists).
pub async fn find_next_wakeup(
    exec: impl PgExecutor<'_>,
    kinds: &[&str],
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "SELECT least((SELECT min(q.first) FROM unnest($1::text[]) AS k(kind)
                         CROSS JOIN LATERAL (SELECT min(run_at) AS first FROM jobs
                                              WHERE state = 'queued' AND kind = k.kind
                                                AND run_at > '-infinity') q),
                      (SELECT min(lease_expires_at) FROM jobs WHERE state = 'processing'))",
    )
    .bind(kinds)
    .fetch_one(exec)
    .await?)
}

/// How long until the next scheduled job of these kinds becomes runnable, measured on the
/// database's clock (`run_at - now()` in the database), so a worker whose clock is off
/// still wakes on time. Only rows not yet due count (those are the lease round's; a due
/// row of a paused kind must not hide a later one). `None` if nothing is scheduled.
pub async fn find_next_run_delay(
    exec: impl PgExecutor<'_>,
    kinds: &[&str],
) -> Result<Option<std::time::Duration>> {
    let ms: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM (SELECT min(run_at) FROM jobs
                                     WHERE state = 'queued' AND kind = ANY($1::text[]) AND run_at > now())
                                  - now())::float8 * 1000",
    )
    .bind(kinds)
    .fetch_one(exec)
    .await?;
    Ok(ms.map(|ms| std::time::Duration::from_micros((ms.max(0.0) * 1000.0) as u64)))
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

/// Analyzes `jobs` if its statistics describe no rows at all (never analyzed, neither by
/// `ANALYZE` nor by autovacuum, or last analyzed while empty, as `sluicectl migrate` does
/// on a fresh database) while at least 1000 rows changed since. Returns whether it
/// analyzed.
///
/// Why: a fresh deployment that gets a backlog before autovacuum's first visit plans every
/// statement from default selectivities. The hot statements are shaped to be safe even
/// then (see `common/tests/plans.rs`), but the API's lists and the operators' SQL are not,
/// and autovacuum may take minutes to come by. The cleaner calls this once per pass (it
/// holds the retention lock, so one worker at a time); on a table that has statistics it
/// costs one look at `pg_stat_user_tables`.
pub async fn analyze_jobs_if_never_analyzed(conn: &mut PgConnection) -> Result<bool> {
    let never: bool = sqlx::query_scalar(
        "SELECT coalesce(bool_and((s.last_analyze IS NULL AND s.last_autoanalyze IS NULL
                                    OR c.reltuples <= 0)
                                   AND s.n_mod_since_analyze >= 1000), false)
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
          WHERE s.relid = 'jobs'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    if never {
        sqlx::query("ANALYZE jobs").execute(&mut *conn).await?;
    }
    Ok(never)
}
