//! The worker's command line and environment (SPEC.md §2, §5).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use sluice_common::config::{parse_duration, DbArgs, LogArgs};
use sluice_common::retention::RetentionArgs;

/// Everything `sluice-worker` reads at start. Each variable is also a `--flag`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice-worker",
    version,
    about = "Runs Sluice jobs; SIGTERM drains without losing any"
)]
pub struct Config {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// `/metrics` and `/health/*`; never behind a public Service.
    #[arg(
        long = "metrics-addr",
        env = "SLUICE_METRICS_ADDR",
        value_name = "SLUICE_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_addr: SocketAddr,

    /// Budget for draining in-flight jobs after SIGTERM; the pod's grace period must
    /// exceed it.
    #[arg(long = "shutdown-timeout", env = "SLUICE_SHUTDOWN_TIMEOUT", value_name = "SLUICE_SHUTDOWN_TIMEOUT",
          default_value = "120s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Jobs run at once by this process.
    #[arg(long = "concurrency", env = "SLUICE_WORKER_CONCURRENCY", value_name = "SLUICE_WORKER_CONCURRENCY",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Most jobs leased ahead of free slots and held in a local buffer (heartbeated, put
    /// back at once on SIGTERM), so a busy worker leases in batches of up to
    /// `concurrency + prefetch` instead of one slot's worth at a time. The buffer holds
    /// only what the worker starts in 50 ms at its recent rate (slow jobs: none), so one
    /// worker never hoards a queue other workers could be running. `0` leases only for
    /// free slots. At most 1000.
    #[arg(long = "prefetch", env = "SLUICE_WORKER_PREFETCH", value_name = "SLUICE_WORKER_PREFETCH",
          default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub prefetch: u32,

    /// Kinds this worker leases (comma list); unset: every registered kind.
    #[arg(
        long = "kinds",
        env = "SLUICE_WORKER_KINDS",
        value_name = "SLUICE_WORKER_KINDS",
        value_delimiter = ','
    )]
    pub kinds: Vec<String>,

    /// TOML file configuring kinds (HTTP targets, lease timeouts, attempts, concurrency).
    #[arg(
        long = "handlers-file",
        env = "SLUICE_HANDLERS_FILE",
        value_name = "SLUICE_HANDLERS_FILE"
    )]
    pub handlers_file: Option<PathBuf>,

    /// Fallback poll when no notification arrives. LISTEN/NOTIFY does the waking, and the
    /// producer also sleeps exactly until the next scheduled job, so this can be slow.
    #[arg(long = "poll-interval", env = "SLUICE_WORKER_POLL_INTERVAL", value_name = "SLUICE_WORKER_POLL_INTERVAL",
          default_value = "30s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Longest the rescuer waits between looks for expired leases of other (possibly
    /// crashed) workers: a dead worker's job runs again within about this long of expiry.
    #[arg(long = "rescue-interval", env = "SLUICE_WORKER_RESCUE_INTERVAL", value_name = "SLUICE_WORKER_RESCUE_INTERVAL",
          default_value = "5s", value_parser = parse_duration)]
    pub rescue_interval: Duration,

    /// How often queue depth and oldest-job age are refreshed for `/metrics` (a COUNT over
    /// the table: not per scrape).
    #[arg(long = "stats-interval", env = "SLUICE_WORKER_STATS_INTERVAL", value_name = "SLUICE_WORKER_STATS_INTERVAL",
          default_value = "15s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// How long finished jobs are kept (`SLUICE_RETENTION_COMPLETED` etc.).
    #[command(flatten)]
    pub retention: RetentionArgs,

    /// How often the cleaner looks for finished jobs past their retention. One worker at
    /// a time cleans (an advisory lock); the others skip that pass.
    #[arg(long = "retention-interval", env = "SLUICE_RETENTION_INTERVAL", value_name = "SLUICE_RETENTION_INTERVAL",
          default_value = "1m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Most rows one retention batch (one short transaction) deletes.
    #[arg(long = "retention-batch", env = "SLUICE_RETENTION_BATCH", value_name = "SLUICE_RETENTION_BATCH",
          default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub retention_batch: u32,

    /// `on` registers the test-only kinds `sluice.hold` and `sluice.record` (see
    /// `worker/src/test_kinds.rs`); `off` (the default) in production.
    #[arg(long = "test-kinds", env = "SLUICE_WORKER_TEST_KINDS", value_name = "SLUICE_WORKER_TEST_KINDS",
          default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub test_kinds: bool,
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" | "" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
}

impl Config {
    /// Checks clap cannot express; exits 2 naming the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.shutdown_timeout.is_zero() {
            return Err("SLUICE_SHUTDOWN_TIMEOUT must be greater than 0s".into());
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err("SLUICE_WORKER_POLL_INTERVAL must be at least 10ms".into());
        }
        if self.rescue_interval < Duration::from_millis(10) {
            return Err("SLUICE_WORKER_RESCUE_INTERVAL must be at least 10ms".into());
        }
        if self.stats_interval < Duration::from_millis(100) {
            return Err("SLUICE_WORKER_STATS_INTERVAL must be at least 100ms".into());
        }
        if self.retention_interval < Duration::from_millis(100) {
            return Err("SLUICE_RETENTION_INTERVAL must be at least 100ms".into());
        }
        if self.kinds.iter().any(|k| k.trim().is_empty()) {
            return Err("SLUICE_WORKER_KINDS has an empty entry".into());
        }
        // The URL parses and its `sslrootcert` is readable: a typo there is bad config
        // (exit 2), not an outage to retry forever.
        sluice_common::db::connect_options(&self.db)?;
        Ok(())
    }
}
