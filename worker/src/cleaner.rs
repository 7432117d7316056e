//! The cleaner: deletes finished jobs past their retention (SPEC.md §2, §3), so the
//! table's size follows the retention window, not the number of jobs ever run.
//!
//! Every worker runs it; one at a time cleans. Each pass first tries the session advisory
//! lock [`storage::RETENTION_LOCK`] on a connection of its own and skips the pass if
//! another worker holds it. Holding it, it walks each finished state's kinds (a loose scan
//! of the state's partial index), and for each kind whose retention is not `off`
//! deletes expired rows in batches of `batch`, each batch a short transaction of its own
//! (see [`storage::delete_expired_jobs`]). A worker killed mid-batch leaves that batch
//! undone (rolled back) and its lock released with its connection. Deletes are counted in
//! `sluice_jobs_deleted_total{kind,state}`; nothing goes to `audit_log` (routine, not an
//! intervention).
//!
//! Each (state, kind) remembers where its last batch ended ([`RetentionFloors`]) and the
//! next batch looks only at rows finished from there on (less a margin), so a batch never
//! walks the index entries of rows it deleted before: while a long transaction holds
//! vacuum back, those cannot be marked dead, and walking them made each batch slower than
//! the last (see [`storage::delete_expired_jobs_from`]). One pass in [`FULL_PASS_EVERY`] (and the
//! first) reads from the oldest row, for rows that finished earlier than a floor but
//! committed later, or that an operator's SQL gave an older `finished_at`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use sluice_common::{
    config::format_duration,
    retention::{format_keep, RetentionPolicy, FINISHED_STATES},
    storage, Result,
};
use sqlx::pool::PoolConnection;
use sqlx::Postgres;
use tokio_util::sync::CancellationToken;

use crate::{floors::FLOOR_MARGIN, state::Shared};

/// A pass without floors every this many passes.
pub const FULL_PASS_EVERY: u64 = 10;

/// Where each (state, kind)'s next batch starts, and how many passes ran. A floor sits
/// [`FLOOR_MARGIN`] behind the newest row the last batch deleted: completions commit a
/// moment after the `finished_at` they stamp, as enqueues do after their `run_at`.
#[derive(Debug, Default)]
pub struct RetentionFloors {
    from: HashMap<(&'static str, String), DateTime<Utc>>,
    passes: u64,
}

/// How the cleaner runs.
#[derive(Debug, Clone)]
pub struct CleanerConfig {
    /// What to keep for how long: `SLUICE_RETENTION_*` and the handlers file's overrides.
    pub policy: RetentionPolicy,
    /// Time between passes (`SLUICE_RETENTION_INTERVAL`), jittered ±20% so workers
    /// started together do not all knock on the lock at once.
    pub interval: Duration,
    /// Rows per batch (`SLUICE_RETENTION_BATCH`).
    pub batch: usize,
}

/// Runs passes until `stop` fires. A pass in progress stops after its current batch.
pub async fn run(shared: Arc<Shared>, config: CleanerConfig, stop: CancellationToken) {
    let d = config.policy.describe();
    tracing::info!(
        completed = %d.defaults.completed, failed = %d.defaults.failed, cancelled = %d.defaults.cancelled,
        overrides = d.kinds.len(), interval = %format_duration(config.interval),
        "retention in effect"
    );
    // The first pass comes soon after start (a worker that restarts often must still
    // clean), but not at once: start-up is busy enough.
    let mut wait = config.interval.mul_f64(0.1 + rand::random::<f64>() * 0.2);
    let mut floors = RetentionFloors::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match pass(&shared, &config, &stop, &mut floors).await {
            Ok(Some(deleted)) if deleted > 0 => tracing::info!(deleted, "retention pass done"),
            Ok(Some(deleted)) => tracing::debug!(deleted, "retention pass done"),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "retention pass failed; will retry"),
        }
        wait = config.interval.mul_f64(0.8 + rand::random::<f64>() * 0.4);
    }
}

/// One pass: `None` when another worker holds the lock, else the rows deleted.
pub async fn pass(
    shared: &Shared,
    config: &CleanerConfig,
    stop: &CancellationToken,
    floors: &mut RetentionFloors,
) -> Result<Option<u64>> {
    let mut conn = shared.client.pool().acquire().await?;
    if !storage::try_lock_retention(&mut conn).await? {
        tracing::debug!("another worker is cleaning; skipping this pass");
        return Ok(None);
    }
    // One worker at a time (the lock), once per pass: statistics for a table that got its
    // first backlog before autovacuum came by.
    let result = match storage::analyze_jobs_if_never_analyzed(&mut conn).await {
        Ok(analyzed) => {
            if analyzed {
                tracing::info!("analyzed the jobs table (it had no statistics)");
            }
            clean(&mut conn, shared, config, stop, floors).await
        }
        Err(err) => Err(err),
    };
    match result {
        Ok(n) => {
            if storage::unlock_retention(&mut conn).await.is_err() {
                // Never hand a connection that may still hold the lock back to the pool.
                let _ = conn.close().await;
            }
            Ok(Some(n))
        }
        Err(err) => {
            // Closing the session releases the lock whatever state it is in.
            let _ = conn.close().await;
            Err(err)
        }
    }
}

async fn clean(
    conn: &mut PoolConnection<Postgres>,
    shared: &Shared,
    config: &CleanerConfig,
    stop: &CancellationToken,
    floors: &mut RetentionFloors,
) -> Result<u64> {
    let full = floors.passes.is_multiple_of(FULL_PASS_EVERY);
    floors.passes += 1;
    let mut total = 0;
    for state in FINISHED_STATES {
        let kinds = storage::find_kinds_with_finished_jobs(&mut **conn, state).await?;
        for kind in kinds {
            let Some(keep) = config.policy.keep(&kind, state) else {
                continue;
            };
            // In a full pass, the first batch of each kind reads from the oldest row; the
            // ones after it go on from where it ended.
            let mut first = true;
            loop {
                if stop.is_cancelled() {
                    return Ok(total);
                }
                let key = (state.as_str(), kind.clone());
                let from = if full && first {
                    None
                } else {
                    floors.from.get(&key).copied()
                };
                let batch =
                    storage::delete_expired_jobs_from(conn, state, &kind, keep, config.batch, from)
                        .await?;
                let n = batch.rows;
                first = false;
                if let Some(newest) = batch.newest_finished_at {
                    floors.from.insert(key, newest - FLOOR_MARGIN);
                }
                if n > 0 {
                    shared
                        .metrics
                        .deleted
                        .with_label_values(&[&kind, state.as_str()])
                        .inc_by(n);
                    tracing::debug!(job.kind = %kind, state = state.as_str(), deleted = n,
                                    keep = %format_keep(Some(keep)), "retention batch");
                }
                total += n;
                if (n as usize) < config.batch {
                    break;
                }
                // Let other sessions in between batches.
                tokio::task::yield_now().await;
            }
        }
    }
    Ok(total)
}
