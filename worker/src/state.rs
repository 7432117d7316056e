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

/// A job running in this process.
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
}

/// A handler's result on its way to the completer.
#[derive(Debug)]
pub struct Outcome {
    pub lease: Lease,
    pub kind: String,
    pub attempt: i32,
    pub result: Result<(), JobError>,
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
    pub outcomes: mpsc::UnboundedSender<Outcome>,
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
        self.leasing.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}
