//! The stats refresher: `sluice_queue_depth{kind,state}` and
//! `sluice_oldest_queued_job_age_seconds{kind}` for `/metrics` (and so for the KEDA
//! trigger), read from the same cheap source as `GET /v1/stats` and `sluicectl status`
//! ([`storage::count_jobs_by_kind_and_state`]: live states from their indexes, finished
//! states from trigger-kept counters). Each round it also folds the pending counter
//! deltas, if no other worker is folding at that moment.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sluice_common::storage;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Refreshes the gauges every `interval` until `stop` fires.
pub async fn run(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    loop {
        refresh(&shared).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One round: fold, then read counts and oldest ages into the gauges.
pub async fn refresh(shared: &Shared) {
    let pool = shared.client.pool();
    if let Err(err) = storage::fold_job_counts(pool).await {
        tracing::debug!(error = %err, "counter fold failed; will retry");
    }
    match storage::count_jobs_by_kind_and_state(pool).await {
        Ok(counts) => {
            shared.metrics.queue_depth.reset();
            for c in counts {
                shared
                    .metrics
                    .queue_depth
                    .with_label_values(&[&c.kind, c.state.as_str()])
                    .set(c.count);
            }
        }
        Err(err) => tracing::debug!(error = %err, "queue depth refresh failed"),
    }
    match storage::find_oldest_runnable_by_kind(pool).await {
        Ok(oldest) => {
            shared.metrics.oldest_queued_age.reset();
            let now = Utc::now();
            for (kind, at) in oldest {
                let age = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                shared
                    .metrics
                    .oldest_queued_age
                    .with_label_values(&[&kind])
                    .set(age);
            }
        }
        Err(err) => tracing::debug!(error = %err, "oldest-job refresh failed"),
    }
}
