//! The one error type of the `common` crate boundary.
//!
//! Callers map it to their own surface: the API to problem+json statuses, `sluicectl` to
//! exit codes. [`Error::Database`] carries details for logs only; it must never be shown
//! to an HTTP client.

use crate::model::{InvalidJob, JobState};

/// Everything the job client can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's input breaks a rule; nothing was written.
    #[error(transparent)]
    Invalid(#[from] InvalidJob),
    /// No job has this id.
    #[error("job {0} does not exist")]
    NotFound(i64),
    /// No worker registered this kind and no job of it exists.
    #[error("unknown kind {0:?}: no worker registered it and no job of it exists")]
    UnknownKind(String),
    /// The job's current state does not allow the requested action.
    #[error("job {id} is {state}; cannot {action} it")]
    InvalidTransition {
        /// The job.
        id: i64,
        /// Its state when the action was attempted.
        state: JobState,
        /// What was attempted (`release`, `cancel`, `retry`).
        action: &'static str,
    },
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed to apply.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a database failure should be answered: most are worth retrying as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The statement lost a race (serialization failure, deadlock): run it again at once.
    Conflict,
    /// The connection or the server is gone or going (terminated backend, failover, socket
    /// error): retry later; the database may be down.
    ConnectionLost,
    /// Busy, not broken (statement timeout, pool exhausted, out of connections or memory,
    /// lock timeout, a read-only standby): retry later.
    Overloaded,
    /// A bug or a refusal that retrying will not change.
    Permanent,
}

impl Failure {
    /// Whether a caller may be told to retry (HTTP 503 with `Retry-After`).
    pub fn is_transient(self) -> bool {
        self != Failure::Permanent
    }
}

/// Classifies a sqlx error by SQLSTATE (or the client-side failure kind).
pub fn classify(err: &sqlx::Error) -> Failure {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            match code {
                // serialization_failure, deadlock_detected
                "40001" | "40P01" => Failure::Conflict,
                // admin_shutdown, crash_shutdown, cannot_connect_now; class 08: connection
                "57P01" | "57P02" | "57P03" => Failure::ConnectionLost,
                c if c.starts_with("08") => Failure::ConnectionLost,
                // Refusals of a new session, which only connecting raises (none of our
                // statements can): the database not accepting connections (55000, as
                // during a restore or `ALLOW_CONNECTIONS false`), not there (3D000, a
                // failover in progress), credentials refused (class 28, a rotation).
                "55000" | "3D000" => Failure::ConnectionLost,
                c if c.starts_with("28") => Failure::ConnectionLost,
                // query_canceled (statement_timeout), lock_not_available, idle session
                // timeouts, read_only_sql_transaction (a standby after failover); class 53:
                // insufficient resources (too many connections, out of memory, disk full)
                "57014" | "55P03" | "25006" | "57P05" => Failure::Overloaded,
                c if c.starts_with("53") => Failure::Overloaded,
                _ => Failure::Permanent,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::ConnectionLost,
        sqlx::Error::PoolTimedOut => Failure::Overloaded,
        _ => Failure::Permanent,
    }
}

impl Error {
    /// How a failure should be answered; anything but a database error is permanent.
    pub fn failure(&self) -> Failure {
        match self {
            Error::Database(db) => classify(db),
            _ => Failure::Permanent,
        }
    }
}
