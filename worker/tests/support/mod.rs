//! Test harness: the real `sluice-worker` binary as a child process against a per-test
//! database, with helpers that wait for events (rows, readiness, log lines) with a
//! deadline instead of sleeping.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{postgres::PgConnectOptions, PgPool};

/// A URL for the per-test database `sqlx::test` created.
pub fn url_of(opts: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (prefix, _) = base.rsplit_once('/').expect("url has a database");
    format!("{prefix}/{}", opts.get_database().expect("database name"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running worker process.
pub struct Worker {
    pub child: Child,
    pub port: u16,
    /// Everything it printed (stdout and stderr), for assertions and for failure messages.
    pub log: Arc<Mutex<String>>,
}

impl Worker {
    pub fn start(db_url: &str, envs: &[(&str, &str)]) -> Worker {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("SLUICE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("SLUICE_WORKER_RESCUE_INTERVAL", "300ms")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sluice-worker");
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Worker { child, port, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn identity_suffix(&self) -> String {
        format!(":{}", self.child.id())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: libc::kill on our own child's pid.
        let rc = unsafe_kill(self.pid(), sig);
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/health/ready", self.port);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("worker exited early with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "worker never became ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit, failing after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {limit:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    unsafe { libc::kill(pid, sig) }
}

/// Polls `sql` (a query returning one bool) until it is true.
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

pub async fn insert(pool: &PgPool, kind: &str, payload: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO jobs (kind, payload) VALUES ($1, $2::jsonb) RETURNING id")
        .bind(kind)
        .bind(payload)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn state(pool: &PgPool, id: i64) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT state, attempts, leased_by FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}-{name}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// Holds Postgres advisory lock `key` on a connection of its own: a `sluice.hold` job with
/// `{"key": key}` runs until [`HeldLock::release`] (or the drop of this value).
pub struct HeldLock {
    conn: Option<sqlx::PgConnection>,
    key: i64,
}

impl HeldLock {
    pub async fn take(opts: &PgConnectOptions, key: i64) -> HeldLock {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(opts).await.unwrap();
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
        use sqlx::Connection;
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

/// Waits until `/health/ready` answers `status`, failing after `limit`.
pub async fn wait_ready_status(w: &Worker, status: u16, body: &str, limit: Duration) {
    let url = format!("http://127.0.0.1:{}/health/ready", w.port);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = client
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
        {
            if r.status() == status && r.text().await.unwrap_or_default() == body {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "readiness never answered {status} {body} within {limit:?}: {}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Postgres cluster of the test's own (via `scripts/pg.sh` with a private data folder
/// and port), for tests that stop the database: never the shared one.
pub struct PrivateCluster {
    dir: std::path::PathBuf,
    port: String,
    pub url: String,
}

impl PrivateCluster {
    pub fn start(name: &str) -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!(
            "sluice-pgtest-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut c = PrivateCluster {
            dir,
            port: free_port().to_string(),
            url: String::new(),
        };
        c.url = c.pg("start");
        c
    }

    pub fn pg(&self, cmd: &str) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh"))
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

    pub async fn migrated_pool(&self) -> PgPool {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .unwrap();
        sluice_common::db::migrate(&pool).await.unwrap();
        pool
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh"))
            .arg("destroy")
            .env("SLUICE_PGDATA", &self.dir)
            .env("SLUICE_PGPORT", &self.port)
            .output();
    }
}
