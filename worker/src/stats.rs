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
        Ok(counts) => shared.metrics.set_queue_depth(
            shared.registry.names(),
            counts.iter().map(|c| (c.kind.as_str(), c.state, c.count)),
        ),
        Err(err) => tracing::debug!(error = %err, "queue depth refresh failed"),
    }
    match storage::find_oldest_runnable_by_kind(pool).await {
        Ok(oldest) => {
            let now = Utc::now();
            shared.metrics.set_oldest_queued_age(
                shared.registry.names(),
                oldest.iter().map(|(kind, at)| {
                    (
                        kind.as_str(),
                        (now - *at).num_milliseconds().max(0) as f64 / 1000.0,
                    )
                }),
            );
        }
        Err(err) => tracing::debug!(error = %err, "oldest-job refresh failed"),
    }
}
