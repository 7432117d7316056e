//! SIGTERM / SIGINT handling shared by the binaries.
//!
//! The first signal fires [`Signals::soft`]: stop taking work and drain. A second one
//! fires [`Signals::hard`]: stop now. What "drain" and "now" mean is each binary's call;
//! this module only turns signals into tokens, and fires `soft` before doing anything else
//! so readiness can flip to 503 in the same instant.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Tokens fired by the first and second termination signal.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// First SIGTERM/SIGINT: begin a graceful drain.
    pub soft: CancellationToken,
    /// Second signal: abandon the drain.
    pub hard: CancellationToken,
}

impl Signals {
    /// Installs the handlers and returns the tokens. `on_first` runs synchronously on the
    /// first signal, before `soft` fires: use it for what must happen "at once" (the
    /// readiness flag).
    pub fn install(on_first: impl Fn() + Send + Sync + 'static) -> std::io::Result<Signals> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let signals = Signals::default();
        let tokens = signals.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                seen += 1;
                if seen == 1 {
                    on_first();
                    tracing::info!(signal = name, "termination signal received; draining");
                    tokens.soft.cancel();
                } else {
                    tracing::warn!(signal = name, "second termination signal; stopping now");
                    tokens.hard.cancel();
                    return;
                }
            }
        });
        Ok(signals)
    }
}

/// `<host>:<pid>`, the `leased_by` of this process (SPEC.md §3).
pub fn worker_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string());
    format!("{host}:{}", std::process::id())
}
