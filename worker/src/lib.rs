//! `sluice-worker`: leases, runs and drains jobs. A restart finishes what is running,
//! puts back what cannot finish in time, and leaves queued jobs queued.
//!
//! # Layout
//!
//! - [`config`]: the command line / environment (SPEC.md §2, §5).
//! - [`registry`]: kinds and their handlers and settings; built-ins `sluice.noop` and
//!   `sluice.sleep`; the handlers file. [`http_target`]: HTTP-target kinds.
//! - [`app`]: [`app::Worker::build`], then [`app::Worker::run_until_stopped`], which starts
//!   the services below and runs the drain.
//! - [`producer`]: leases as many jobs as there are free slots, in one statement; wakes on
//!   LISTEN/NOTIFY, a timer for the next scheduled job, and a slow fallback poll.
//! - [`floors`]: where each kind's next lease may start reading the claim index, so
//!   leases stay cheap while a long transaction holds vacuum back.
//! - [`executor`]: runs each job in its own task (panics contained, timeouts enforced).
//! - [`completer`]: writes outcomes in batches, fenced on each lease.
//! - [`listener`]: the one LISTEN connection: wakes the producer, fires a cancelled
//!   job's signal.
//! - [`supervisor`]: runs the services; one that panics or ends early fails the worker
//!   (readiness 503, drain, non-zero exit).
//! - [`test_kinds`]: `sluice.hold`, `sluice.record` and `sluice.bench`, only with `SLUICE_WORKER_TEST_KINDS=on`.
//! - [`maintenance`]: heartbeat (renews long jobs' leases), rescuer (expired leases of any
//!   worker). [`stats`]: queue depth for `/metrics`, from the cheap counters.
//! - [`periodic`]: `[periodic.*]` tables and the service enqueuing their ticks, exactly
//!   one job per tick however many workers run it.
//! - [`cleaner`]: retention, deleting finished jobs past their window, one worker at a time.
//! - [`health`]: `/health/live`, `/health/ready`, `/metrics`. [`metrics`]: the metric set.
//! - [`sd_notify`]: `READY=1` / `STOPPING=1` for systemd `Type=notify`.
//! - [`state`]: what the services share.

pub mod app;
pub mod cleaner;
pub mod completer;
pub mod config;
pub mod executor;
pub mod floors;
pub mod health;
pub mod http_target;
pub mod listener;
pub mod maintenance;
pub mod metrics;
pub mod periodic;
pub mod producer;
pub mod registry;
pub mod sd_notify;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod test_kinds;
