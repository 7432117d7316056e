#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The storage side of the worker's seams (issue 9), against a real Postgres: fencing
//! tokens that survive a rewound counter, the rescuer's settings and announcements, and
//! the triggers that wake and stop workers.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use sluice_common::listen::{parse_jobs_payload, Wakeup, Wakeups};
use sluice_common::model::{Actor, Backoff, KindLease, KindRetry, Lease};
use sluice_common::{storage, JobClient, JobState, NewJob};
use sqlx::PgPool;

use sluice_test_support::jobs::enqueue_one;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

fn kinds(names: &[&str], lease_timeout: Duration) -> Vec<KindLease> {
    names
        .iter()
        .map(|k| KindLease {
            kind: k.to_string(),
            lease_timeout,
        })
        .collect()
}

async fn next_notification(w: &mut Wakeups) -> (String, String) {
    match tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("a notification within 10 s")
    {
        Wakeup::Notified { channel, payload } => (channel, payload),
        Wakeup::Reconnected => panic!("unexpected reconnect"),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_stale_lease_token_never_matches_a_re_lease_even_when_the_token_counter_rewinds(
    pool: PgPool,
) {
    let client = JobClient::new(pool.clone());
    let id = enqueue_one(&client, "k").await;
    let k = kinds(&["k"], Duration::from_secs(300));
    let mut stale: Vec<Lease> = Vec::new();
    for _ in 0..50 {
        let lease = client.lease("w:1", &k, 1).await.unwrap().remove(0).lease();
        stale.push(lease);
        // What a crash or a failover to a lagging standby does: the lease is forgotten
        // (the row is queued again) and any counter is set back to where it was.
        sqlx::query(&format!(
            "UPDATE jobs SET leased_at = NULL, leased_by = NULL, state = 'queued' WHERE id = {id}"
        ))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("ALTER SEQUENCE jobs_lease_token_seq RESTART")
            .execute(&pool)
            .await
            .unwrap();
    }
    let tokens: HashSet<i64> = stale.iter().map(|l| l.token).collect();
    assert_eq!(tokens.len(), stale.len(), "no token was handed out twice");

    let current = client.lease("w:2", &k, 1).await.unwrap().remove(0).lease();
    assert!(!tokens.contains(&current.token));
    // Every stale worker's late answer is refused; the current lease's applies.
    assert!(client.complete(&stale).await.unwrap().is_empty());
    assert!(client
        .heartbeat(
            &stale
                .iter()
                .map(|l| (*l, Duration::from_secs(60)))
                .collect::<Vec<_>>()
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(client.complete(&[current]).await.unwrap(), vec![id]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_rescuer_applies_the_kinds_attempts_and_backoff_and_announces_jobs_it_fails(
    pool: PgPool,
) {
    let client = JobClient::new(pool.clone());
    let mut done = Wakeups::new(pool.clone(), &[storage::DONE_CHANNEL]);
    done.start().await.unwrap();
    // `capped` allows 25 attempts by its row but 1 by the kind; `slow` backs off a minute;
    // `stranger` is a kind this rescuer does not know: the row's settings apply.
    let capped = enqueue_one(&client, "capped").await;
    let slow = enqueue_one(&client, "slow").await;
    let stranger = client
        .enqueue(&NewJob::new("stranger", json!({})).max_attempts(1))
        .await
        .unwrap()
        .job
        .id;
    client
        .lease(
            "dead:1",
            &kinds(&["capped", "slow", "stranger"], Duration::ZERO),
            10,
        )
        .await
        .unwrap();
    let registry = [
        KindRetry {
            kind: "capped".into(),
            max_attempts: Some(1),
            backoff: Backoff::default(),
        },
        KindRetry {
            kind: "slow".into(),
            max_attempts: None,
            backoff: Backoff {
                base: Duration::from_secs(60),
                max: Duration::from_secs(3600),
            },
        },
    ];
    let mut rescued = storage::rescue_expired_leases_for(&pool, 100, &registry)
        .await
        .unwrap();
    rescued.sort_by_key(|r| r.id);
    let states: Vec<(i64, JobState)> = rescued.iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(
        states,
        vec![
            (capped, JobState::Failed),
            (slow, JobState::Queued),
            (stranger, JobState::Failed)
        ]
    );
    // The slow kind's job waits out at least half its nominal backoff (equal jitter).
    let waits: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE id = $1",
    )
    .bind(slow)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((29.0..=61.0).contains(&waits), "backoff {waits} s");
    // Long-pollers hear about both failures at once.
    let (channel, payload) = next_notification(&mut done).await;
    assert_eq!(channel, storage::DONE_CHANNEL);
    let mut ids: Vec<i64> = payload.split(',').map(|s| s.parse().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec![capped, stranger]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cancelling_a_processing_job_tells_its_worker_which_lease_to_stop(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let mut cancels = Wakeups::new(pool.clone(), &[storage::CANCEL_CHANNEL]);
    cancels.start().await.unwrap();
    let queued = enqueue_one(&client, "k").await;
    let actor = Actor {
        name: "test",
        reason: None,
    };
    // A queued job has no worker to tell.
    client.cancel(queued, &actor).await.unwrap();
    let running = enqueue_one(&client, "k").await;
    let lease = client
        .lease("w:1", &kinds(&["k"], Duration::from_secs(300)), 1)
        .await
        .unwrap()
        .remove(0)
        .lease();
    client.cancel(running, &actor).await.unwrap();
    let (channel, payload) = next_notification(&mut cancels).await;
    assert_eq!(channel, storage::CANCEL_CHANNEL);
    assert_eq!(payload, format!("{running}:{}", lease.token));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_insert_of_due_and_scheduled_rows_wakes_workers_for_both(pool: PgPool) {
    let mut jobs = Wakeups::new(pool.clone(), &[storage::JOBS_CHANNEL]);
    jobs.start().await.unwrap();
    sqlx::query(
        "INSERT INTO jobs (kind, run_at) VALUES ('k', now()), ('k', now() + interval '2 seconds'),
                                               ('k', now() + interval '1 hour')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let (_, payload) = next_notification(&mut jobs).await;
        let (kind, at) = parse_jobs_payload(&payload);
        got.push((kind.to_string(), at));
    }
    got.sort_by_key(|(_, at)| at.is_some());
    assert_eq!(got[0], ("k".to_string(), None), "the due row");
    let first_future: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT min(run_at) FROM jobs WHERE run_at > now()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        got[1].1.map(|t| t.timestamp_millis()),
        Some(first_future.timestamp_millis()),
        "the earliest scheduled row"
    );
    // The worker's wait is measured by the database: about 2 s, not an hour, and
    // regardless of the due row (which is the lease round's business).
    let delay = storage::find_next_run_delay(&pool, &["k"])
        .await
        .unwrap()
        .unwrap();
    assert!(delay <= Duration::from_secs(2), "{delay:?}");
    assert_eq!(
        storage::find_next_run_delay(&pool, &["other"])
            .await
            .unwrap(),
        None
    );
}
