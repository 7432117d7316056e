//! `sluicectl`: the operator CLI (SPEC.md §6). Talks to Postgres directly, so it works
//! while the API is down.

use clap::{Parser, Subcommand};
use sluice_common::config::{parse_or_exit, DbArgs};

#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about = "Operate a Sluice job system")]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations (safe to run concurrently: an advisory lock serialises them).
    Migrate,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli: Cli = parse_or_exit();
    let code = match run(cli).await {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let pool = sluice_common::db::connect_lazy(&cli.db, "sluicectl", 2)?;
    match cli.command {
        Command::Migrate => {
            sluice_common::db::migrate(&pool).await?;
            println!("migrations applied");
        }
    }
    pool.close().await;
    Ok(())
}
