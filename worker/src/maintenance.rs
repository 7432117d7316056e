//! Background services: the heartbeat (renews leases of long jobs) and the rescuer (takes
//! back expired leases of any worker). The stats refresher is in [`crate::stats`], the
//! retention cleaner in [`crate::cleaner`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sluice_common::{
    model::{KindRetry, Lease},
    storage,
};
use tokio_util::sync::CancellationToken;

use crate::state::{Shared, Totals};

/// Renews the lease of every running job that has used a third of it, in one statement.
/// A job missing from the answer lost its lease (released, rescued, cancelled): its
/// handler is told to stop, since its result would be discarded anyway.
///
/// When [`Shared::check_leases`] fires (after a LISTEN reconnect) it renews every
/// running lease at once, so a job cancelled while the cancellation could not be heard
/// still stops within a heartbeat round trip rather than a third of its lease timeout.
pub async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let shortest = shared
        .registry
        .names()
        .filter_map(|n| shared.registry.get(n).map(|k| k.lease_timeout))
        .min()
        .unwrap_or(Duration::from_secs(300));
    let tick = (shortest / 6).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let every = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => false,
            _ = shared.check_leases.notified() => true,
        };
        let due: Vec<(Lease, Duration)> = shared
            .lock_running()
            .values()
            .filter(|r| every || r.renewed_at.elapsed() >= r.lease_timeout / 3)
            .map(|r| (r.lease, r.lease_timeout))
            .collect();
        if due.is_empty() {
            continue;
        }
        let asked_at = Instant::now();
        match storage::extend_leases(shared.client.pool(), &due).await {
            Ok(extended) => {
                let mut running = shared.lock_running();
                for (lease, _) in &due {
                    let Some(r) = running.get_mut(&lease.job_id) else {
                        continue;
                    };
                    if r.lease.token != lease.token {
                        continue;
                    }
                    if extended.contains(&lease.job_id) {
                        r.renewed_at = asked_at;
                    } else {
                        if !r.finished {
                            tracing::warn!(
                                job.id = lease.job_id,
                                "lease lost while running; asking the handler to stop"
                            );
                            r.revoked.cancel();
                            r.cancel.cancel();
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, jobs = due.len(), "heartbeat failed; will retry")
            }
        }
    }
}

/// Re-queues expired leases of any worker (a crashed one's jobs), every `interval` or
/// at once while it keeps finding a full batch. Many workers may run it: each expired row
/// is locked by one of them. Kinds this worker knows get its registry's `max_attempts`
/// and backoff, as the completer would have applied.
pub async fn rescuer(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    const BATCH: usize = 300;
    let kinds: Vec<KindRetry> = shared
        .registry
        .names()
        .filter_map(|n| shared.registry.get(n))
        .map(|k| KindRetry {
            kind: k.name.clone(),
            max_attempts: k.max_attempts,
            backoff: k.backoff,
        })
        .collect();
    loop {
        let mut found = 0;
        match storage::rescue_expired_leases_for(shared.client.pool(), BATCH, &kinds).await {
            Ok(rescued) => {
                found = rescued.len();
                for r in rescued {
                    tracing::warn!(job.id = r.id, job.kind = %r.kind, state = %r.state, leased_by = r.leased_by.as_deref().unwrap_or("unknown"),
                                   "lease expired; job taken back");
                    shared.metrics.rescued.with_label_values(&[&r.kind]).inc();
                }
            }
            Err(err) => tracing::warn!(error = %err, "rescuer could not run; will retry"),
        }
        if found == BATCH {
            continue;
        }
        let wait = interval.mul_f64(0.8 + rand::random::<f64>() * 0.4);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Puts back every lease still held whose handler did not finish, without using
/// attempts: the last step of a drain whose budget ran out, or of a second signal. Jobs
/// whose handler finished keep their lease: their answer was sent to the completer (and
/// if it could not be written, the lease expires and they run again).
pub async fn release_all(shared: &Shared) -> usize {
    let leases: Vec<Lease> = shared
        .lock_running()
        .values()
        .filter(|r| !r.finished)
        .map(|r| r.lease)
        .collect();
    if leases.is_empty() {
        return 0;
    }
    let reason = format!(
        "interrupted: worker {} stopped before the job finished",
        shared.identity
    );
    match interrupt_leases(shared, &leases, &reason).await {
        Ok(n) => n,
        Err(err) => {
            tracing::error!(error = %err, jobs = leases.len(), "could not put jobs back; their leases will expire");
            0
        }
    }
}

/// Puts `leases` back without using their attempts (`storage::interrupt_jobs`), and
/// takes those it got back out of the running set, counted in the metrics and totals.
/// Returns how many; a lease already lost is left alone. Shared by the drain's last step
/// and the producer giving back its never-started prefetched jobs.
pub async fn interrupt_leases(
    shared: &Shared,
    leases: &[Lease],
    reason: &str,
) -> Result<usize, sluice_common::Error> {
    let done = storage::interrupt_jobs(shared.client.pool(), leases, reason).await?;
    let mut running = shared.lock_running();
    for id in &done {
        if let Some(r) = running.remove(id) {
            shared
                .metrics
                .interrupted
                .with_label_values(&[&r.kind])
                .inc();
        }
    }
    Totals::add(&shared.totals.interrupted, done.len());
    Ok(done.len())
}
