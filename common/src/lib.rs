//! Shared parts of Sluice: what both the API and the worker (and `sluicectl`) stand on.
//!
//! # Layout
//!
//! - [`config`]: settings shared by every binary (database, logging), the duration syntax
//!   (`500ms`, `30s`, `5m`, `7d`, `1m30s`), and the rule that bad config exits 2 with one
//!   line naming the variable.
//! - [`db`]: the connection pool (TLS, statement timeout, acquire timeout), the database
//!   and schema check behind readiness, and the embedded
//!   migrations of `migrations/`.
//! - [`model`]: job states, rows, inputs and their validation, retry backoff.
//! - [`retention`]: how long finished jobs are kept (`SLUICE_RETENTION_*`, per-kind
//!   overrides), read by the worker's cleaner and `sluicectl doctor`.
//! - [`storage`]: every SQL statement Sluice runs, one function each, named for what it
//!   does. Every change a worker makes to a job is fenced on its lease token.
//! - [`client`]: [`JobClient`], the pool-owning handle the binaries use.
//! - [`metrics`]: the Prometheus registry (with build info) and the `/metrics` route.
//! - [`listen`]: LISTEN/NOTIFY wakeups that survive a Postgres restart.
//! - [`telemetry`]: logs (JSON or pretty), OTLP trace export, `traceparent` propagation.
//! - [`sd_notify`]: `READY=1` / `STOPPING=1` to systemd (`Type=notify`), for both services.
//! - [`shutdown`]: SIGTERM/SIGINT as a soft and a hard cancellation token.
//! - [`error`]: the crate's one error type.

pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod retention;
pub mod sd_notify;
pub mod shutdown;
pub mod storage;
pub mod telemetry;

pub use client::JobClient;
pub use error::{Error, Result};
pub use model::{Job, JobState, NewJob};
