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
