//! Long-poll waiters: one LISTEN on `sluice_done` for the whole process, dispatching to
//! the requests waiting on each job id.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sluice_common::{
    listen::{Wakeup, Wakeups},
    storage::DONE_CHANNEL,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Per job id: the notifier its waiters share, and how many of them there are.
type WaiterMap = HashMap<i64, (Arc<Notify>, usize)>;

/// Requests waiting for jobs to finish.
#[derive(Debug, Clone)]
pub struct Waiters {
    /// Per job id: the notifier and how many requests hold it.
    map: Arc<Mutex<WaiterMap>>,
}

/// A registration; unregisters on drop.
#[derive(Debug)]
pub struct Waiter {
    /// Register to leave.
    owner: Waiters,
    /// Job waited on.
    id: i64,
    /// Fired when the job may have finished.
    pub notify: Arc<Notify>,
}

impl Waiters {
    /// Starts the shared listener task.
    pub fn start(pool: PgPool, stop: CancellationToken) -> Waiters {
        let waiters = Waiters {
            map: Arc::default(),
        };
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut wakeups = Wakeups::new(pool, &[DONE_CHANNEL]);
            loop {
                let wakeup = tokio::select! {
                    _ = stop.cancelled() => return,
                    w = wakeups.recv() => w,
                };
                match wakeup {
                    Wakeup::Notified { payload, .. } => {
                        for id in payload.split(',').filter_map(|s| s.trim().parse().ok()) {
                            w.wake(Some(id));
                        }
                    }
                    // Notifications may have been lost: every waiter re-checks.
                    Wakeup::Reconnected => w.wake(None),
                }
            }
        });
        waiters
    }

    fn wake(&self, id: Option<i64>) {
        let Ok(map) = self.map.lock() else { return };
        match id {
            Some(id) => {
                if let Some((n, _)) = map.get(&id) {
                    n.notify_waiters();
                }
            }
            None => map.values().for_each(|(n, _)| n.notify_waiters()),
        }
    }

    /// Registers interest in `id`.
    pub fn register(&self, id: i64) -> Waiter {
        let notify = match self.map.lock() {
            Ok(mut map) => {
                let entry = map
                    .entry(id)
                    .or_insert_with(|| (Arc::new(Notify::new()), 0));
                entry.1 += 1;
                entry.0.clone()
            }
            Err(_) => Arc::new(Notify::new()),
        };
        Waiter {
            owner: self.clone(),
            id,
            notify,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut map) = self.owner.map.lock() {
            if let Some(entry) = map.get_mut(&self.id) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    map.remove(&self.id);
                }
            }
        }
    }
}
