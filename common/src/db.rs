//! The connection pool (with TLS), migrations, and the database check that readiness and
//! start-up are built on.
//!
//! # TLS
//!
//! `DATABASE_URL` takes libpq's `sslmode` (`disable`, `allow`, `prefer` (the default),
//! `require`, `verify-ca`, `verify-full`) and `sslrootcert`, parsed by sqlx and handled by
//! rustls:
//! - `prefer` tries TLS and falls back to plain text when the server has none; `require`
//!   insists on TLS but, as in libpq, does not check the certificate — unless
//!   `sslrootcert` is given, in which case it verifies the chain like `verify-ca` (libpq's
//!   rule, applied here because sqlx does not).
//! - `verify-ca` checks the chain against the trust anchors, `verify-full` also the host
//!   name (a `127.0.0.1` host is matched against IP SANs). Known deviation: with sqlx 0.8.6
//!   and rustls >= 0.23.24, `verify-ca` *also* checks the host name (sqlx's
//!   NoHostnameTlsVerifier misses rustls' `NotValidForNameContext`, launchbadge/sqlx#3793,
//!   fixed for sqlx 0.9): it fails closed, with `certificate not valid for name …` in the
//!   error. `scripts/test.d/30-tls.sh` pins this so an upgrade that fixes it is noticed.
//! - Trust anchors are the Mozilla roots built in plus the certificates of `sslrootcert`
//!   (sqlx adds the file to the roots rather than replacing them, which differs from libpq
//!   only in also trusting public CAs). `sslrootcert=system` is not supported.
//!
//! # The database check
//!
//! [`DatabaseCheck`] asks for the newest applied migration in one query and compares it
//! with the newest one embedded in this binary ([`required_schema_version`]). Its answer
//! ([`DbStatus`]) is what the API's readiness reports; it logs only when the answer
//! changes, so a database that stays down for an hour is one warning, not 1800.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::DbArgs;
use crate::error::{Error, Result};

/// The migrations of `migrations/`, embedded in every binary so `sluicectl migrate` needs
/// no files beside it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The schema version this binary needs: the newest migration embedded in it. A database
/// at a newer version is fine (a rolling deploy migrates before old pods are gone).
pub fn required_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// TLS as the connection string asks for it, named in every connection error so an
/// operator sees which setting to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The effective `sslmode` (`require` with `sslrootcert` reads `verify-ca`).
    pub mode: &'static str,
    /// `sslrootcert` from the URL or `PGSSLROOTCERT`.
    pub root_cert: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: "prefer",
            root_cert: None,
        }
    }
}

impl fmt::Display for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)?;
        if let Some(root) = &self.root_cert {
            write!(f, ", sslrootcert={root}")?;
        }
        Ok(())
    }
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `sslrootcert` (or one of sqlx's spellings of it) from the URL, else `PGSSLROOTCERT`,
/// the same precedence sqlx applies.
fn root_cert_of(database_url: &str) -> Option<String> {
    let from_url = url::Url::parse(database_url).ok().and_then(|u| {
        u.query_pairs()
            .filter(|(k, _)| matches!(&**k, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(_, v)| v.into_owned())
            .last()
    });
    from_url.or_else(|| std::env::var("PGSSLROOTCERT").ok())
}

/// Makes ring the process's rustls crypto provider, once. Two providers are compiled in
/// (sqlx's rustls uses ring, the OTLP exporter's reqwest 0.13 brings aws-lc-rs), and with
/// both present rustls refuses to guess: the first TLS handshake that relies on the
/// process default would panic. Called before any pool or exporter is built; idempotent.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Parses `DATABASE_URL` and checks what can be checked without a network: the URL
/// parses, `sslrootcert` names a readable PEM file. Errors are one line starting with
/// `DATABASE_URL` and never contain the password.
pub fn connect_options(args: &DbArgs) -> Result<(PgConnectOptions, TlsSettings), String> {
    install_tls_provider();
    let mut options: PgConnectOptions = args
        .database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid Postgres connection string: {e}"))?;
    let root_cert = root_cert_of(&args.database_url);
    if let Some(path) = &root_cert {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("DATABASE_URL: sslrootcert={path} cannot be read: {e}"))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "DATABASE_URL: sslrootcert={path} holds no PEM certificate"
            ));
        }
    }
    if matches!(options.get_ssl_mode(), PgSslMode::Require) && root_cert.is_some() {
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    let tls = TlsSettings {
        mode: mode_name(options.get_ssl_mode()),
        root_cert,
    };
    Ok((options, tls))
}

/// A pooled connection idle at least this long is pinged before it is handed out.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Builds the pool without connecting: a process can start (and report not-ready) while
/// Postgres is still coming up, instead of crash-looping.
///
/// Every connection gets `statement_timeout` (no query outlives a drain budget) and an
/// `application_name`, so `pg_stat_activity` shows which process holds what.
pub fn connect_lazy(args: &DbArgs, application_name: &str, default_max: u32) -> Result<PgPool> {
    let (options, _) =
        connect_options(args).map_err(|e| Error::Database(sqlx::Error::Configuration(e.into())))?;
    let options = options
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
        // A connection that sat idle may have died with a failover: test it before use.
        // One in steady use is not pinged on every acquire (that was a round trip per
        // statement batch); sqlx pings each connection as it returns to the pool anyway,
        // so one broken mid-use never goes back in.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options);
    Ok(pool)
}

/// What the latest database check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbStatus {
    /// Reachable, and the schema is at least [`required_schema_version`].
    Ready,
    /// No connection or no answer. The reason starts with its category: `tls: …`,
    /// `auth: …`, `connect: …`, `query: …`.
    Unavailable(String),
    /// Reachable, but no migration was ever applied: run `sluicectl migrate`.
    SchemaMissing {
        /// The version this binary needs.
        need: i64,
    },
    /// Reachable, but older than this binary: run this release's `sluicectl migrate`.
    SchemaOutdated {
        /// The newest version applied.
        have: i64,
        /// The version this binary needs.
        need: i64,
    },
}

impl DbStatus {
    /// The readiness `status` word: `ready`, `database_unavailable`, `schema_missing`,
    /// `schema_outdated`.
    pub fn status(&self) -> &'static str {
        match self {
            DbStatus::Ready => "ready",
            DbStatus::Unavailable(_) => "database_unavailable",
            DbStatus::SchemaMissing { .. } => "schema_missing",
            DbStatus::SchemaOutdated { .. } => "schema_outdated",
        }
    }

    /// Why it is not ready, for the readiness body and the log; `None` when ready.
    pub fn reason(&self) -> Option<String> {
        match self {
            DbStatus::Ready => None,
            DbStatus::Unavailable(reason) => Some(reason.clone()),
            DbStatus::SchemaMissing { need } => Some(format!(
                "the database has no Sluice schema; run `sluicectl migrate` (this binary needs schema version {need})"
            )),
            DbStatus::SchemaOutdated { have, need } => Some(format!(
                "the database schema is at version {have}, this binary needs {need}; run this release's `sluicectl migrate`"
            )),
        }
    }
}

/// Turns a connection or query error into a one-line reason starting with its category,
/// naming the TLS settings when TLS is involved.
pub fn describe_error(err: &sqlx::Error, tls: &TlsSettings) -> String {
    match err {
        sqlx::Error::Tls(e) => format!("tls: {e} ({tls})"),
        sqlx::Error::Io(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls_err) => format!("tls: handshake failed: {tls_err} ({tls})"),
            None => format!("connect: {e}"),
        },
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_authorization_specification (pg_hba.conf), invalid_password
            Some("28000") | Some("28P01") => format!("auth: {} ({tls})", db.message()),
            _ => format!("query: {}", db.message()),
        },
        sqlx::Error::PoolTimedOut => {
            "connect: no connection within SLUICE_DB_ACQUIRE_TIMEOUT".into()
        }
        other => format!("query: {other}"),
    }
}

/// The line logged for a status: `DATABASE_URL: TLS handshake failed (sslmode=…): …` for a
/// TLS failure, so the setting to fix is named first.
fn log_line(status: &DbStatus) -> String {
    match status {
        DbStatus::Unavailable(reason) => match reason.strip_prefix("tls: ") {
            Some(rest) => format!("DATABASE_URL: TLS failed: {rest}"),
            None => format!("DATABASE_URL: database unavailable: {reason}"),
        },
        other => format!("DATABASE_URL: {}", other.reason().unwrap_or_default()),
    }
}

/// One database check after another, remembering the last answer so each change is
/// logged once.
#[derive(Debug)]
pub struct DatabaseCheck {
    /// The pool whose connect options the check uses.
    pool: PgPool,
    /// The check's own connection, made like the pool's but outside it: a pool busy with
    /// requests (or a pool of one) is load, not an outage. Dropped after any failure,
    /// since its state is then unknown.
    conn: Option<sqlx::PgConnection>,
    /// Named in TLS errors.
    tls: TlsSettings,
    /// The previous answer; `None` before the first check.
    last: Option<DbStatus>,
    /// How long one check may take before it counts as unavailable.
    timeout: Duration,
}

impl DatabaseCheck {
    /// A check of `pool`, whose connection string asked for `tls`.
    pub fn new(pool: PgPool, tls: TlsSettings) -> DatabaseCheck {
        DatabaseCheck {
            pool,
            conn: None,
            tls,
            last: None,
            timeout: Duration::from_secs(2),
        }
    }

    /// Checks once, logs if the answer changed, returns it.
    pub async fn check(&mut self) -> DbStatus {
        let status = self.probe().await;
        if !matches!(
            status,
            DbStatus::Ready | DbStatus::SchemaMissing { .. } | DbStatus::SchemaOutdated { .. }
        ) {
            self.conn = None;
        }
        if self.last.as_ref() != Some(&status) {
            if status == DbStatus::Ready {
                tracing::info!(
                    schema_version = required_schema_version(),
                    "database reachable and migrated"
                );
            } else {
                tracing::warn!(
                    status = status.status(),
                    reason = status.reason().unwrap_or_default(),
                    "{}",
                    log_line(&status)
                );
            }
            self.last = Some(status.clone());
        }
        status
    }

    async fn probe(&mut self) -> DbStatus {
        let need = required_schema_version();
        let options = self.pool.connect_options();
        let conn = &mut self.conn;
        let read = async {
            if conn.is_none() {
                *conn = Some(sqlx::PgConnection::connect_with(&options).await?);
            }
            match conn.as_mut() {
                Some(c) => crate::storage::read_schema_version(c).await,
                None => Ok(None),
            }
        };
        let err = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(Some(have))) if have >= need => return DbStatus::Ready,
            Ok(Ok(Some(have))) => return DbStatus::SchemaOutdated { have, need },
            Ok(Ok(None)) => return DbStatus::SchemaMissing { need },
            Ok(Err(Error::Database(e))) => e,
            Ok(Err(other)) => return DbStatus::Unavailable(format!("query: {other}")),
            Err(_) => sqlx::Error::PoolTimedOut,
        };
        if let Some(db) = err.as_database_error() {
            if db.code().as_deref() == Some("42P01") {
                return DbStatus::SchemaMissing { need };
            }
        }
        if matches!(err, sqlx::Error::PoolTimedOut) {
            // The pool only says it waited; one direct attempt says why (refused, unknown
            // host, TLS, password), which is what the operator needs.
            return DbStatus::Unavailable(self.direct_connect_cause().await);
        }
        DbStatus::Unavailable(describe_error(&err, &self.tls))
    }

    async fn direct_connect_cause(&self) -> String {
        let options = self.pool.connect_options();
        match tokio::time::timeout(self.timeout, sqlx::PgConnection::connect_with(&options)).await {
            Ok(Err(e)) => describe_error(&e, &self.tls),
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                "query: no answer within 2s (the pool is busy or the server overloaded)".into()
            }
            Err(_) => format!(
                "connect: no answer from {}:{} within 2s",
                options.get_host(),
                options.get_port()
            ),
        }
    }
}

/// Waits until the database answers and carries this binary's schema, retrying with
/// capped backoff and logging each change of reason once, or until `shutdown` fires (then
/// returns `false`).
pub async fn wait_for_database(pool: &PgPool, args: &DbArgs, shutdown: &CancellationToken) -> bool {
    let tls = connect_options(args).map(|(_, t)| t).unwrap_or_default();
    let mut check = DatabaseCheck::new(pool.clone(), tls);
    let mut delay = Duration::from_millis(100);
    loop {
        if check.check().await == DbStatus::Ready {
            return true;
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
    // Fresh statistics for the tables the hot statements read, so that the first backlog
    // after a deployment (or after migrations that built indexes) is not planned from
    // defaults. An autovacuum working on `jobs` holds the lock ANALYZE needs: then it is
    // gathering statistics already, and migrating must not wait on it or fail.
    sqlx::query("SET lock_timeout = '2s'")
        .execute(&mut *conn)
        .await?;
    match sqlx::query("ANALYZE jobs, job_kinds")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            tracing::warn!(
                "ANALYZE after migrating waited too long for a lock (autovacuum?); skipped"
            );
        }
        Err(e) => return Err(e.into()),
    }
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        db: DbArgs,
    }

    fn args(url: &str) -> DbArgs {
        Probe::parse_from(["x", "--database-url", url]).db
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        let dir = std::env::temp_dir().join(format!("sluice-db-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let url = format!(
            "postgres://u@localhost/db?sslmode=require&sslrootcert={}",
            ca.display()
        );
        let (options, tls) = connect_options(&args(&url)).unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyCa));
        assert_eq!(
            tls.to_string(),
            format!("sslmode=verify-ca, sslrootcert={}", ca.display())
        );
        let (options, tls) =
            connect_options(&args("postgres://u@localhost/db?sslmode=require")).unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
        assert_eq!(tls.to_string(), "sslmode=require");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_root_certificate_is_a_configuration_error_naming_it() {
        let err = connect_options(&args(
            "postgres://u:pw@localhost/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ))
        .unwrap_err();
        assert!(err.starts_with("DATABASE_URL"), "{err}");
        assert!(err.contains("sslrootcert=/nonexistent/ca.pem"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn the_required_schema_version_is_the_newest_embedded_migration() {
        assert!(required_schema_version() > 0);
        assert!(MIGRATOR
            .iter()
            .all(|m| m.version <= required_schema_version()));
    }
}
