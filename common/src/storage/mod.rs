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
//! - [`flow`]: snoozing a leased job, and the claim of kinds with a global concurrency or
//!   rate limit (slot rows, see migration 6).
//! - [`periodic`]: periodic jobs: one job per tick whichever workers enqueue it, and the
//!   definitions the workers recorded (`GET /v1/periodic`).
//! - [`admin`]: pause, resume, release, cancel, retry, each with its audit row.
//! - [`read`]: jobs, kinds, the audit trail, the database clock.
//! - [`ui`]: the operator web UI's overview counts and chart, bulk retry/cancel by
//!   filter (one audited transaction each), and sign-in sessions.
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
//!                                             │ lease expired (rescue): queued (or paused), after the kind's backoff | failed
//!                                             │ release (operator): queued (or paused)
//!                                             │ snooze (handler): queued (or paused) at a later run_at, attempt given back
//!  cancel: queued | paused | processing ──► cancelled   (from processing: `sluice_cancel` tells the worker)
//!  retry:  failed | cancelled ──► queued (or paused), attempts reset
//! ```
//!
//! Every arrow is one SQL statement. An arrow out of `processing` taken by a worker names
//! the lease token in its `WHERE`; one taken by an operator or the rescuer clears the token,
//! which fences off the old lease's late answer. Tokens are 64 random bits per lease
//! (migration 2), so no crash or failover can hand the same value out again.
//!
//! A worker's answers for one batch of jobs (complete, fail, interrupt) commit together,
//! in one transaction, and a job counts as the worker's (heartbeated) until they have.
//! A job whose outcome failed or was put back wakes listeners through the triggers; one
//! that reached a terminal state (completed, failed by a worker or the rescuer,
//! cancelled) is announced on [`DONE_CHANNEL`].

mod admin;
mod doctor;
mod enqueue;
mod flow;
mod lease;
mod periodic;
mod read;
mod retention;
mod stats;
mod ui;

pub use admin::*;
pub use doctor::*;
pub use enqueue::*;
pub use flow::*;
pub use lease::*;
pub use periodic::*;
pub use read::*;
pub use retention::*;
pub use stats::*;
pub use ui::*;

/// Channel the workers LISTEN on for runnable jobs (sent by the migration's triggers).
pub const JOBS_CHANNEL: &str = "sluice_jobs";
/// Channel carrying `<id>:<lease token>` of a processing job that was cancelled (sent by
/// migration 2's trigger), so the worker holding that lease stops its handler at once.
pub const CANCEL_CHANNEL: &str = "sluice_cancel";
/// Channel carrying comma-separated ids of jobs that reached a terminal state, for
/// long-polling readers (`GET /v1/jobs/{id}?wait=`).
pub const DONE_CHANNEL: &str = "sluice_done";
/// Most jobs accepted by one batch enqueue (SPEC.md §4).
pub const MAX_BATCH: usize = 1000;
/// Ids per `sluice_done` notification (and so jobs per answering statement): NOTIFY payloads must stay under 8000 bytes, and
/// an id is at most 20 bytes with its comma.
pub const DONE_IDS_PER_STATEMENT: usize = 350;

/// Advisory-lock class (the first key of the two-key form, a lock space of its own apart
/// from sqlx's one-key migration lock) of "a kind's pause state"; the second key is
/// `hashtext(kind)`. Writers that pick `queued` vs `paused` take it shared, pause/resume
/// exclusive, before touching the kind's `job_kinds` row: see [`REQUEUE_STATE`].
const KIND_GATE_CLASS: i32 = 1_936_485_732;

/// SQL for "the state a job goes back to when it may run again": `paused` while its kind
/// is paused through the API/CLI, else `queued`.
///
/// Serialised against pause/resume: `FOR SHARE` on the kind's row waits for a pause or
/// resume in flight (which holds the row from its first statement to its commit) and then,
/// in READ COMMITTED, re-reads the newest version of the row, so a writer never writes the
/// answer of a snapshot taken before that commit. A writer that locked first makes the
/// pause/resume wait for it, and the pause/resume's later `UPDATE jobs` statement (a new
/// snapshot) then sees the writer's row and moves it. A kind with no `job_kinds` row yields
/// `queued` with no lock: a pause creating that row concurrently may miss such a job, which
/// is harmless because the lease refuses every job of a paused kind whatever its state.
///
/// Share row locks let a new sharer in beside the current ones, so under a steady stream
/// of overlapping writers a pause waiting for the row could wait for ever. The shared
/// advisory lock taken first (class [`KIND_GATE_CLASS`]) is queued fairly: once a pause
/// waits for it exclusively, new writers queue behind the pause, the writers already in
/// finish, and the pause gets the row.
///
/// A scalar subquery, because `FOR SHARE` may not sit on the nullable side of a join.
const REQUEUE_STATE: &str =
    "CASE WHEN coalesce((SELECT p.paused FROM job_kinds p WHERE p.kind = j.kind \
     AND pg_advisory_xact_lock_shared(1936485732, hashtext(p.kind)) IS NOT NULL FOR SHARE), false) \
     THEN 'paused' ELSE 'queued' END";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requeue_state_takes_the_kind_gate_of_its_own_class() {
        // REQUEUE_STATE is a literal (it is spliced into other literals); this keeps its
        // copy of the class in step with the constant pause/resume lock.
        assert!(
            REQUEUE_STATE.contains(&format!("pg_advisory_xact_lock_shared({KIND_GATE_CLASS}, "))
        );
    }
}
