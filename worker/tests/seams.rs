//! The worker's seams (issue 9): scheduled jobs wake on time, a cancelled job stops at
//! once, a failed service restarts the worker, an outcome survives the database going
//! away during a drain, and SIGKILLed workers duplicate only the leases they held.
//! Real binary, real Postgres, real signals; every wait is on an event with a generous
//! deadline.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use sluice_common::model::Actor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{
    insert, pool_for, state, temp_path, url_of, wait_ready_status, wait_state, wait_until,
    write_temp, HeldLock, PrivateCluster, Worker,
};
use tokio::io::AsyncReadExt;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

fn operator() -> Actor<'static> {
    Actor {
        name: "test",
        reason: Some("seams test"),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_batch_with_a_due_and_a_scheduled_job_starts_the_scheduled_one_on_time_not_at_the_next_poll(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let mut w = Worker::start(&url_of(&opts), &[("SLUICE_WORKER_POLL_INTERVAL", "60s")]);
    w.wait_ready().await;
    // Once a probe has run, the worker's start-up look at the schedule is behind it: the
    // batch below can only be found by the notifications it sends.
    let probe = insert(&pool, "sluice.noop", "{}").await;
    wait_state(&pool, probe, "completed", Duration::from_secs(20)).await;
    // One statement: one job due now, one in 2 s.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (kind, run_at) VALUES ('sluice.noop', now()), ('sluice.noop', now() + interval '2 seconds')
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    wait_until(
        &pool,
        &format!(
            "SELECT count(*) = 2 FROM jobs WHERE id IN ({}, {}) AND state = 'completed'",
            ids[0], ids[1]
        ),
        Duration::from_secs(30),
    )
    .await;
    let (early, late_by): (bool, f64) = sqlx::query_as(
        "SELECT leased_at < run_at, extract(epoch FROM leased_at - run_at)::float8 FROM jobs WHERE id = $1",
    )
    .bind(ids[1])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!early, "a scheduled job never starts before its run_at");
    // The fallback poll is 60 s away; a wakeup timer set from the notification runs it
    // right after run_at. 10 s is generous for a loaded machine, and far from 60 s.
    assert!(
        late_by < 10.0,
        "the scheduled job started {late_by:.1} s after its run_at: {}",
        w.log()
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_job_queued_behind_the_claim_floor_runs_at_once_not_at_the_next_poll(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let mut w = Worker::start(&url_of(&opts), &[("SLUICE_WORKER_POLL_INTERVAL", "60s")]);
    w.wait_ready().await;
    // Each round, one statement queues a new job and one with an hour-old run_at (as a
    // rescued lease or an operator's UPDATE back to queued has): behind the floor the
    // worker's previous leases left, so a floored lease takes only the new one. The old
    // one must be found by the lease without floors that follows, not by the poll 60 s
    // away. Rounds follow each other quickly, so most of their leases are floored.
    for round in 0..20 {
        let ids: Vec<(i64, bool)> = sqlx::query_as(
            "INSERT INTO jobs (kind, run_at) VALUES ('sluice.noop', now()), ('sluice.noop', now() - interval '1 hour')
             RETURNING id, run_at < now()",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let old = ids.iter().find(|(_, old)| *old).unwrap().0;
        let new = ids.iter().find(|(_, old)| !*old).unwrap().0;
        wait_until(
            &pool,
            &format!(
                "SELECT count(*) = 2 FROM jobs WHERE id IN ({old}, {new}) AND state = 'completed'"
            ),
            Duration::from_secs(30),
        )
        .await;
        let waited: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM o.leased_at - n.created_at)::float8 FROM jobs o, jobs n WHERE o.id = $1 AND n.id = $2",
        )
        .bind(old)
        .bind(new)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            waited < 10.0,
            "round {round}: the job behind the floor started {waited:.1} s after it was queued: {}",
            w.log()
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cancelling_a_running_sleep_stops_it_and_frees_its_slot_for_the_next_job(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let long = insert(&pool, "sluice.sleep", r#"{"ms": 600000}"#).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_CONCURRENCY", "1"),
            ("SLUICE_WORKER_POLL_INTERVAL", "60s"),
        ],
    );
    w.wait_ready().await;
    wait_state(&pool, long, "processing", Duration::from_secs(10)).await;
    let next = insert(&pool, "sluice.noop", "{}").await;
    sluice_common::storage::cancel_job(&pool, long, &operator())
        .await
        .unwrap();
    // With its only slot taken by a ten-minute sleep, the next job can only run if the
    // cancel stopped the sleep.
    wait_state(&pool, next, "completed", Duration::from_secs(20)).await;
    assert_eq!(state(&pool, long).await.0, "cancelled");
    assert!(
        w.log().contains("job cancelled while running"),
        "{}",
        w.log()
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    assert_eq!(
        state(&pool, long).await.0,
        "cancelled",
        "the late answer did not apply"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_cancel_sent_while_the_listen_connection_is_down_still_stops_the_handler_after_it_reconnects(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let long = insert(&pool, "sluice.sleep", r#"{"ms": 600000}"#).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_CONCURRENCY", "1"),
            ("SLUICE_WORKER_POLL_INTERVAL", "60s"),
        ],
    );
    w.wait_ready().await;
    wait_state(&pool, long, "processing", Duration::from_secs(10)).await;
    let next = insert(&pool, "sluice.noop", "{}").await;
    // Cut the worker's LISTEN connection and keep it from coming back: the database takes
    // no new connections (the pools' open ones keep working).
    // (ALTER DATABASE cannot do that from the database itself.)
    let db = opts.get_database().unwrap().to_string();
    let admin = pool_for(&opts.clone().database("postgres")).await;
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&admin)
        .await
        .unwrap();
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(cut, 1, "one LISTEN connection");
    w.wait_log("LISTEN connection failed", Duration::from_secs(20))
        .await;
    // The cancellation's notification goes out now, to nobody.
    sluice_common::storage::cancel_job(&pool, long, &operator())
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    // Only the lease shows the cancellation now. The heartbeat alone would notice it a
    // third of the 5-minute lease later; the reconnect makes it look at once, so the
    // only slot frees and the next job runs well inside this wait.
    wait_state(&pool, next, "completed", Duration::from_secs(45)).await;
    assert!(w.log().contains("lease lost while running"), "{}", w.log());
    assert_eq!(state(&pool, long).await.0, "cancelled");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cancelling_a_job_whose_handler_ignores_the_signal_aborts_it_and_frees_the_slot(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    // Held for the whole test, and deaf to the signal: only an abort can end it.
    let _lock = HeldLock::take(&opts, 9200).await;
    let deaf = insert(&pool, "sluice.hold", r#"{"key": 9200, "deaf": true}"#).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_CONCURRENCY", "1"),
            ("SLUICE_WORKER_TEST_KINDS", "on"),
        ],
    );
    w.wait_ready().await;
    wait_state(&pool, deaf, "processing", Duration::from_secs(10)).await;
    let next = insert(&pool, "sluice.noop", "{}").await;
    sluice_common::storage::cancel_job(&pool, deaf, &operator())
        .await
        .unwrap();
    wait_state(&pool, next, "completed", Duration::from_secs(20)).await;
    assert!(
        w.log()
            .contains("handler ignored its cancellation signal; aborted"),
        "{}",
        w.log()
    );
    assert_eq!(state(&pool, deaf).await.0, "cancelled");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
}

/// A target that never answers, and reports when a request arrived and when the worker
/// closed the connection.
async fn silent_target() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let mut told = false;
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = tx.send("closed");
                            return;
                        }
                        Ok(n) => {
                            seen.extend_from_slice(&buf[..n]);
                            if !told && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                told = true;
                                let _ = tx.send("request");
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event from the target within 20 s")
        .expect("target alive")
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cancelling_a_job_in_an_http_delivery_aborts_the_request_and_frees_the_slot(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let (addr, mut events) = silent_target().await;
    let handlers = write_temp(
        "cancel.toml",
        &format!("[kinds.\"t.silent\"]\nurl = \"http://{addr}/\"\ntimeout = \"10m\"\n"),
    );
    let pool = pool_for(&opts).await;
    let id = insert(&pool, "t.silent", "{}").await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap()),
            ("SLUICE_WORKER_CONCURRENCY", "1"),
        ],
    );
    w.wait_ready().await;
    assert_eq!(next_event(&mut events).await, "request");
    let next = insert(&pool, "sluice.noop", "{}").await;
    sluice_common::storage::cancel_job(&pool, id, &operator())
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut events).await,
        "closed",
        "the worker hung up on the target"
    );
    wait_state(&pool, next, "completed", Duration::from_secs(20)).await;
    assert_eq!(state(&pool, id).await.0, "cancelled");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    let _ = std::fs::remove_file(handlers);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_service_that_panics_makes_the_worker_unready_drain_and_exit_non_zero_losing_no_job(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    for (i, service) in [
        "heartbeat",
        "completer",
        "producer",
        "listener",
        "rescuer",
        "stats",
    ]
    .into_iter()
    .enumerate()
    {
        let key = 9100 + i as i64;
        let lock = HeldLock::take(&opts, key).await;
        let id = insert(&pool, "sluice.hold", &format!(r#"{{"key": {key}}}"#)).await;
        let mut w = Worker::start(
            &url_of(&opts),
            &[
                ("SLUICE_WORKER_TEST_KINDS", "on"),
                ("SLUICE_TEST_PANIC_SERVICE", service),
                ("SLUICE_SHUTDOWN_TIMEOUT", "3s"),
                ("SLUICE_WORKER_KINDS", "sluice.hold"),
            ],
        );
        // The hook fires once a job is running: the worker was up and leasing.
        wait_ready_status(
            &mut w,
            503,
            r#"{"status":"failed"}"#,
            Duration::from_secs(20),
        )
        .await;
        let status = w.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(1), "{service}: {}", w.log());
        assert!(
            w.log().contains("worker service stopped unexpectedly")
                && w.log().contains(&format!("\"service\":\"{service}\"")),
            "{service}: {}",
            w.log()
        );
        // The held job was put back, its attempt not used up; nothing is stranded.
        let (st, attempts, leased_by) = state(&pool, id).await;
        assert_eq!(
            (st.as_str(), attempts, leased_by),
            ("queued", 0, None),
            "{service}: {}",
            w.log()
        );
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        lock.release().await;
    }
}

/// A worker draining with a job whose outcome cannot be written: the database stopped
/// after the worker took SIGTERM and before the job (a `sluice.hold` on the file `gate`,
/// now opened) finished.
struct DrainWithoutDatabase {
    /// The stopped cluster (`pg.pg("start")` brings it back).
    pg: PrivateCluster,
    /// The draining worker.
    w: Worker,
    /// The job it holds.
    id: i64,
    /// The barrier file, removed by the test at the end.
    gate: std::path::PathBuf,
}

/// Sets up [`DrainWithoutDatabase`] on a cluster of the test's own, the worker's shutdown
/// budget `budget`.
async fn finish_a_job_in_a_drain_with_the_database_down(
    name: &str,
    budget: &str,
) -> DrainWithoutDatabase {
    let pg = PrivateCluster::start(name);
    let pool = pg.migrated_pool().await;
    let gate = temp_path("gate");
    let id = insert(
        &pool,
        "sluice.hold",
        &serde_json::json!({"file": gate}).to_string(),
    )
    .await;
    let mut w = Worker::start(
        &pg.url,
        &[
            ("SLUICE_WORKER_TEST_KINDS", "on"),
            ("SLUICE_SHUTDOWN_TIMEOUT", budget),
        ],
    );
    w.wait_ready().await;
    wait_state(&pool, id, "processing", Duration::from_secs(10)).await;
    pool.close().await;
    w.signal(libc::SIGTERM);
    w.wait_log("waiting for in-flight jobs", Duration::from_secs(10))
        .await;
    pg.pg("stop");
    // The job finishes with the database gone: its outcome cannot be written yet.
    std::fs::write(&gate, b"go").unwrap();
    DrainWithoutDatabase { pg, w, id, gate }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_outcome_reached_while_the_database_is_down_during_a_drain_is_written_when_it_returns(
    _o: PgPoolOptions,
    _opts: PgConnectOptions,
) {
    let DrainWithoutDatabase {
        pg,
        mut w,
        id,
        gate,
    } = finish_a_job_in_a_drain_with_the_database_down("outcome", "120s").await;
    w.wait_log(
        "could not record outcomes; retrying",
        Duration::from_secs(30),
    )
    .await;
    pg.pg("start");
    let status = w.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    let pool = pg.pool().await;
    let (st, attempts, _) = state(&pool, id).await;
    assert_eq!(
        (st.as_str(), attempts),
        ("completed", 1),
        "completed once, not run again: {}",
        w.log()
    );
    pool.close().await;
    let _ = std::fs::remove_file(gate);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn outcomes_the_database_never_took_within_the_budget_are_named_and_the_exit_is_non_zero(
    _o: PgPoolOptions,
    _opts: PgConnectOptions,
) {
    let DrainWithoutDatabase {
        pg,
        mut w,
        id,
        gate,
    } = finish_a_job_in_a_drain_with_the_database_down("abandon", "15s").await;
    // The database stays down past the budget: the answer cannot be written, and the
    // exit says so (the lease expires and the job runs again; nothing is lost silently).
    let status = w.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(1), "{}", w.log());
    assert!(
        w.log().contains("giving up on outcomes") && w.log().contains(&format!("[{id}]")),
        "the abandoned job is named: {}",
        w.log()
    );
    pg.pg("start");
    let pool = pg.pool().await;
    assert_eq!(
        state(&pool, id).await.0,
        "processing",
        "left to its lease, which expires and lets it run again"
    );
    pool.close().await;
    let _ = std::fs::remove_file(gate);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_second_signal_while_outcomes_wait_for_the_database_exits_at_once_naming_them(
    _o: PgPoolOptions,
    _opts: PgConnectOptions,
) {
    // `_pg` keeps the (stopped) cluster until the end; dropping it destroys it.
    let DrainWithoutDatabase {
        pg: _pg,
        mut w,
        id,
        gate,
    } = finish_a_job_in_a_drain_with_the_database_down("second", "600s").await;
    w.wait_log(
        "could not record outcomes; retrying",
        Duration::from_secs(30),
    )
    .await;
    w.signal(libc::SIGTERM);
    // The budget is ten minutes; "at once" is anything far below it.
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(130), "{}", w.log());
    assert!(
        w.log().contains("giving up on outcomes") && w.log().contains(&format!("[{id}]")),
        "the abandoned job is named: {}",
        w.log()
    );
    let _ = std::fs::remove_file(gate);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sigkilling_workers_under_load_finishes_every_job_and_repeats_only_leases_the_killed_held(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    sqlx::query(
        "CREATE TABLE sluice_test_runs (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
                                        at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let handlers = write_temp(
        "chaos.toml",
        "[kinds.\"sluice.record\"]\nlease_timeout = \"2s\"\n",
    );
    let envs = [
        ("SLUICE_WORKER_TEST_KINDS", "on"),
        ("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap()),
        ("SLUICE_WORKER_CONCURRENCY", "8"),
        ("SLUICE_WORKER_KINDS", "sluice.record"),
    ];
    const JOBS: i64 = 400;
    sqlx::query(&format!(
        "INSERT INTO jobs (kind, payload) SELECT 'sluice.record', '{{\"ms\": 150}}' FROM generate_series(1, {JOBS})"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let url = url_of(&opts);
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::start(&url, &envs)).collect();
    let mut killed: HashSet<i32> = HashSet::new();
    for round in 0..5 {
        // Kill only a worker that holds leases right now, so every kill cuts jobs off.
        let victim = round % workers.len();
        let suffix = workers[victim].identity_suffix();
        wait_until(
            &pool,
            &format!(
                "SELECT count(*) > 0 OR (SELECT count(*) FROM jobs WHERE state <> 'completed') = 0
                   FROM jobs WHERE state = 'processing' AND leased_by LIKE '%{suffix}'"
            ),
            Duration::from_secs(30),
        )
        .await;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'completed'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        workers[victim].signal(libc::SIGKILL);
        workers[victim].wait_exit(Duration::from_secs(10)).await;
        killed.insert(workers[victim].pid());
        workers[victim] = Worker::start(&url, &envs);
    }
    wait_until(
        &pool,
        &format!("SELECT count(*) = {JOBS} FROM jobs WHERE state = 'completed'"),
        Duration::from_secs(60),
    )
    .await;
    assert!(!killed.is_empty(), "the test killed a worker");

    // Every run of a job except its last (the completing one) was cut off by a kill.
    let runs: Vec<(i64, i32)> =
        sqlx::query_as("SELECT job_id, pid FROM sluice_test_runs ORDER BY job_id, at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let finals: HashMap<i64, String> =
        sqlx::query_as::<_, (i64, String)>("SELECT id, leased_by FROM jobs")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut by_job: HashMap<i64, Vec<i32>> = HashMap::new();
    for (job, pid) in runs {
        by_job.entry(job).or_default().push(pid);
    }
    let mut repeated = 0;
    for (job, pids) in &by_job {
        let (last, earlier) = pids.split_last().unwrap();
        assert!(
            finals[job].ends_with(&format!(":{last}")),
            "job {job}: the last run ({last}) is the one that completed ({})",
            finals[job]
        );
        assert!(
            !killed.contains(last),
            "job {job} completed by a killed worker"
        );
        for pid in earlier {
            assert!(
                killed.contains(pid),
                "job {job} ran twice although worker {pid} was not killed: {pids:?}"
            );
        }
        repeated += usize::from(!earlier.is_empty());
    }
    assert_eq!(by_job.len() as i64, JOBS, "every job ran");
    assert!(repeated > 0, "the kills cut off some jobs, which ran again");
    for w in &mut workers {
        w.signal(libc::SIGTERM);
    }
    for w in &mut workers {
        assert_eq!(w.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    }
    let _ = std::fs::remove_file(handlers);
}

/// libfaketime, installed by `scripts/test.d/60-clock-skew.sh` (Debian package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[sqlx::test(migrator = "MIGRATOR")]
#[ignore = "needs libfaketime; run by scripts/test.d/60-clock-skew.sh"]
async fn a_worker_whose_clock_is_off_still_starts_a_scheduled_job_on_time(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: apt-get install faketime"
    );
    let pool = pool_for(&opts).await;
    // Twenty seconds slow, then twenty fast: comparing the database's run_at with this
    // clock would wake 20 s late, or not until the next poll (a minute away).
    for skew in ["-20s", "+20s"] {
        let mut w = Worker::start(
            &url_of(&opts),
            &[
                ("SLUICE_WORKER_POLL_INTERVAL", "60s"),
                ("LD_PRELOAD", LIBFAKETIME),
                ("FAKETIME", skew),
                // Only the wall clock is off; monotonic time (timers) runs true.
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        );
        w.wait_ready().await;
        let probe = insert(&pool, "sluice.noop", "{}").await;
        wait_state(&pool, probe, "completed", Duration::from_secs(20)).await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, run_at) VALUES ('sluice.noop', now() + interval '2 seconds') RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        wait_state(&pool, id, "completed", Duration::from_secs(40)).await;
        let late_by: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM leased_at - run_at)::float8 FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            (0.0..10.0).contains(&late_by),
            "clock {skew}: started {late_by:.1} s after run_at: {}",
            w.log()
        );
        w.signal(libc::SIGTERM);
        assert_eq!(w.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    }
}
