//! The executor: runs each leased job in its own task.
//!
//! The handler runs in a task of its own so a panic is contained (it becomes a retryable
//! error) and so the drain can abort a handler that ignores its shutdown token. The kind's
//! timeout turns an over-long attempt into a retryable error. The slot is given back the
//! moment the handler returns, before the outcome is written: the completer batches
//! writes, and the producer should not wait for them to lease the next job.

use std::{sync::Arc, time::Instant};

use sluice_common::model::LeasedJob;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::registry::{JobContext, JobError};
use crate::state::{Outcome, Running, Shared};

/// Starts `job` on `tracker`, holding `permit` until its handler returns.
pub fn spawn_job(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    job: LeasedJob,
    permit: OwnedSemaphorePermit,
) {
    let Some(kind) = shared.registry.get(&job.kind).cloned() else {
        // The lease query only asks for registered kinds; this cannot happen, but if it
        // did, give the job back rather than hold it until its lease expires.
        let _ = shared.outcomes.send(Outcome {
            lease: job.lease(),
            kind: job.kind.clone(),
            attempt: job.attempts,
            result: Err(JobError::Interrupted(format!(
                "kind {} is not registered here",
                job.kind
            ))),
        });
        return;
    };
    let cancel = shared.handler_cancel.child_token();
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
            lease: sluice_common::model::Lease {
                job_id: job.id,
                token: job.token,
            },
            kind: job.kind.clone(),
            lease_timeout: kind.lease_timeout,
            renewed_at: Instant::now(),
            cancel,
            abort: Some(handle.abort_handle()),
        },
    );
    shared.metrics.in_flight.inc();
    let shared = shared.clone();
    let lease = sluice_common::model::Lease {
        job_id: job.id,
        token: job.token,
    };
    let attempt = job.attempts;
    tracker.spawn(
        async move {
            let started = Instant::now();
            let mut handle = handle;
            let joined = match kind.timeout {
                Some(limit) => match tokio::time::timeout(limit, &mut handle).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        handle.abort();
                        Ok(Err(JobError::retryable(format!("attempt timed out after {limit:?}"))))
                    }
                },
                None => handle.await,
            };
            let result = match joined {
                Ok(result) => result,
                Err(err) if err.is_panic() => {
                    let panic = err.into_panic();
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    Err(JobError::retryable(format!("handler panicked: {msg}")))
                }
                Err(_) => Err(JobError::Interrupted("stopped at the end of the drain budget".into())),
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
            shared.lock_running().remove(&lease.job_id);
            shared.metrics.in_flight.dec();
            drop(permit);
            shared.slot_freed.notify_one();
            let _ = shared.outcomes.send(Outcome { lease, kind: kind.name.clone(), attempt, result });
        }
        .instrument(span),
    );
}
