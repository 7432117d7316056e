//! The stats refresher: `sluice_queue_depth{kind,state}` and
//! `sluice_oldest_queued_job_age_seconds{kind}` for `/metrics` (and so for the KEDA
//! trigger), read from the same cheap source as `GET /v1/stats` and `sluicectl status`
//! ([`storage::refresh_job_stats`]: live states from their indexes, finished states from
//! trigger-kept counters). Each round, in the same single statement, it also folds the
//! pending counter deltas, if no other worker is folding at that moment.

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
    let stats = match storage::refresh_job_stats(shared.client.pool()).await {
        Ok(stats) => stats,
        Err(err) => {
            tracing::debug!(error = %err, "statistics refresh failed; will retry");
            return;
        }
    };
    shared.metrics.set_queue_depth(
        shared.registry.names(),
        stats
            .counts
            .iter()
            .map(|c| (c.kind.as_str(), c.state, c.count)),
    );
    let now = Utc::now();
    shared.metrics.set_oldest_queued_age(
        shared.registry.names(),
        stats.oldest_runnable.iter().map(|(kind, at)| {
            (
                kind.as_str(),
                (now - *at).num_milliseconds().max(0) as f64 / 1000.0,
            )
        }),
    );
}
