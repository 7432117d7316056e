//! The completer: writes handlers' outcomes in batches, fenced on each lease.
//!
//! It takes whatever outcomes are waiting (up to 1000) and writes them in ONE transaction
//! (complete, fail and interrupt statements, one commit), so under load one commit answers
//! many jobs and a batch is never half-written. A database error is retried with backoff
//! until the drain budget is spent: an outcome is not dropped while the process lives (if
//! the process dies first, the lease expires and the job runs again). Only after the
//! commit do the jobs leave the running set, so their leases stay heartbeated until their
//! answer is durable.

use std::{sync::Arc, time::Duration};

use sluice_common::model::{FailOutcome, Failure, JobState, Lease};
use sluice_common::storage::{self, DONE_IDS_PER_STATEMENT};
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::registry::JobError;
use crate::state::{Outcome, Shared, Totals};

/// Most outcomes written per round.
const MAX_BATCH: usize = 1000;

/// How the completer ended.
#[derive(Debug, Default)]
pub struct Finished {
    /// Jobs whose outcome could not be written before the budget ran out: their leases
    /// will expire and they run again. Non-empty means the worker exits non-zero.
    pub abandoned: Vec<i64>,
}

/// Writes outcomes until `finish` fires and the channel is empty, or until `abandon`
/// fires (the database is unreachable and the budget is spent).
pub async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outcome>,
    finish: CancellationToken,
    abandon: CancellationToken,
) -> Finished {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if batch.is_empty() {
            tokio::select! {
                biased;
                o = rx.recv() => match o {
                    Some(o) => batch.push(o),
                    None => return Finished::default(),
                },
                _ = finish.cancelled() => {
                    while let Ok(o) = rx.try_recv() {
                        batch.push(o);
                    }
                    if batch.is_empty() {
                        return Finished::default();
                    }
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            if abandon.is_cancelled() {
                return give_up(&mut batch, &mut rx);
            }
            // Abandoning must not wait for a statement stuck on a dead connection.
            let written = tokio::select! {
                r = write(&shared, &batch) => r,
                _ = abandon.cancelled() => return give_up(&mut batch, &mut rx),
            };
            match written {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, outcomes = batch.len(), "could not record outcomes; retrying");
                    tokio::select! {
                        _ = abandon.cancelled() => return give_up(&mut batch, &mut rx),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        let leases: Vec<Lease> = batch.iter().map(|o| o.lease).collect();
        shared.forget(&leases);
        // A job of a globally limited kind frees its slot only now that its outcome has
        // committed: tell the producer, which may have been held back by that slot.
        if batch.iter().any(|o| {
            shared
                .registry
                .get(&o.kind)
                .is_some_and(|k| k.global_concurrency.is_some())
        }) {
            shared.note_wake(true, false);
        }
        batch.clear();
    }
}

/// The budget is spent and the database still refuses: say which answers are lost.
fn give_up(batch: &mut Vec<Outcome>, rx: &mut mpsc::Receiver<Outcome>) -> Finished {
    while let Ok(o) = rx.try_recv() {
        batch.push(o);
    }
    let abandoned: Vec<i64> = batch.iter().map(|o| o.lease.job_id).collect();
    tracing::error!(
        outcomes = abandoned.len(),
        jobs = ?abandoned,
        "giving up on outcomes: the database did not answer within the budget; their leases will expire and the jobs run again"
    );
    Finished { abandoned }
}

async fn write(shared: &Shared, batch: &[Outcome]) -> Result<(), sluice_common::Error> {
    let mut completes: Vec<Lease> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut interrupts: Vec<Lease> = Vec::new();
    let mut snoozes: Vec<(Lease, Duration)> = Vec::new();
    let kind_of = |id: i64| {
        batch
            .iter()
            .find(|o| o.lease.job_id == id)
            .map(|o| o.kind.as_str())
            .unwrap_or("?")
    };
    for o in batch {
        match &o.result {
            Ok(()) => completes.push(o.lease),
            Err(JobError::Interrupted(_)) => interrupts.push(o.lease),
            Err(JobError::Snooze(after)) => snoozes.push((o.lease, *after)),
            Err(e) => {
                let kind = shared.registry.get(&o.kind);
                let (message, retry_after, permanent) = match e {
                    JobError::Retryable {
                        message,
                        retry_after,
                    } => (message.clone(), *retry_after, false),
                    JobError::Permanent(m) => (m.clone(), None, true),
                    JobError::Interrupted(_) | JobError::Snooze(_) => {
                        unreachable!("handled above")
                    }
                };
                let out_of_attempts = kind
                    .and_then(|k| k.max_attempts)
                    .is_some_and(|m| o.attempt >= m);
                let retry_in = retry_after.unwrap_or_else(|| {
                    kind.map(|k| k.backoff).unwrap_or_default().delay(o.attempt)
                });
                failures.push(Failure {
                    lease: o.lease,
                    error: message,
                    retry_in,
                    permanent: permanent || out_of_attempts,
                });
            }
        }
    }
    // Statements run first, metrics after the commit: a rolled-back batch is retried, and
    // must not be counted twice. One statement is atomic by itself (the common case under
    // load: a batch of completions), so it skips BEGIN/COMMIT; more than one share a
    // transaction.
    let statements = completes.len().div_ceil(DONE_IDS_PER_STATEMENT)
        + failures.len().div_ceil(DONE_IDS_PER_STATEMENT)
        + usize::from(!interrupts.is_empty())
        + snoozes.len().div_ceil(DONE_IDS_PER_STATEMENT);
    let reason = format!("interrupted: worker {} was shutting down", shared.identity);
    let ((done_completes, failed, done_interrupts), done_snoozes) = if statements > 1 {
        let mut tx = shared.client.pool().begin().await?;
        let out = write_statements(&mut tx, &completes, &failures, &interrupts, &reason).await?;
        let snoozed = snooze(&mut tx, &snoozes).await?;
        tx.commit().await?;
        (out, snoozed)
    } else {
        let mut conn = shared.client.pool().acquire().await?;
        let out = write_statements(&mut conn, &completes, &failures, &interrupts, &reason).await?;
        let snoozed = snooze(&mut conn, &snoozes).await?;
        (out, snoozed)
    };
    if !completes.is_empty() {
        let done = done_completes;
        for id in &done {
            shared
                .metrics
                .completed
                .with_label_values(&[kind_of(*id)])
                .inc();
        }
        Totals::add(&shared.totals.completed, done.len());
        note_lost(shared, &completes, &done, &kind_of);
    }
    if !failures.is_empty() {
        let out = failed;
        for f in &out {
            let kind = kind_of(f.job_id);
            if f.state == JobState::Failed {
                shared.metrics.failed.with_label_values(&[kind]).inc();
                Totals::add(&shared.totals.failed, 1);
            } else {
                shared.metrics.retried.with_label_values(&[kind]).inc();
                Totals::add(&shared.totals.retried, 1);
            }
        }
        let applied: Vec<i64> = out.iter().map(|f| f.job_id).collect();
        let leases: Vec<Lease> = failures.iter().map(|f| f.lease).collect();
        note_lost(shared, &leases, &applied, &kind_of);
    }
    if !interrupts.is_empty() {
        let done = done_interrupts;
        for id in &done {
            shared
                .metrics
                .interrupted
                .with_label_values(&[kind_of(*id)])
                .inc();
        }
        Totals::add(&shared.totals.interrupted, done.len());
        note_lost(shared, &interrupts, &done, &kind_of);
    }
    if !snoozes.is_empty() {
        for id in &done_snoozes {
            shared
                .metrics
                .snoozed
                .with_label_values(&[kind_of(*id)])
                .inc();
        }
        let leases: Vec<Lease> = snoozes.iter().map(|(l, _)| *l).collect();
        note_lost(shared, &leases, &done_snoozes, &kind_of);
    }
    Ok(())
}

/// The snooze statement of one batch (none when nothing snoozed).
async fn snooze(
    conn: &mut PgConnection,
    snoozes: &[(Lease, Duration)],
) -> Result<Vec<i64>, sluice_common::Error> {
    if snoozes.is_empty() {
        return Ok(Vec::new());
    }
    storage::snooze_jobs(conn, snoozes).await
}

/// The complete, fail and interrupt statements of one batch, on one connection.
async fn write_statements(
    conn: &mut PgConnection,
    completes: &[Lease],
    failures: &[Failure],
    interrupts: &[Lease],
    reason: &str,
) -> Result<(Vec<i64>, Vec<FailOutcome>, Vec<i64>), sluice_common::Error> {
    let done = if completes.is_empty() {
        Vec::new()
    } else {
        storage::complete_jobs(conn, completes).await?
    };
    let failed = if failures.is_empty() {
        Vec::new()
    } else {
        storage::fail_jobs(conn, failures).await?
    };
    let interrupted = if interrupts.is_empty() {
        Vec::new()
    } else {
        storage::interrupt_jobs(&mut *conn, interrupts, reason).await?
    };
    Ok((done, failed, interrupted))
}

/// Answers that did not apply: the lease had been released, rescued or cancelled. Normal
/// after an operator's intervention; worth a log line and a counter.
fn note_lost<'a>(
    shared: &Shared,
    sent: &[Lease],
    applied: &[i64],
    kind_of: &impl Fn(i64) -> &'a str,
) {
    if applied.len() == sent.len() {
        return;
    }
    for l in sent.iter().filter(|l| !applied.contains(&l.job_id)) {
        tracing::warn!(
            job.id = l.job_id,
            "lease no longer held (released, rescued or cancelled); answer discarded"
        );
        shared
            .metrics
            .lease_lost
            .with_label_values(&[kind_of(l.job_id)])
            .inc();
        Totals::add(&shared.totals.lease_lost, 1);
    }
}
