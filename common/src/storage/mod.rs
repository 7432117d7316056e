//! All of Sluice's SQL, one function per statement (or per short transaction), named for
//! what it does.
//!
//! Rules every function here keeps:
//! - A worker's answer about a job (complete, fail, interrupt, heartbeat) is one statement
//!   whose `WHERE` proves the lease is still the caller's: `state = 'processing' AND
//!   lease_token = <token handed out by the lease>`. A job that an operator re-queued, the
//!   rescuer reclaimed, or another worker re-leased is never touched by a late answer.
//! - Hot-path statements take many jobs at once (arrays bound as parameters and `unnest`ed),
//!   so one round trip and one commit serve a whole batch.
//! - `state = 'queued'` and `state = 'processing'` are written as literals where they
//!   select rows, so the planner can use the partial indexes of the migration. (Where a
//!   batch is found by primary key, as in `complete_jobs`, the fence is written
//!   `(state = 'processing') IS TRUE` so that no state index can be preferred to it.)
//! - Manual actions (pause, resume, release, cancel, retry) write their `audit_log` row in
//!   the same transaction as the change: there is no change without its record.
//!
//! # Layout
//!
//! - [`enqueue`]: `insert_job`, `insert_jobs` (batches), idempotency look-ups.
//! - [`lease`]: the worker's hot path (lease, complete, fail, interrupt, heartbeat) and its
//!   housekeeping (rescue, next wake-up, kind registration, deleting old jobs).
//! - [`admin`]: pause, resume, release, cancel, retry, each with its audit row.
//! - [`read`]: jobs, kinds, the audit trail, the database clock.
//! - [`stats`]: counts by kind and state that cost the same with 2 M finished rows as with
//!   none (live states from their indexes, finished ones from trigger-kept counters).
//! - [`retention`]: deleting finished jobs past their window, in small batches, by one
//!   worker at a time (`sluice-worker`'s cleaner).
//! - [`doctor`]: what `sluicectl doctor` reads: sizes, dead tuples, vacuum, the oldest
//!   transaction holding back vacuum, expired leases, the NOTIFY queue.
//!
//! Everything is re-exported here, so callers write `storage::lease_jobs`.
//!
//! # The job state machine
//!
//! ```text
//!            enqueue                lease               complete
//!  (new) ──────────────► queued ───────────► processing ──────────► completed
//!    │  kind paused        ▲ │                │  │  │  fail, attempts left / interrupt
//!    └──────► paused ◄─────┘ │ pause          │  │  └──────────────────────► queued (or paused)
//!              │   resume    │                │  │ fail, permanent or out of attempts
//!              └─────────────┘                │  └─────────────────────────► failed
//!                                             │ lease expired (rescue): queued (or paused) | failed
//!                                             │ release (operator): queued (or paused)
//!  cancel: queued | paused | processing ──► cancelled
//!  retry:  failed | cancelled ──► queued (or paused), attempts reset
//! ```
//!
//! Every arrow is one SQL statement. An arrow out of `processing` taken by a worker names
//! the lease token in its `WHERE`; one taken by an operator or the rescuer clears the token,
//! which fences off the old lease's late answer.

mod admin;
mod doctor;
mod enqueue;
mod lease;
mod read;
mod retention;
mod stats;

pub use admin::*;
pub use doctor::*;
pub use enqueue::*;
pub use lease::*;
pub use read::*;
pub use retention::*;
pub use stats::*;

/// Channel the workers LISTEN on for runnable jobs (sent by the migration's triggers).
pub const JOBS_CHANNEL: &str = "sluice_jobs";
/// Channel carrying comma-separated ids of jobs that reached a terminal state, for
/// long-polling readers (`GET /v1/jobs/{id}?wait=`).
pub const DONE_CHANNEL: &str = "sluice_done";
/// Most jobs accepted by one batch enqueue (SPEC.md §4).
pub const MAX_BATCH: usize = 1000;
/// Ids per `sluice_done` notification: NOTIFY payloads must stay under 8000 bytes, and
/// an id is at most 20 bytes with its comma.
const DONE_IDS_PER_STATEMENT: usize = 350;

/// SQL for "the state a job goes back to when it may run again": `paused` while its kind
/// is paused through the API/CLI, else `queued`.
const REQUEUE_STATE: &str =
    "CASE WHEN EXISTS (SELECT 1 FROM job_kinds p WHERE p.kind = j.kind AND p.paused) THEN 'paused' ELSE 'queued' END";
