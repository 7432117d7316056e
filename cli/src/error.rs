//! [`CliError`], the one error type of `sluicectl`, and its exit codes.

use sqlx::postgres::PgConnectOptions;

/// Exit code: the command did what was asked.
pub const EXIT_OK: i32 = 0;
/// Exit code: refused or failed (invalid transition, not found, unknown kind, timeout,
/// database unreachable).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage or configuration (unknown flag, bad duration, invalid kind name).
pub const EXIT_USAGE: i32 = sluice_common::config::EXIT_BAD_CONFIG;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The database refused the action: not found, wrong state, unknown kind. Nothing changed.
    #[error("{0}")]
    Refused(sluice_common::Error),
    /// The input cannot be right whatever the database holds.
    #[error("{0}")]
    Usage(String),
    /// No connection could be made within the acquire timeout.
    #[error("cannot reach the database{where_}: {detail}")]
    Unreachable {
        /// `host:port/db` when known (never the password), so the operator sees which
        /// database was tried.
        where_: String,
        /// What the driver said.
        detail: String,
    },
    /// The database answered with an error.
    #[error("database error: {0}")]
    Database(String),
    /// `wait-drained` ran out of time; the jobs still held were printed on stdout.
    #[error("not drained after {waited}: {count} job(s) still processing (listed above)")]
    NotDrained {
        /// The `--timeout` that elapsed, as the operator wrote it.
        waited: String,
        /// How many jobs were still `processing`.
        count: usize,
    },
    /// `doctor` found problems; they were printed on stdout (exit 1).
    #[error("doctor found {0} warning(s) (listed above)")]
    Unhealthy(usize),
    /// Printing the result failed (e.g. stdout closed).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The exit code documented in `--help` and the runbooks.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }

    /// Adds which database was tried to an unreachable-database error.
    pub fn with_database(self, describe: &str) -> Self {
        match self {
            CliError::Unreachable { detail, .. } => CliError::Unreachable {
                where_: if describe.is_empty() {
                    String::new()
                } else {
                    format!(" at {describe}")
                },
                detail,
            },
            other => other,
        }
    }
}

impl From<sluice_common::Error> for CliError {
    fn from(err: sluice_common::Error) -> Self {
        use sluice_common::Error as E;
        match err {
            E::NotFound(_) | E::UnknownKind(_) | E::InvalidTransition { .. } => {
                CliError::Refused(err)
            }
            E::Invalid(e) => CliError::Usage(e.to_string()),
            E::Database(e) => from_sqlx(e),
            E::Migrate(sqlx::migrate::MigrateError::Execute(e)) => from_sqlx(e),
            E::Migrate(e) => CliError::Database(format!("migration failed: {e}")),
        }
    }
}

impl From<sqlx::Error> for CliError {
    fn from(err: sqlx::Error) -> Self {
        from_sqlx(err)
    }
}

fn from_sqlx(err: sqlx::Error) -> CliError {
    match err {
        sqlx::Error::PoolTimedOut => CliError::Unreachable {
            where_: String::new(),
            detail: "no connection within the acquire timeout (SLUICE_DB_ACQUIRE_TIMEOUT); \
                     is Postgres up and DATABASE_URL right?"
                .into(),
        },
        sqlx::Error::Io(e) => CliError::Unreachable {
            where_: String::new(),
            detail: e.to_string(),
        },
        sqlx::Error::Tls(e) => CliError::Unreachable {
            where_: String::new(),
            detail: format!("TLS: {e}"),
        },
        other => {
            // undefined_table: the usual first-day mistake, with an obvious fix.
            let hint = match other.as_database_error().and_then(|d| d.code()) {
                Some(code) if code == "42P01" => "; has `sluicectl migrate` run on this database?",
                _ => "",
            };
            CliError::Database(format!("{other}{hint}"))
        }
    }
}

/// The pool only says it timed out; one direct attempt (bounded at 2 s) tells the operator
/// why: connection refused, unknown host, password rejected, a TLS failure (named with its
/// `sslmode` / `sslrootcert`, which then replaces the pool's vaguer words).
pub async fn with_connect_cause(err: CliError, db: &sluice_common::config::DbArgs) -> CliError {
    use sqlx::Connection;
    let CliError::Unreachable { where_, detail } = err else {
        return err;
    };
    let Ok((options, tls)) = sluice_common::db::connect_options(db) else {
        return CliError::Unreachable { where_, detail };
    };
    let attempt = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::PgConnection::connect_with(&options),
    )
    .await;
    let detail = match attempt {
        Ok(Err(e)) => {
            let cause = sluice_common::db::describe_error(&e, &tls);
            if cause.starts_with("tls:") || cause.starts_with("auth:") {
                cause
            } else {
                format!("{detail} ({e})")
            }
        }
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            detail
        }
        Err(_) => format!("{detail} (no answer within 2s)"),
    };
    CliError::Unreachable { where_, detail }
}

/// `host:port/database` of a connection string, without user or password; empty if the
/// string does not parse.
pub fn describe_database(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => String::new(),
    }
}
