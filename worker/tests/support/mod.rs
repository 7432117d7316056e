//! Test harness: the real `sluice-worker` binary as a child process against a per-test
//! database. The general parts (per-test URL, captured child processes, bounded waits, a
//! private cluster, a held advisory lock) are `sluice-test-support`'s; this adds what is
//! the worker's own.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::{
    ops::{Deref, DerefMut},
    process::Command,
    time::Duration,
};

pub use sluice_test_support::{
    free_port, pool_for, temp_path, url_of_options as url_of, wait_state, wait_until, write_temp,
    HeldLock, PrivateCluster, Process,
};
use sqlx::PgPool;

/// A running worker process (a [`Process`] with the port of its metrics and health
/// server).
pub struct Worker {
    /// The process, its output kept.
    pub process: Process,
    /// Where `/metrics` and `/health/*` are served.
    pub port: u16,
}

impl Deref for Worker {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Worker {
    /// Starts `sluice-worker` on `db_url` with a clean environment, JSON logs, a fast
    /// rescuer and `envs` on top.
    pub fn start(db_url: &str, envs: &[(&str, &str)]) -> Worker {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("SLUICE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("SLUICE_WORKER_RESCUE_INTERVAL", "300ms");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Worker {
            process: Process::spawn(cmd),
            port,
        }
    }

    /// The suffix of its identity (`host:pid`), as `leased_by` shows it.
    pub fn identity_suffix(&self) -> String {
        format!(":{}", self.child.id())
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/health/ready", self.port);
        self.process
            .wait_http(&url, 200, None, Duration::from_secs(20))
            .await;
    }
}

/// Waits until the worker's `/health/ready` answers `status` with exactly `body`.
pub async fn wait_ready_status(w: &mut Worker, status: u16, body: &str, limit: Duration) {
    let url = format!("http://127.0.0.1:{}/health/ready", w.port);
    w.process.wait_http(&url, status, Some(body), limit).await;
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
