//! The database side of tests.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, PgPool};

/// The URL of this test's own database: the server (and query string, e.g. TLS settings)
/// of `DATABASE_URL`, with the database `#[sqlx::test]` created for the test. Binaries
/// under test are given this URL, so they see exactly the rows the test sees.
pub fn url_of(pool: &PgPool) -> String {
    url_of_options(&pool.connect_options())
}

/// [`url_of`] from connect options (what `#[sqlx::test]` hands a test that asks for them).
pub fn url_of_options(opts: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let db = opts.get_database().expect("the test database has a name");
    let (main, query) = match base.split_once('?') {
        Some((m, q)) => (m.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let scheme_end = main.find("://").expect("DATABASE_URL has a scheme") + 3;
    let server = match main[scheme_end..].find('/') {
        Some(slash) => &main[..scheme_end + slash],
        None => main.as_str(),
    };
    format!("{server}/{db}{query}")
}

/// A pool of 4 on the test's database (what `#[sqlx::test]` hands over as options).
pub async fn pool_for(opts: &PgConnectOptions) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone())
        .await
        .unwrap()
}

/// Polls `sql` (a query returning one bool) until it is true; panics with the query after
/// `limit`.
pub async fn wait_until(pool: &PgPool, sql: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let ok: bool = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "condition never held within {limit:?}: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until job `id` is in `state` (`queued`, `processing`, `completed`, ...).
pub async fn wait_state(pool: &PgPool, id: i64, state: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap();
        if now.as_deref() == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never {state} within {limit:?} (it is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Holds Postgres advisory lock `key` on a connection of its own: a `sluice.hold` job with
/// `{"key": key}` runs until [`HeldLock::release`] (or the drop of this value, which
/// closes the connection and so frees the lock).
#[derive(Debug)]
pub struct HeldLock {
    /// The session holding the lock; `None` once released.
    conn: Option<PgConnection>,
    /// The lock, to release it by name.
    key: i64,
}

impl HeldLock {
    /// Takes the lock (waiting for it if someone else holds it).
    pub async fn take(opts: &PgConnectOptions, key: i64) -> HeldLock {
        let mut conn = PgConnection::connect_with(opts).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
        HeldLock {
            conn: Some(conn),
            key,
        }
    }

    /// Lets the held jobs finish.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
}

/// A Postgres cluster of the test's own (`scripts/pg.sh` with a private data folder and
/// port), for tests that stop, restart or reconfigure the database: never the shared one.
/// Destroyed on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    /// Its data folder, unique per test run.
    dir: PathBuf,
    /// Its port, free when it was picked.
    port: String,
    /// `postgres://…/sluice` of the running cluster.
    pub url: String,
}

/// The repository's cluster script, found from this crate's folder so tests run from any
/// working directory.
fn pg_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh")
}

impl PrivateCluster {
    /// Creates and starts the cluster; `name` only makes its folder recognisable.
    pub fn start(name: &str) -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!(
            "sluice-pgtest-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut c = PrivateCluster {
            dir,
            port: crate::free_port().to_string(),
            url: String::new(),
        };
        c.url = c.pg("start");
        c
    }

    /// The port it listens on.
    pub fn port(&self) -> &str {
        &self.port
    }

    /// Runs `scripts/pg.sh CMD` (start, stop, ...) for this cluster; returns its stdout.
    pub fn pg(&self, cmd: &str) -> String {
        let out = Command::new(pg_script())
            .arg(cmd)
            .env("SLUICE_PGDATA", &self.dir)
            .env("SLUICE_PGPORT", &self.port)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A small pool on the cluster (a new one after a restart: the old one's
    /// connections are gone).
    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .unwrap()
    }

    /// [`PrivateCluster::pool`], migrated.
    pub async fn migrated_pool(&self) -> PgPool {
        let pool = self.pool().await;
        sluice_common::db::migrate(&pool).await.unwrap();
        pool
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(pg_script())
            .arg("destroy")
            .env("SLUICE_PGDATA", &self.dir)
            .env("SLUICE_PGPORT", &self.port)
            .output();
    }
}
