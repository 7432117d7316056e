//! The command line: global flags, one struct per subcommand, help texts with examples.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use sluice_common::config::{parse_duration, DbArgs};

/// The exit codes, written once for the main help (and mirrored in the runbooks).
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0  done (status: always, when the database answered)
  1  refused or failed: invalid transition, no such job, unknown kind,
     wait-drained timed out, database unreachable or erroring
  2  bad usage or configuration: unknown flag, bad duration, invalid kind name"
    };
}

const MAIN_EXAMPLES: &str = concat!(
    "Examples:
  sluicectl status
  sluicectl pause search.reindex --reason 'reindex schema migration'
  sluicectl wait-drained --timeout 2m
  sluicectl release 4711 --reason 'worker host died'
  sluicectl audit --since 1h

",
    exit_codes!()
);

/// `sluicectl`: operate a Sluice job system.
#[derive(Debug, Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Operate a Sluice job system (talks to Postgres directly; works while the API is down)",
    after_help = MAIN_EXAMPLES
)]
pub struct Cli {
    /// Where the jobs live; the same settings as the API and the worker.
    #[command(flatten)]
    pub db: DbArgs,

    /// Who is acting, for `audit_log`. Default: the OS user ($USER, else `id -un`, else the uid).
    #[arg(long, global = true, env = "SLUICECTL_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,

    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations (safe to run concurrently: an advisory lock serialises them).
    #[command(after_help = "\
Examples:
  sluicectl migrate
  DATABASE_URL=postgres://sluice@db/sluice sluicectl migrate

Takes a Postgres advisory lock (two at once apply the schema once) and sets
lock_timeout=10s, so a migration stuck behind a long transaction fails instead of
queueing every other query behind it.")]
    Migrate,

    /// Counts by state and kind, paused kinds, and processing jobs with their lease.
    #[command(after_help = "\
Examples:
  sluicectl status
  sluicectl status --json | jq .states.processing

Drained means processing = 0. Always exits 0 when the database answered.")]
    Status(StatusArgs),

    /// Hold back a kind: its queued jobs, and jobs of it enqueued later, are not leased.
    #[command(after_help = "\
Examples:
  sluicectl pause search.reindex --reason 'schema work on the search index'

Running jobs of the kind finish; check with `sluicectl wait-drained --kind KIND`.
Undo with `sluicectl resume KIND`. Exit 1 if no worker registered the kind and no job of it exists.")]
    Pause(KindArgs),

    /// Let a paused kind run again: its paused jobs go back to queued, workers are woken.
    #[command(after_help = "\
Examples:
  sluicectl resume search.reindex --reason 'schema work done'")]
    Resume(KindArgs),

    /// Force re-lease of a processing job: back to queued now, the old lease fenced off.
    #[command(after_help = "\
Examples:
  sluicectl release 4711 --reason 'worker host crashed, do not wait 5m for the lease'

The job goes back to queued (paused if its kind is paused) and an idle worker picks it
up within seconds. The old worker's late answer is ignored (fenced on the lease token),
but it may still be running the job: stop it, and make handlers idempotent.
Exit 1 if the job is not processing or does not exist.")]
    Release(JobArgs),

    /// Cancel a job that has not finished (queued, paused or processing).
    #[command(after_help = "\
Examples:
  sluicectl cancel 4711 --reason 'duplicate of 4710'

Exit 1 if the job already finished or does not exist.")]
    Cancel(JobArgs),

    /// Run a failed or cancelled job again from scratch (attempts reset).
    #[command(after_help = "\
Examples:
  sluicectl retry 4711 --reason 'downstream fixed'

Exit 1 if the job is not failed or cancelled, or does not exist.")]
    Retry(JobArgs),

    /// Wait until no job is processing (optionally of one kind); exit 1 at the timeout.
    #[command(after_help = "\
Examples:
  sudo systemctl stop sluice-worker && sluicectl wait-drained --timeout 2m
  sluicectl pause search.reindex && sluicectl wait-drained --kind search.reindex

At the timeout, lists the jobs still held with leased_by (<host>:<pid>) and lease age,
and exits 1.")]
    WaitDrained(WaitArgs),

    /// The health of the queue's storage: sizes, dead tuples, vacuum, the oldest
    /// transaction holding back vacuum, expired leases, NOTIFY queue, retention.
    #[command(after_help = "\
Examples:
  sluicectl doctor
  sluicectl doctor --json | jq .warnings
  sluicectl doctor --idle-tx-warn 30s

Exit 0 healthy, 1 with warnings (each printed with what it means), 2 bad usage.
Retention settings are read from SLUICE_RETENTION_* and SLUICE_HANDLERS_FILE, like the
worker, so run it with the worker's environment. What each warning means and what to do:
docs/runbooks/storage.md.")]
    Doctor(DoctorArgs),

    /// Print the audit trail of manual actions (pause, resume, release, cancel, retry).
    #[command(after_help = "\
Examples:
  sluicectl audit --since 1h
  sluicectl audit --since 2026-11-22T09:00:00Z --json

Prints the newest --limit entries at or after --since, oldest first.")]
    Audit(AuditArgs),

    /// List the periodic jobs ([periodic.NAME] in the workers' handlers files) with their
    /// next run and last tick.
    #[command(after_help = "\
Examples:
  sluicectl periodic
  sluicectl periodic --json

Workers record their periodic tables when they start and after every tick. OVERDUE means
the next run is more than a minute past: no running worker has the table, so nothing is
being enqueued for it. Always exits 0 when the database answered.")]
    Periodic(PeriodicArgs),
}

/// `periodic` takes only the global flags.
#[derive(Debug, Args)]
pub struct PeriodicArgs {}

/// `status` takes only the global flags.
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// A kind and why it is being paused or resumed.
#[derive(Debug, Args)]
pub struct KindArgs {
    /// The job kind, e.g. `search.reindex`.
    pub kind: String,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
}

/// A job id and why it is being acted on.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id (`jobs.id`).
    pub id: i64,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `wait-drained` settings.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up after this long (500ms, 30s, 5m); 0s checks once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Only wait for jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// How often to look.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub interval: Duration,
}

/// `doctor` settings: the thresholds of its warnings.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Warn about a session idle in transaction for longer than this: it holds back
    /// vacuum (dead rows pile up) and may hold locks.
    #[arg(long, env = "SLUICE_DOCTOR_IDLE_TX_WARN", default_value = "60s", value_parser = parse_duration)]
    pub idle_tx_warn: Duration,
    /// Warn about any transaction (even an active one) open for longer than this.
    #[arg(long, env = "SLUICE_DOCTOR_LONG_TX_WARN", default_value = "5m", value_parser = parse_duration)]
    pub long_tx_warn: Duration,
    /// Warn about leases expired for longer than this: the rescuers of live workers take
    /// them back within seconds, so such a lease means no worker is running.
    #[arg(long, env = "SLUICE_DOCTOR_LEASE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub lease_grace: Duration,
    /// Retention in effect, as the worker reads it.
    #[command(flatten)]
    pub retention: sluice_common::retention::RetentionArgs,
    /// The worker's handlers file, for per-kind retention overrides.
    #[arg(
        long,
        env = "SLUICE_HANDLERS_FILE",
        value_name = "SLUICE_HANDLERS_FILE"
    )]
    pub handlers_file: Option<std::path::PathBuf>,
}

/// `audit` settings.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries from the last DURATION (`1h`, `30m`) or since an RFC 3339 time.
    #[arg(long, value_parser = parse_since, value_name = "DURATION|RFC3339")]
    pub since: Option<DateTime<Utc>>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
}

/// `--since`: a duration back from now, or an absolute RFC 3339 time.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(at.with_timezone(&Utc));
    }
    let back = parse_duration(text)
        .map_err(|e| format!("{e} (or an RFC 3339 time such as 2026-11-22T09:00:00Z)"))?;
    let back = chrono::Duration::from_std(back).map_err(|e| e.to_string())?;
    Ok(Utc::now() - back)
}

/// The OS user running `sluicectl`: `$USER`, else `id -un`, else `uid:<n>`.
pub fn os_user() -> String {
    if let Some(user) = std::env::var("USER").ok().filter(|u| !u.trim().is_empty()) {
        return user;
    }
    if let Ok(out) = std::process::Command::new("id").arg("-un").output() {
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !name.is_empty() {
            return name;
        }
    }
    // /proc/self is owned by the process's uid; no libc call (and no unsafe) needed.
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(m) => format!("uid:{}", m.uid()),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn since_accepts_a_duration_or_a_timestamp_and_names_both_when_refusing() {
        assert!(parse_since("1h").is_ok());
        assert_eq!(
            parse_since("2026-11-22T09:00:00Z").ok(),
            DateTime::parse_from_rfc3339("2026-11-22T09:00:00Z")
                .ok()
                .map(|d| d.with_timezone(&Utc))
        );
        let err = parse_since("yesterday").expect_err("refused");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn the_exit_codes_are_in_the_main_help() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("2  bad usage"), "{help}");
    }
}
