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

/// The plan of the worker's lease statement for `kinds`, executed under `EXPLAIN
/// (ANALYZE, BUFFERS, FORMAT JSON)` in a transaction that is rolled back (so the test reads
/// the work it did, and leases nothing): `storage::LEASE_JOBS_SQL` when no kind has a
/// floor, `storage::LEASE_JOBS_FROM_FLOORS_SQL` otherwise, as the worker picks. Returns
/// the plan document's first element (`["Plan"]` is its top node).
pub async fn explain_lease(
    pool: &sqlx::PgPool,
    kinds: &[KindLease],
    floors: &[Option<sluice_common::storage::ClaimFloor>],
    limit: i64,
) -> serde_json::Value {
    use sluice_common::storage;
    let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
    let timeouts: Vec<i64> = kinds
        .iter()
        .map(|k| k.lease_timeout.as_millis() as i64)
        .collect();
    let floored = floors.iter().any(Option::is_some);
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        if floored {
            storage::LEASE_JOBS_FROM_FLOORS_SQL
        } else {
            storage::LEASE_JOBS_SQL
        }
    );
    let mut q = sqlx::query_scalar(&sql)
        .bind("explain-test")
        .bind(&names)
        .bind(&timeouts)
        .bind(limit);
    if floored {
        let (fp, fr) = storage::floor_arrays(kinds.len(), floors);
        q = q.bind(fp).bind(fr);
    }
    let mut tx = pool.begin().await.expect("begin");
    let plan: serde_json::Value = q.fetch_one(&mut *tx).await.expect("EXPLAIN the lease");
    tx.rollback().await.expect("rollback");
    plan[0].clone()
}

/// Buffers touched by the scans of `index` in an `EXPLAIN (ANALYZE, BUFFERS, FORMAT
/// JSON)` plan node and its children (an index scan's figure includes its heap visits):
/// what finding the rows cost, without the writes that follow.
pub fn scan_buffers(node: &serde_json::Value, index: &str) -> i64 {
    let own = if node["Index Name"].as_str() == Some(index) {
        node["Shared Hit Blocks"].as_i64().unwrap_or(0)
            + node["Shared Read Blocks"].as_i64().unwrap_or(0)
    } else {
        0
    };
    own + node["Plans"]
        .as_array()
        .map(|c| c.iter().map(|n| scan_buffers(n, index)).sum())
        .unwrap_or(0)
}
