#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The job client against a real Postgres: a fresh database per test (`#[sqlx::test]`
//! creates it from `DATABASE_URL` and applies the migrations), no mocks, no sleeps.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sluice_common::error::Error;
use sluice_common::listen::{parse_jobs_payload, Wakeup, Wakeups};
use sluice_common::model::{Actor, Failure, InvalidJob, KindLease, Lease, MAX_PAYLOAD_BYTES};
use sluice_common::{storage, JobClient, JobState, NewJob};
use sqlx::PgPool;

use sluice_test_support::jobs::{enqueue_n, enqueue_one, kinds, lease_one};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

fn actor() -> Actor<'static> {
    Actor {
        name: "test",
        reason: Some("because"),
    }
}

async fn state_of(pool: &PgPool, id: i64) -> JobState {
    storage::find_job(pool, id).await.unwrap().unwrap().state
}

async fn counts_by_state(pool: &PgPool) -> HashMap<String, i64> {
    // The runbook's query, verbatim.
    sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM jobs GROUP BY state;")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn no_job_is_leased_twice_by_eight_concurrent_leasers(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let ids = enqueue_n(&client, "k", 10_000).await;
    assert_eq!(ids.len(), 10_000);

    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let name = format!("w{w}");
            loop {
                let leased = client.lease(&name, &kinds(&["k"]), 100).await.unwrap();
                if leased.is_empty() {
                    return mine;
                }
                let leases: Vec<Lease> = leased.iter().map(|j| j.lease()).collect();
                let done = client.complete(&leases).await.unwrap();
                assert_eq!(done.len(), leases.len(), "a held lease must complete");
                mine.extend(done);
            }
        }));
    }
    let mut seen = HashMap::new();
    for t in tasks {
        for id in t.await.unwrap() {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 10_000, "every job completed");
    assert!(seen.values().all(|&n| n == 1), "no job completed twice");
    assert_eq!(counts_by_state(&pool).await.get("completed"), Some(&10_000));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_runbook_force_release_fences_off_the_old_leases_late_answers(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let id = enqueue_one(&client, "k").await;
    let old = client
        .lease("old:1", &kinds(&["k"]), 1)
        .await
        .unwrap()
        .remove(0);

    // Runbook, verbatim.
    sqlx::query(&format!("UPDATE jobs\n   SET leased_at = NULL, leased_by = NULL, state = 'queued'\n WHERE id = {id};"))
        .execute(&pool)
        .await
        .unwrap();

    // Late answers of the old lease while the job is queued: nothing changes.
    assert!(client.complete(&[old.lease()]).await.unwrap().is_empty());
    let failure = Failure {
        lease: old.lease(),
        error: "late".into(),
        retry_in: Duration::ZERO,
        permanent: true,
    };
    assert!(client
        .fail(std::slice::from_ref(&failure))
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .interrupt(&[old.lease()], "late")
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .heartbeat(&[(old.lease(), Duration::from_secs(60))])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(state_of(&pool, id).await, JobState::Queued);

    // Re-leased by another worker: the old lease still cannot touch it.
    let new = client
        .lease("new:2", &kinds(&["k"]), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(new.id, id);
    assert_ne!(new.token, old.token);
    assert!(client.complete(&[old.lease()]).await.unwrap().is_empty());
    assert!(client.fail(&[failure]).await.unwrap().is_empty());
    let job = client.find(id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.leased_by.as_deref()),
        (JobState::Processing, Some("new:2"))
    );
    assert_eq!(client.complete(&[new.lease()]).await.unwrap(), vec![id]);
    assert_eq!(state_of(&pool, id).await, JobState::Completed);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rescued_job_ignores_its_dead_workers_late_answer(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let id = enqueue_one(&client, "k").await;
    let short = vec![KindLease {
        kind: "k".into(),
        lease_timeout: Duration::ZERO,
    }];
    let dead = client.lease("dead:1", &short, 1).await.unwrap().remove(0);

    let rescued = client.rescue_expired(100).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!((rescued[0].id, rescued[0].state), (id, JobState::Queued));
    assert_eq!(rescued[0].leased_by.as_deref(), Some("dead:1"));
    let job = client.find(id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 1, "the crashed attempt counts");
    assert!(job.last_error.unwrap().contains("lease expired"));

    assert!(client.complete(&[dead.lease()]).await.unwrap().is_empty());
    assert_eq!(state_of(&pool, id).await, JobState::Queued);
    // The rescued job waits out its backoff (a job that kills its worker must not be
    // retried at once everywhere); skip it for the rest of the test.
    let backs_off: bool = sqlx::query_scalar("SELECT run_at > now() FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(backs_off, "a rescued job is retried after a backoff");
    sqlx::query("UPDATE jobs SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    // A live lease is never rescued.
    let live = client
        .lease("live:2", &kinds(&["k"]), 1)
        .await
        .unwrap()
        .remove(0);
    assert!(client.rescue_expired(100).await.unwrap().is_empty());
    assert_eq!(client.complete(&[live.lease()]).await.unwrap(), vec![id]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_job_out_of_attempts_is_failed_by_the_rescuer(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&NewJob::new("k", json!({})).max_attempts(1))
        .await
        .unwrap()
        .job
        .id;
    let short = vec![KindLease {
        kind: "k".into(),
        lease_timeout: Duration::ZERO,
    }];
    client.lease("dead:1", &short, 1).await.unwrap();
    let rescued = client.rescue_expired(100).await.unwrap();
    assert_eq!(rescued[0].state, JobState::Failed);
    assert_eq!(state_of(&pool, id).await, JobState::Failed);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_runbooks_pause_sql_holds_a_kind_back_and_flipping_it_back_releases_it(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "search.reindex", 3).await;
    enqueue_n(&client, "email.send", 2).await;

    // Runbook, verbatim.
    let paused = sqlx::query(
        "UPDATE jobs\n   SET state='paused'\n WHERE state='queued'\n   AND kind='search.reindex';",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(paused, 3);
    let counts = counts_by_state(&pool).await;
    assert_eq!(
        (counts.get("paused"), counts.get("queued")),
        (Some(&3), Some(&2))
    );

    let leased = client
        .lease("w", &kinds(&["search.reindex", "email.send"]), 100)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    assert!(leased.iter().all(|j| j.kind == "email.send"));
    let counts = counts_by_state(&pool).await;
    assert_eq!(
        (counts.get("paused"), counts.get("processing")),
        (Some(&3), Some(&2))
    );

    sqlx::query("UPDATE jobs SET state='queued' WHERE state='paused' AND kind='search.reindex'")
        .execute(&pool)
        .await
        .unwrap();
    let leased = client
        .lease("w", &kinds(&["search.reindex", "email.send"]), 100)
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    assert!(leased.iter().all(|j| j.kind == "search.reindex"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pausing_a_kind_also_holds_back_jobs_enqueued_later_until_resumed(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "report", 2).await;
    assert_eq!(client.pause_kind("report", &actor()).await.unwrap(), 2);

    let later = client
        .enqueue(&NewJob::new("report", json!({})))
        .await
        .unwrap()
        .job;
    assert_eq!(later.state, JobState::Paused);
    let batch = client
        .enqueue_batch(&[NewJob::new("report", json!({}))])
        .await
        .unwrap();
    assert_eq!(batch[0].job.state, JobState::Paused);
    // Even a row that slipped in as `queued` (an enqueue racing the pause) is not leased.
    sqlx::query("INSERT INTO jobs (kind) VALUES ('report')")
        .execute(&pool)
        .await
        .unwrap();
    assert!(client
        .lease("w", &kinds(&["report"]), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .kinds()
        .await
        .unwrap()
        .iter()
        .any(|k| k.kind == "report" && k.paused));

    assert_eq!(client.resume_kind("report", &actor()).await.unwrap(), 4);
    assert_eq!(
        client
            .lease("w", &kinds(&["report"]), 100)
            .await
            .unwrap()
            .len(),
        5
    );

    let audit = client.audit_log(None, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, vec!["pause", "resume"]);
    assert!(audit.iter().all(|a| a.actor == "test"
        && a.target == "kind:report"
        && a.reason.as_deref() == Some("because")));
    assert!(matches!(
        client.pause_kind("nope", &actor()).await,
        Err(Error::UnknownKind(_))
    ));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn retries_back_off_and_stop_at_max_attempts(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&NewJob::new("k", json!({})).max_attempts(3))
        .await
        .unwrap()
        .job
        .id;
    for attempt in 1..=3 {
        let job = lease_one(&client, "w", "k").await;
        assert_eq!(job.attempts, attempt);
        let f = Failure {
            lease: job.lease(),
            error: format!("boom {attempt}"),
            retry_in: Duration::ZERO,
            permanent: false,
        };
        let out = client.fail(&[f]).await.unwrap();
        let expected = if attempt < 3 {
            JobState::Queued
        } else {
            JobState::Failed
        };
        assert_eq!(out[0].state, expected);
    }
    let job = client.find(id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempts, job.last_error.as_deref()),
        (JobState::Failed, 3, Some("boom 3"))
    );
    assert!(job.finished_at.is_some());

    // A backoff pushes run_at out: the job is not leasable until then.
    let id = enqueue_one(&client, "k").await;
    let job = lease_one(&client, "w", "k").await;
    let f = Failure {
        lease: job.lease(),
        error: "later".into(),
        retry_in: Duration::from_secs(3600),
        permanent: false,
    };
    client.fail(&[f]).await.unwrap();
    let job = client.find(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(job.run_at > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert!(client
        .lease("w", &kinds(&["k"]), 1)
        .await
        .unwrap()
        .is_empty());
    let next = storage::find_next_wakeup(&pool, &["k"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, job.run_at);

    // A permanent failure ends the job whatever the attempts left.
    let id = enqueue_one(&client, "p").await;
    let job = lease_one(&client, "w", "p").await;
    let f = Failure {
        lease: job.lease(),
        error: "400".into(),
        retry_in: Duration::ZERO,
        permanent: true,
    };
    assert_eq!(client.fail(&[f]).await.unwrap()[0].state, JobState::Failed);
    assert_eq!(state_of(&pool, id).await, JobState::Failed);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_interrupted_job_is_queued_again_without_using_up_its_attempt(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let id = enqueue_one(&client, "k").await;
    let job = lease_one(&client, "w", "k").await;
    assert_eq!(
        client
            .interrupt(&[job.lease()], "worker shutting down")
            .await
            .unwrap(),
        vec![id]
    );
    let row = client.find(id).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.attempts, row.leased_by),
        (JobState::Queued, 0, None)
    );
    let again = lease_one(&client, "w2", "k").await;
    assert_eq!((again.id, again.attempts), (id, 1));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn fifty_concurrent_enqueues_of_one_idempotency_key_make_one_job(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .enqueue(&NewJob::new("k", json!({ "i": i })).idempotency_key("same"))
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let e = t.await.unwrap();
        ids.push(e.job.id);
        created += e.created as usize;
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "all 50 answers name the same job");
    assert_eq!(created, 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_batch_keeps_input_order_and_dedupes_keys_within_and_across_batches(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let first = client
        .enqueue(&NewJob::new("k", json!(0)).idempotency_key("a"))
        .await
        .unwrap()
        .job;
    let batch = vec![
        NewJob::new("k", json!(1)),
        NewJob::new("k", json!(2)).idempotency_key("a"),
        NewJob::new("k", json!(3)).idempotency_key("b"),
        NewJob::new("k", json!(4)).idempotency_key("b"),
        NewJob::new("other", json!(5)).idempotency_key("a"),
        NewJob::new("k", json!(6)),
    ];
    let out = client.enqueue_batch(&batch).await.unwrap();
    assert_eq!(out.len(), 6);
    assert_eq!(out[0].job.payload, json!(1));
    assert!(out[0].created);
    assert_eq!((out[1].job.id, out[1].created), (first.id, false));
    assert!(out[2].created);
    assert_eq!((out[3].job.id, out[3].created), (out[2].job.id, false));
    assert!(out[4].created && out[4].job.kind == "other");
    assert_eq!(out[5].job.payload, json!(6));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 5);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_input_is_refused_with_a_typed_error_and_writes_nothing(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let bad = [
        NewJob::new("", json!({})),
        NewJob::new("k", json!("x".repeat(MAX_PAYLOAD_BYTES))),
        NewJob::new("k", json!({})).priority(5000),
        NewJob::new("k", json!({})).max_attempts(0),
        NewJob::new("k", json!({})).idempotency_key("k".repeat(300)),
    ];
    for job in &bad {
        assert!(
            matches!(client.enqueue(job).await, Err(Error::Invalid(_))),
            "{job:?}"
        );
    }
    let mut batch = vec![NewJob::new("k", json!({})); 3];
    batch.push(bad[2].clone());
    match client.enqueue_batch(&batch).await {
        Err(Error::Invalid(InvalidJob::InBatch { index: 3, .. })) => {}
        other => panic!("expected the 4th job to be named, got {other:?}"),
    }
    assert!(matches!(
        client.enqueue_batch(&[]).await,
        Err(Error::Invalid(InvalidJob::BatchSize { .. }))
    ));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn release_cancel_and_retry_refuse_impossible_transitions_and_leave_audit_rows(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let id = enqueue_one(&client, "k").await;
    assert!(matches!(
        client.release(id, &actor()).await,
        Err(Error::InvalidTransition {
            state: JobState::Queued,
            ..
        })
    ));
    assert!(matches!(
        client.retry(id, &actor()).await,
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        client.release(999_999, &actor()).await,
        Err(Error::NotFound(999_999))
    ));

    let job = client
        .lease("w:1", &kinds(&["k"]), 1)
        .await
        .unwrap()
        .remove(0);
    let released = client.release(id, &actor()).await.unwrap();
    assert_eq!(
        (released.state, released.leased_by),
        (JobState::Queued, None)
    );
    assert!(
        client.complete(&[job.lease()]).await.unwrap().is_empty(),
        "released lease is fenced"
    );

    let job = client
        .lease("w:1", &kinds(&["k"]), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        client.cancel(id, &actor()).await.unwrap().state,
        JobState::Cancelled
    );
    assert!(
        client.complete(&[job.lease()]).await.unwrap().is_empty(),
        "cancelled lease is fenced"
    );
    let retried = client.retry(id, &actor()).await.unwrap();
    assert_eq!((retried.state, retried.attempts), (JobState::Queued, 0));

    let audit = client.audit_log(None, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, vec!["release", "cancel", "retry"]);
    assert_eq!(audit[0].details["leased_by"], json!("w:1"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn enqueues_and_the_runbooks_requeue_wake_listeners(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let mut wakeups = Wakeups::new(pool.clone(), &[storage::JOBS_CHANNEL]);
    wakeups.start().await.unwrap();

    let id = enqueue_one(&client, "k").await;
    assert_eq!(next_kind(&mut wakeups).await, ("k".to_string(), false));

    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    client
        .enqueue_batch(&vec![NewJob::new("s", json!({})).run_at(later); 10])
        .await
        .unwrap();
    assert_eq!(next_kind(&mut wakeups).await, ("s".to_string(), true));

    client.lease("w", &kinds(&["k"]), 1).await.unwrap();
    sqlx::query(&format!(
        "UPDATE jobs SET leased_at = NULL, leased_by = NULL, state = 'queued' WHERE id = {id}"
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(next_kind(&mut wakeups).await, ("k".to_string(), false));
}

async fn next_kind(w: &mut Wakeups) -> (String, bool) {
    match tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("a wakeup")
    {
        Wakeup::Notified { payload, .. } => {
            let (kind, at) = parse_jobs_payload(&payload);
            (kind.to_string(), at.is_some())
        }
        Wakeup::Reconnected => panic!("unexpected reconnect"),
    }
}
