//! The connection pool and migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::DbArgs;
use crate::error::Result;

/// The migrations of `migrations/`, embedded in every binary so `sluicectl migrate` needs
/// no files beside it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Builds the pool without connecting: a process can start (and report not-ready) while
/// Postgres is still coming up, instead of crash-looping.
///
/// Every connection gets `statement_timeout` (no query outlives a drain budget) and an
/// `application_name`, so `pg_stat_activity` shows which process holds what.
pub fn connect_lazy(args: &DbArgs, application_name: &str, default_max: u32) -> Result<PgPool> {
    let options: PgConnectOptions = args
        .database_url
        .parse::<PgConnectOptions>()?
        .application_name(application_name)
        .options([(
            "statement_timeout",
            format!("{}", args.statement_timeout.as_millis()),
        )])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let pool = PgPoolOptions::new()
        .max_connections(args.max_connections.unwrap_or(default_max))
        .min_connections(0)
        .acquire_timeout(args.acquire_timeout)
        // Recycle connections now and then so a Postgres failover or a pgbouncer restart
        // does not leave the pool holding stale sockets for long.
        .max_lifetime(Duration::from_secs(30 * 60))
        .idle_timeout(Duration::from_secs(5 * 60))
        .test_before_acquire(true)
        .connect_lazy_with(options);
    Ok(pool)
}

/// Waits until the database answers, retrying with capped backoff, or until `shutdown`
/// fires (then returns `false`).
pub async fn wait_for_database(pool: &PgPool, shutdown: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(pool)
            .await
        {
            Ok(_) => return true,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "database not reachable yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Applies pending migrations. sqlx holds a Postgres advisory lock while it does, so two
/// `sluicectl migrate` (or two migration Jobs) at once apply the schema exactly once.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    // A migration stuck behind a long-running transaction's lock must fail fast rather
    // than queue every other query behind its own lock request.
    let mut conn = pool.acquire().await?;
    sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut *conn)
        .await?;
    MIGRATOR.run(&mut *conn).await?;
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await?;
    Ok(())
}
