//! What `sluicectl doctor` reads: the health of the queue's storage (SPEC.md §6). Every
//! query here reads catalog views or walks a partial index; none scans `jobs`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::error::Result;

/// Size and vacuum state of the `jobs` table, from `pg_stat_user_tables`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TableHealth {
    /// The heap alone, bytes.
    pub table_bytes: i64,
    /// All indexes, bytes.
    pub index_bytes: i64,
    /// Heap, indexes and TOAST together: what the disk pays.
    pub total_bytes: i64,
    /// Postgres' estimate of live rows.
    pub live_tuples: i64,
    /// Row versions waiting for vacuum: a queue that churns makes many; if they keep
    /// growing, vacuum is held back or not keeping up.
    pub dead_tuples: i64,
    /// Last manual `VACUUM`.
    pub last_vacuum: Option<DateTime<Utc>>,
    /// Last autovacuum: should be recent on a busy queue.
    pub last_autovacuum: Option<DateTime<Utc>>,
    /// Last manual `ANALYZE`.
    pub last_analyze: Option<DateTime<Utc>>,
    /// Last autoanalyze.
    pub last_autoanalyze: Option<DateTime<Utc>>,
}

/// Reads [`TableHealth`] for `jobs` in the current schema.
pub async fn fetch_jobs_table_health(exec: impl PgExecutor<'_>) -> Result<TableHealth> {
    Ok(sqlx::query_as(
        "SELECT pg_relation_size(s.relid) AS table_bytes,
                pg_indexes_size(s.relid) AS index_bytes,
                pg_total_relation_size(s.relid) AS total_bytes,
                s.n_live_tup AS live_tuples, s.n_dead_tup AS dead_tuples,
                s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze
           FROM pg_stat_user_tables s
          WHERE s.relid = 'jobs'::regclass",
    )
    .fetch_one(exec)
    .await?)
}

/// One index of `jobs` and its size.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IndexSize {
    /// The index's name (see the migrations for what each one serves).
    pub name: String,
    /// Bytes on disk.
    pub bytes: i64,
    /// Index scans since statistics were reset: an index never scanned costs writes for
    /// nothing.
    pub scans: i64,
}

/// Every index of `jobs`, largest first.
pub async fn list_jobs_index_sizes(exec: impl PgExecutor<'_>) -> Result<Vec<IndexSize>> {
    Ok(sqlx::query_as(
        "SELECT indexrelname::text AS name, pg_relation_size(indexrelid) AS bytes, idx_scan AS scans
           FROM pg_stat_user_indexes WHERE relid = 'jobs'::regclass
          ORDER BY pg_relation_size(indexrelid) DESC, indexrelname",
    )
    .fetch_all(exec)
    .await?)
}

/// Something that keeps vacuum from removing dead rows: a session with an open snapshot or
/// transaction id, a prepared transaction, or a replication slot.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HorizonHolder {
    /// `session`, `prepared` or `replication slot`.
    pub holder: String,
    /// Backend pid (sessions only): `SELECT pg_terminate_backend(pid)` ends it.
    pub pid: Option<i32>,
    /// Database it is connected to (sessions), or the slot's database.
    pub database: Option<String>,
    /// `active`, `idle in transaction`, ...; a slot's `active`/`inactive`.
    pub state: Option<String>,
    /// `application_name` of the session (Sluice sets `sluice-api`, `sluice-worker`,
    /// `sluicectl`), or the prepared transaction's gid / the slot's name.
    pub application_name: Option<String>,
    /// Client address, when over TCP.
    pub client_addr: Option<String>,
    /// How long its transaction has been open (sessions, prepared), milliseconds.
    pub xact_age_ms: Option<i64>,
    /// When its current (or last, if idle) query started.
    pub query_start: Option<DateTime<Utc>>,
    /// How many transaction ids old the horizon it holds is.
    pub xmin_age: Option<i32>,
    /// The start of its current or last query (at most 200 characters).
    pub query: Option<String>,
}

/// Everything holding back the vacuum horizon of this database's tables, oldest first (at
/// most `limit`): its sessions and prepared transactions (Postgres computes a table's
/// horizon from its own database's backends) and the replication slots that apply to it.
/// The doctor's own session is left out.
pub async fn find_vacuum_horizon_holders(
    exec: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<HorizonHolder>> {
    Ok(sqlx::query_as(
        "SELECT * FROM (
             SELECT 'session'::text AS holder, a.pid, a.datname::text AS database, a.state,
                    a.application_name, host(a.client_addr) AS client_addr,
                    (extract(epoch FROM now() - a.xact_start) * 1000)::int8 AS xact_age_ms,
                    a.query_start,
                    greatest(age(a.backend_xmin), age(a.backend_xid)) AS xmin_age,
                    left(a.query, 200) AS query
               FROM pg_stat_activity a
              WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
                AND a.pid <> pg_backend_pid()
                AND a.datname = current_database()
             UNION ALL
             SELECT 'prepared', NULL, p.database::text, 'prepared', p.gid, NULL,
                    (extract(epoch FROM now() - p.prepared) * 1000)::int8, NULL,
                    age(p.transaction), NULL
               FROM pg_prepared_xacts p
              WHERE p.database = current_database()
             UNION ALL
             SELECT 'replication slot', NULL, r.database::text,
                    CASE WHEN r.active THEN 'active' ELSE 'inactive' END, r.slot_name::text, NULL,
                    NULL, NULL, greatest(age(r.xmin), age(r.catalog_xmin)), NULL
               FROM pg_replication_slots r
              WHERE (r.xmin IS NOT NULL OR r.catalog_xmin IS NOT NULL)
                AND (r.database IS NULL OR r.database = current_database())
         ) h
         ORDER BY xmin_age DESC NULLS LAST, xact_age_ms DESC NULLS LAST
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// A `processing` job whose lease expired and that no rescuer has taken back.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ExpiredLease {
    /// The job.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// `<host>:<pid>` of the worker that held it.
    pub leased_by: Option<String>,
    /// When the lease ran out.
    pub lease_expires_at: DateTime<Utc>,
    /// How long ago, milliseconds (by the database's clock).
    pub expired_ms: i64,
}

/// Leases that expired more than `grace_ms` ago (the rescuers run every few seconds, so
/// any such row means no live worker is rescuing), oldest first, at most `limit`; and how
/// many there are in all.
pub async fn find_unrescued_leases(
    exec: impl PgExecutor<'_> + Copy,
    grace_ms: i64,
    limit: i64,
) -> Result<(i64, Vec<ExpiredLease>)> {
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs
          WHERE state = 'processing' AND lease_expires_at < now() - $1::int8 * interval '1 millisecond'",
    )
    .bind(grace_ms)
    .fetch_one(exec)
    .await?;
    let rows = sqlx::query_as(
        "SELECT id, kind, leased_by, lease_expires_at,
                (extract(epoch FROM now() - lease_expires_at) * 1000)::int8 AS expired_ms
           FROM jobs
          WHERE state = 'processing' AND lease_expires_at < now() - $1::int8 * interval '1 millisecond'
          ORDER BY lease_expires_at
          LIMIT $2",
    )
    .bind(grace_ms)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok((total, rows))
}

/// `pg_notification_queue_usage()`: the fraction (0..1) of the cluster's NOTIFY queue in
/// use. It fills when a listener stops reading (or a transaction stays open in a database
/// with listeners); at 1.0 every `NOTIFY`, and so every enqueue, fails.
pub async fn fetch_notification_queue_usage(exec: impl PgExecutor<'_>) -> Result<f64> {
    Ok(sqlx::query_scalar("SELECT pg_notification_queue_usage()")
        .fetch_one(exec)
        .await?)
}

/// Counter deltas not folded yet: thousands are normal between folds; a number that only
/// grows means no worker is folding (none running, or all failing).
pub async fn count_pending_count_deltas(exec: impl PgExecutor<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM job_count_deltas")
        .fetch_one(exec)
        .await?)
}
