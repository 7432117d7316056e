//! What every Sluice test suite shares, so that a fix to how tests wait, spawn or find
//! their database is made once.
//!
//! # Layout
//! - [`db`]: the URL of the per-test database `#[sqlx::test]` made, waits on a SQL
//!   condition, a private Postgres cluster for tests that stop the database, and an
//!   advisory lock held on its own connection (the barrier `sluice.hold` jobs wait on).
//! - [`process`]: a real binary as a child process whose every output line is kept, with
//!   bounded waits for a log line, an HTTP status or the exit, and real signals.
//! - [`jobs`]: jobs through the library client (enqueue, lease) for tests that stand in
//!   for the API or a worker.
//! - [`cli`]: the captured result of a CLI run (`sluicectl`).
//!
//! Every wait here is bounded and polls for an event; none sleeps for a fixed time and
//! then looks. A wait that runs out panics with what it was waiting for and the process's
//! output, which is the failure message a test wants.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

pub mod cli;
pub mod db;
pub mod jobs;
pub mod process;

pub use db::{pool_for, url_of, url_of_options, wait_state, wait_until, HeldLock, PrivateCluster};
pub use process::{free_port, temp_path, write_temp, Process};
