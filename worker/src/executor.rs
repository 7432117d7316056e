//! The executor: runs each leased job in its own task.
//!
//! The handler runs in a task of its own so a panic is contained (it becomes a retryable
//! error) and so it can be aborted: by the drain when it ignores its shutdown token, and
//! a short grace after its lease was revoked (the job was cancelled, or the lease was
//! taken away), so a cancelled job's slot frees up whatever its handler does. The kind's
//! timeout turns an over-long attempt into a retryable error.
//!
//! The slot is given back once the outcome is queued for the completer (not once it is
//! written: the completer batches writes, and the producer should not wait for them to
//! lease the next job). The channel is bounded, so when the completer cannot write (the
//! database is down) executors wait with their slots held instead of piling up answers.
//! The job stays in the running set, and so keeps being heartbeated, until the completer
//! has committed its outcome.

use std::{sync::Arc, time::Duration, time::Instant};

use sluice_common::model::{Lease, LeasedJob};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::registry::{JobContext, JobError};
use crate::state::{Outcome, Running, Shared};

/// How long a handler whose lease was revoked may take to notice its signal before its
/// task is aborted (SPEC.md §5: a cancelled job's signal fires within a second; this is
/// the backstop for a handler that does not look at it).
const REVOKE_GRACE: Duration = Duration::from_millis(500);

/// How an attempt's task ended.
enum Ended {
    Joined(Result<Result<(), JobError>, tokio::task::JoinError>),
    TimedOut(Duration),
    Revoked,
}

/// Starts `job` on `tracker`, holding `permit` until its outcome is queued.
pub fn spawn_job(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    job: LeasedJob,
    permit: OwnedSemaphorePermit,
) {
    let lease = Lease {
        job_id: job.id,
        token: job.token,
    };
    let Some(kind) = shared.registry.get(&job.kind).cloned() else {
        // The lease query only asks for registered kinds; this cannot happen, but if it
        // did, give the job back rather than hold it until its lease expires.
        let outcome = Outcome {
            lease,
            kind: job.kind.clone(),
            attempt: job.attempts,
            result: Err(JobError::Interrupted(format!(
                "kind {} is not registered here",
                job.kind
            ))),
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            let _ = shared.outcomes.send(outcome).await;
            drop(permit);
        });
        return;
    };
    // A job the producer held in its prefetch buffer is in the running set already: keep
    // its tokens, so a cancellation (or a lost lease) seen while it waited stops it.
    let held = shared
        .lock_running()
        .get(&job.id)
        .filter(|r| r.lease.token == lease.token)
        .map(|r| (r.cancel.clone(), r.revoked.clone(), r.renewed_at));
    let (cancel, revoked, renewed_at) = held.unwrap_or_else(|| {
        (
            shared.handler_cancel.child_token(),
            CancellationToken::new(),
            Instant::now(),
        )
    });
    // A consumer span (OpenTelemetry messaging conventions) whose parent is the server span
    // of the API request that enqueued the job, stored with it as its `traceparent`.
    let span = tracing::info_span!(
        "job",
        otel.name = format!("process {}", job.kind),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "sluice",
        messaging.operation.type = "process",
        messaging.destination.name = %job.kind,
        messaging.message.id = job.id,
        job.id = job.id,
        job.kind = %job.kind,
        job.attempt = job.attempts,
    );
    if let Some(tp) = job.traceparent.as_deref() {
        sluice_common::telemetry::set_remote_parent(&span, tp);
    }
    let ctx = JobContext {
        id: job.id,
        kind: job.kind.clone(),
        attempt: job.attempts,
        payload: job.payload,
        traceparent: job.traceparent,
        shutdown: cancel.clone(),
    };
    let handle = tokio::spawn(kind.handler.run(ctx).instrument(span.clone()));
    shared.lock_running().insert(
        job.id,
        Running {
            lease,
            kind: job.kind.clone(),
            lease_timeout: kind.lease_timeout,
            renewed_at,
            cancel,
            abort: Some(handle.abort_handle()),
            revoked: revoked.clone(),
            finished: false,
        },
    );
    shared.metrics.in_flight.inc();
    let shared = shared.clone();
    let attempt = job.attempts;
    tracker.spawn(
        async move {
            let started = Instant::now();
            let mut handle = handle;
            let abort = handle.abort_handle();
            let ended = tokio::select! {
                joined = &mut handle => Ended::Joined(joined),
                _ = sleep_for(kind.timeout) => Ended::TimedOut(kind.timeout.unwrap_or_default()),
                _ = async { revoked.cancelled().await; tokio::time::sleep(REVOKE_GRACE).await } => Ended::Revoked,
            };
            let result = match ended {
                Ended::Joined(Ok(result)) => result,
                Ended::Joined(Err(err)) if err.is_panic() => {
                    let panic = err.into_panic();
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    Err(JobError::retryable(format!("handler panicked: {msg}")))
                }
                Ended::Joined(Err(_)) => Err(JobError::Interrupted("handler stopped before it finished".into())),
                Ended::TimedOut(limit) => {
                    abort.abort();
                    Err(JobError::retryable(format!("attempt timed out after {limit:?}")))
                }
                Ended::Revoked => {
                    abort.abort();
                    tracing::warn!("handler ignored its cancellation signal; aborted");
                    Err(JobError::Interrupted("lease revoked (cancelled or taken back)".into()))
                }
            };
            let elapsed = started.elapsed();
            shared.metrics.run_seconds.with_label_values(&[&kind.name]).observe(elapsed.as_secs_f64());
            match &result {
                Ok(()) => tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "job succeeded"),
                Err(e) => tracing::info!(elapsed_ms = elapsed.as_millis() as u64, error = %e, "job attempt did not succeed"),
            }
            // A failed attempt is an error span; a shutdown putting the job back is not.
            if let Err(e @ (JobError::Retryable { .. } | JobError::Permanent(_))) = &result {
                let span = tracing::Span::current();
                span.record("otel.status_code", "error");
                span.record("otel.status_description", e.to_string());
            }
            if let Some(r) = shared.lock_running().get_mut(&lease.job_id) {
                if r.lease.token == lease.token {
                    r.finished = true;
                }
            }
            shared.metrics.in_flight.dec();
            let outcome = Outcome { lease, kind: kind.name.clone(), attempt, result };
            if shared.outcomes.send(outcome).await.is_err() {
                // The completer is gone (the supervisor is draining the worker): this
                // answer cannot be written. Leave the job to be put back at the end of the
                // drain, so it runs again rather than being stranded.
                tracing::error!("completer stopped; the job will be put back");
                if let Some(r) = shared.lock_running().get_mut(&lease.job_id) {
                    r.finished = false;
                }
            }
            drop(permit);
            shared.slot_freed.notify_one();
        }
        .instrument(span),
    );
}

/// Sleeps for `limit`, or forever without one.
async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
