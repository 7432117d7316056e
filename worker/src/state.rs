//! What the worker's services share.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use sluice_common::{model::Lease, JobClient};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::WorkerMetrics,
    registry::{JobError, Registry},
};

/// A job leased by this process: from its lease until its outcome has committed (not
/// merely until its handler returned), so the heartbeat keeps the lease alive while the
/// completer is still trying to write the answer.
#[derive(Debug)]
pub struct Running {
    pub lease: Lease,
    pub kind: String,
    /// Lease length to renew by; from the kind's registry entry.
    pub lease_timeout: Duration,
    /// When the lease was last taken or renewed: the heartbeat renews after a third of it.
    pub renewed_at: Instant,
    /// Fired to ask this job's handler to stop (lease lost, or drain budget spent).
    pub cancel: CancellationToken,
    /// To stop a handler that ignores its token when the budget is gone.
    pub abort: Option<tokio::task::AbortHandle>,
    /// Fired when this lease is gone for good (the job was cancelled, or the heartbeat
    /// found the lease taken away): the executor aborts a handler that has not returned
    /// within a short grace, so its slot frees up.
    pub revoked: CancellationToken,
    /// The handler has returned and its outcome is on its way to the completer: the job
    /// stays here (heartbeated) until that commits, but is not put back at the end of a
    /// drain, since its answer is known.
    pub finished: bool,
}

/// A handler's result on its way to the completer.
#[derive(Debug)]
pub struct Outcome {
    pub lease: Lease,
    pub kind: String,
    pub attempt: i32,
    pub result: Result<(), JobError>,
}

/// Notifications seen by the listener, folded together for the producer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PendingWake {
    /// A job of one of our kinds is runnable now: lease.
    pub look: bool,
    /// A job of one of our kinds was scheduled for later: ask the database when.
    pub schedule: bool,
}

/// Totals for the one-line summary at exit.
#[derive(Debug, Default)]
pub struct Totals {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub interrupted: AtomicU64,
    pub lease_lost: AtomicU64,
}

impl Totals {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// State shared by producer, executor, completer, heartbeat, rescuer and health server.
#[derive(Debug)]
pub struct Shared {
    pub client: JobClient,
    pub registry: Registry,
    /// `<host>:<pid>`, written to `leased_by`.
    pub identity: String,
    pub metrics: WorkerMetrics,
    /// Jobs in flight, by id: the heartbeat renews them, shutdown interrupts the leftovers.
    pub running: Mutex<HashMap<i64, Running>>,
    /// One permit per job slot (`SLUICE_WORKER_CONCURRENCY`).
    pub slots: Arc<Semaphore>,
    /// Wakes the producer when a slot frees up.
    pub slot_freed: Notify,
    /// To the completer. Bounded: when the database is slow or down, executors wait
    /// (holding their slots) instead of piling up outcomes without limit.
    pub outcomes: mpsc::Sender<Outcome>,
    /// Wakes the producer after the listener saw a notification for one of our kinds.
    pub wake: Notify,
    /// Asks the heartbeat to check every running lease now, not only those a third
    /// through: the listener fires it after a LISTEN reconnect, since a cancellation sent
    /// while it was disconnected was lost and only the lease shows it.
    pub check_leases: Notify,
    /// What the listener saw since the producer last looked (coalesced).
    pub pending_wake: Mutex<PendingWake>,
    /// Fired when the worker must drain: the first termination signal, or a service
    /// that stopped unexpectedly (see [`crate::supervisor`]).
    pub drain: CancellationToken,
    /// Set when a service ended early or panicked: readiness stays 503 and the process
    /// exits non-zero after its drain, so Kubernetes restarts it.
    pub broken: AtomicBool,
    /// Parent of every handler's shutdown token; fired near the end of the drain budget.
    pub handler_cancel: CancellationToken,
    /// Set when leasing has started (and cleared if the database becomes unreachable).
    pub leasing: AtomicBool,
    /// Set the instant a termination signal arrives: readiness answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    pub totals: Totals,
}

impl Shared {
    pub fn running_by_kind(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for r in self.lock_running().values() {
            *out.entry(r.kind.clone()).or_insert(0) += 1;
        }
        out
    }

    pub fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Running>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // inserts/removes), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.leasing.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && !self.broken.load(Ordering::SeqCst)
    }

    /// Records what a notification said and wakes the producer.
    pub fn note_wake(&self, look: bool, schedule: bool) {
        {
            let mut p = self.pending_wake.lock().unwrap_or_else(|p| p.into_inner());
            p.look |= look;
            p.schedule |= schedule;
        }
        self.wake.notify_one();
    }

    /// Takes what the listener saw since the last call.
    pub fn take_wake(&self) -> PendingWake {
        std::mem::take(&mut *self.pending_wake.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops the handler holding lease `token` of job `id` (cancelled by an operator, or
    /// lease lost). `None` matches any lease of the job. Returns whether one was running.
    pub fn revoke(&self, id: i64, token: Option<i64>) -> bool {
        let running = self.lock_running();
        match running.get(&id) {
            Some(r) if token.is_none_or(|t| t == r.lease.token) && !r.finished => {
                r.revoked.cancel();
                r.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Forgets jobs whose outcome has committed (or that lost their lease), if the entry
    /// is still the same lease.
    pub fn forget(&self, leases: &[Lease]) {
        let mut running = self.lock_running();
        for l in leases {
            if running
                .get(&l.job_id)
                .is_some_and(|r| r.lease.token == l.token)
            {
                running.remove(&l.job_id);
            }
        }
    }
}
