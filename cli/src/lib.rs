//! `sluicectl`, the operator CLI of Sluice (SPEC.md §6). It talks to Postgres directly
//! (`DATABASE_URL`), so it works while the API is down, and every manual action goes
//! through the same `storage` functions as the API's admin routes: one transaction per
//! action, with its `audit_log` row.
//!
//! # Layout
//!
//! - [`args`]: the command line (clap): global flags, one struct per subcommand, the help
//!   texts with examples and the exit codes.
//! - [`error`]: [`CliError`], the crate's one error type, and how each maps to an exit code
//!   (0 ok, 1 refused or failed, 2 bad usage).
//! - [`output`]: colour (only on a terminal, never with `NO_COLOR`), durations for humans,
//!   JSON printing.
//! - [`schema`]: the `migrate` command.
//! - [`inspect`]: `status` and `audit`, the read-only commands.
//! - [`control`]: `pause`, `resume`, `release`, `cancel`, `retry`, the audited actions.
//! - [`drain`]: `wait-drained`, what the runbooks run after stopping workers.
//! - [`doctor`]: `doctor`, the health of the queue's storage (docs/runbooks/storage.md).
//!
//! [`run`] ties them together and returns the process exit code; `main.rs` only parses
//! the command line and exits with it.

pub mod args;
pub mod control;
pub mod doctor;
pub mod drain;
pub mod error;
pub mod inspect;
pub mod output;
pub mod schema;

pub use args::Cli;
pub use error::CliError;

use args::Command;
use output::Style;
use sqlx::PgPool;

/// What every command needs: the pool, how to print, and who is acting.
#[derive(Debug)]
pub struct Ctx {
    /// Lazily connected: a command that fails before touching the database never waits on it.
    pub pool: PgPool,
    /// `--json`: print machine-readable output on stdout instead of text.
    pub json: bool,
    /// Colours for text output; disabled off a terminal so pipes and logs stay clean.
    pub style: Style,
    /// Written to `audit_log.actor` by mutating commands.
    pub actor: String,
}

/// Runs one command and returns the process exit code. Errors are printed on stderr as one
/// `error: ...` line.
pub async fn run(cli: Cli) -> i32 {
    let describe = error::describe_database(&cli.db.database_url);
    let db = cli.db.clone();
    let result = run_command(cli).await;
    match result {
        Ok(()) => 0,
        Err(err) => {
            let err = err.with_database(&describe);
            let err = match err {
                CliError::Unreachable { .. } => error::with_connect_cause(err, &db).await,
                other => other,
            };
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}

async fn run_command(cli: Cli) -> Result<(), CliError> {
    // A bad URL or an unreadable `sslrootcert` is a usage error, named as such.
    sluice_common::db::connect_options(&cli.db).map_err(CliError::Usage)?;
    // One connection is all a command needs; `wait-drained` polls on it.
    let pool = sluice_common::db::connect_lazy(&cli.db, "sluicectl", 2)
        .map_err(|e| CliError::Usage(format!("DATABASE_URL is not a valid Postgres URL: {e}")))?;
    let ctx = Ctx {
        pool: pool.clone(),
        json: cli.json,
        style: Style::for_stdout(cli.json),
        actor: cli.actor.clone().unwrap_or_else(args::os_user),
    };
    let result = match cli.command {
        Command::Migrate => schema::migrate(&ctx).await,
        Command::Status(a) => inspect::status(&ctx, &a).await,
        Command::Audit(a) => inspect::audit(&ctx, &a).await,
        Command::Periodic(a) => inspect::periodic(&ctx, &a).await,
        Command::Pause(a) => control::pause(&ctx, &a).await,
        Command::Resume(a) => control::resume(&ctx, &a).await,
        Command::Release(a) => control::release(&ctx, &a).await,
        Command::Cancel(a) => control::cancel(&ctx, &a).await,
        Command::Retry(a) => control::retry(&ctx, &a).await,
        Command::WaitDrained(a) => drain::wait_drained(&ctx, &a).await,
        Command::Doctor(a) => doctor::doctor(&ctx, &a).await,
    };
    pool.close().await;
    result
}
