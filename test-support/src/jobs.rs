//! Jobs through the library client, for tests that stand in for the API or a worker.

use std::time::Duration;

use serde_json::json;
use sluice_common::{
    model::{KindLease, LeasedJob},
    JobClient, NewJob,
};

/// The lease settings of `names`, each with a 5-minute lease: long enough that no test
/// sees one expire unless it wants to (then [`kinds_with_timeout`]).
pub fn kinds(names: &[&str]) -> Vec<KindLease> {
    kinds_with_timeout(names, Duration::from_secs(300))
}

/// The lease settings of `names`, each with `lease_timeout`.
pub fn kinds_with_timeout(names: &[&str], lease_timeout: Duration) -> Vec<KindLease> {
    names
        .iter()
        .map(|k| KindLease {
            kind: k.to_string(),
            lease_timeout,
        })
        .collect()
}

/// Enqueues one job of `kind` with an empty payload; returns its id.
pub async fn enqueue_one(client: &JobClient, kind: &str) -> i64 {
    client
        .enqueue(&NewJob::new(kind, json!({})))
        .await
        .unwrap()
        .job
        .id
}

/// Enqueues `n` jobs of `kind` (payload `{"i": i}`), a thousand per statement; returns
/// their ids in order.
pub async fn enqueue_n(client: &JobClient, kind: &str, n: usize) -> Vec<i64> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new(kind, json!({ "i": i })))
        .collect();
    let mut ids = Vec::with_capacity(n);
    for chunk in jobs.chunks(1000) {
        ids.extend(
            client
                .enqueue_batch(chunk)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.job.id),
        );
    }
    ids
}

/// Leases exactly one job of `kind` as `worker`; panics if none is runnable.
pub async fn lease_one(client: &JobClient, worker: &str, kind: &str) -> LeasedJob {
    let mut jobs = client.lease(worker, &kinds(&[kind]), 1).await.unwrap();
    assert_eq!(jobs.len(), 1, "expected one runnable job of {kind}");
    jobs.remove(0)
}
