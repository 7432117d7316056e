//! The supervisor: every long-lived service of the worker (producer, completer, heartbeat,
//! rescuer, stats, listener) runs under it.
//!
//! A service is only allowed to end when it was told to (its stop token fired). One that
//! panics or returns early leaves the worker unable to do its job — no leasing, no
//! answers, no heartbeats — while it would otherwise still look alive and ready. So the
//! supervisor turns that into: readiness 503 (`{"status":"failed"}`), the normal drain
//! (in-flight jobs finish or are put back), and a non-zero exit, so Kubernetes (or
//! systemd) restarts the process. Restarting the one service in place was considered and
//! not done: a panic says the process's state may be wrong, and a clean restart of the
//! whole process is cheap by design here (a restart is a non-event).
//!
//! Test hook: `SLUICE_TEST_PANIC_SERVICE=<service>` makes that service panic once a job is
//! running in this process. It is honoured only in debug builds (`cargo test` builds the
//! binary that way); a release build ignores it.

use std::{
    future::Future,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Starts services and watches them.
#[derive(Debug, Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
    /// The service the test hook makes panic (debug builds only).
    panic_service: Option<String>,
}

impl Supervisor {
    pub fn new(shared: Arc<Shared>) -> Self {
        let panic_service = if cfg!(debug_assertions) {
            std::env::var("SLUICE_TEST_PANIC_SERVICE")
                .ok()
                .filter(|s| !s.is_empty())
        } else {
            None
        };
        Supervisor {
            shared,
            panic_service,
        }
    }

    /// Runs `service` as `name`. It may end once `stop` has fired; ending before that, or
    /// panicking at any time, fails the worker (see the module docs). The handle yields
    /// the service's result, `None` if it panicked.
    pub fn spawn<T, F>(
        &self,
        name: &'static str,
        stop: CancellationToken,
        service: F,
    ) -> JoinHandle<Option<T>>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        let hooked = self.panic_service.as_deref() == Some(name);
        let inner = tokio::spawn(async move {
            if hooked {
                let trigger = shared.clone();
                tokio::select! {
                    out = service => out,
                    _ = wait_for_a_running_job(&trigger) => {
                        panic!("SLUICE_TEST_PANIC_SERVICE={name}: test hook")
                    }
                }
            } else {
                service.await
            }
        });
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match inner.await {
                Ok(out) => {
                    if !stop.is_cancelled() {
                        fail(&shared, name, "it returned before it was told to stop");
                    }
                    Some(out)
                }
                Err(err) => {
                    let why = if err.is_panic() {
                        let p = err.into_panic();
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "non-string panic".into());
                        format!("it panicked: {msg}")
                    } else {
                        "it was cancelled".to_string()
                    };
                    fail(&shared, name, &why);
                    None
                }
            }
        })
    }
}

/// Marks the worker failed and starts the drain.
fn fail(shared: &Shared, name: &str, why: &str) {
    tracing::error!(
        service = name,
        reason = why,
        "worker service stopped unexpectedly; draining, then exiting non-zero so the worker is restarted"
    );
    shared.broken.store(true, Ordering::SeqCst);
    shared.leasing.store(false, Ordering::SeqCst);
    shared.drain.cancel();
}

async fn wait_for_a_running_job(shared: &Shared) {
    while shared.lock_running().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
