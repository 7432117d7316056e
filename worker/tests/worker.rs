//! `sluice-worker` as a child process against a real Postgres, driven by real signals.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

mod support;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{
    insert, pool_for, state, url_of, wait_ready_status, wait_state, wait_until, write_temp,
    HeldLock, PrivateCluster, Worker,
};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;

#[sqlx::test(migrator = "MIGRATOR")]
async fn sigterm_lets_the_running_job_finish_and_leaves_queued_jobs_queued(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    // The running job is held until the test lets it go: no guessing how long a sleep
    // outlasts the inserts below on a loaded machine.
    let lock = HeldLock::take(&opts, 1).await;
    let long = insert(&pool, "sluice.hold", r#"{"key": 1}"#).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_WORKER_CONCURRENCY", "1"),
            ("SLUICE_WORKER_TEST_KINDS", "on"),
        ],
    );
    w.wait_ready().await;
    wait_state(&pool, long, "processing", Duration::from_secs(10)).await;
    for _ in 0..100 {
        insert(&pool, "sluice.sleep", r#"{"ms": 10}"#).await;
    }
    w.signal(libc::SIGTERM);
    w.wait_log("waiting for in-flight jobs", Duration::from_secs(10))
        .await;
    lock.release().await;
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert_eq!(state(&pool, long).await.0, "completed");
    let (queued, leased): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE leased_at IS NOT NULL)
           FROM jobs WHERE id <> $1",
    )
    .bind(long)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (queued, leased),
        (100, 0),
        "nothing is leased after the signal"
    );
    assert!(w.log().contains("Shutting down worker..."));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_job_longer_than_the_budget_is_put_back_without_using_an_attempt(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    // Held for the whole test: only the budget can end this job.
    let _lock = HeldLock::take(&opts, 2).await;
    let id = insert(&pool, "sluice.hold", r#"{"key": 2}"#).await;
    let mut w = Worker::start(
        &url_of(&opts),
        &[
            ("SLUICE_SHUTDOWN_TIMEOUT", "2s"),
            ("SLUICE_WORKER_TEST_KINDS", "on"),
        ],
    );
    w.wait_ready().await;
    wait_state(&pool, id, "processing", Duration::from_secs(10)).await;
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    let (st, attempts, leased_by) = state(&pool, id).await;
    assert_eq!((st.as_str(), attempts, leased_by), ("queued", 0, None));
    let err: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(err.unwrap_or_default().contains("interrupted"));
    assert!(
        w.log().contains("signalling handlers to stop"),
        "the handler saw the signal: {}",
        w.log()
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_sigkilled_workers_job_is_finished_by_another_after_its_lease_expires(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let handlers = write_temp(
        "h.toml",
        "[kinds.\"sluice.sleep\"]\nlease_timeout = \"2s\"\n",
    );
    let envs = [("SLUICE_HANDLERS_FILE", handlers.to_str().unwrap())];
    let id = insert(&pool, "sluice.sleep", r#"{"ms": 1000}"#).await;
    let mut a = Worker::start(&url_of(&opts), &envs);
    wait_state(&pool, id, "processing", Duration::from_secs(10)).await;
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).await;
    let mut b = Worker::start(&url_of(&opts), &envs);
    b.wait_ready().await;
    wait_state(&pool, id, "completed", Duration::from_secs(15)).await;
    let (_, attempts, leased_by) = state(&pool, id).await;
    assert_eq!(attempts, 2, "the crashed attempt counts");
    assert!(leased_by.unwrap().ends_with(&b.identity_suffix()));
    let _ = std::fs::remove_file(handlers);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_runbooks_pause_sql_holds_a_kind_and_flipping_it_back_runs_it(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let mut w = Worker::start(&url_of(&opts), &[]);
    w.wait_ready().await;
    // Paused before any worker could take them, exactly as the runbook does it.
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..3 {
        sqlx::query("INSERT INTO jobs (kind, payload) VALUES ('sluice.sleep', '{\"ms\": 1}')")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE jobs\n   SET state='paused'\n WHERE state='queued'\n   AND kind='sluice.sleep';",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Other kinds keep running meanwhile: once this one is done, the worker has looked.
    let probe = insert(&pool, "sluice.noop", "{}").await;
    wait_state(&pool, probe, "completed", Duration::from_secs(5)).await;
    let paused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state = 'paused' AND leased_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(paused, 3);

    sqlx::query("UPDATE jobs SET state='queued' WHERE state='paused' AND kind='sluice.sleep'")
        .execute(&pool)
        .await
        .unwrap();
    wait_until(
        &pool,
        "SELECT count(*) = 3 FROM jobs WHERE kind = 'sluice.sleep' AND state = 'completed'",
        Duration::from_secs(20),
    )
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_runbooks_force_release_lets_another_worker_run_a_stuck_job_and_fences_the_old_one(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    let lock = HeldLock::take(&opts, 3).await;
    let id = insert(&pool, "sluice.hold", r#"{"key": 3}"#).await;
    // Both workers poll only once a minute: the re-queue must wake `b` by NOTIFY.
    let envs = [
        ("SLUICE_WORKER_TEST_KINDS", "on"),
        ("SLUICE_WORKER_POLL_INTERVAL", "60s"),
    ];
    let mut a = Worker::start(&url_of(&opts), &envs);
    wait_state(&pool, id, "processing", Duration::from_secs(10)).await;
    a.signal(libc::SIGSTOP);
    let mut b = Worker::start(&url_of(&opts), &envs);
    b.wait_ready().await;

    sqlx::query(&format!("UPDATE jobs\n   SET leased_at = NULL, leased_by = NULL, state = 'queued'\n WHERE id = {id};"))
        .execute(&pool)
        .await
        .unwrap();
    wait_until(
        &pool,
        &format!(
            "SELECT state = 'processing' AND leased_by LIKE '%{}' FROM jobs WHERE id = {id}",
            b.identity_suffix()
        ),
        Duration::from_secs(20),
    )
    .await;
    lock.release().await;
    wait_state(&pool, id, "completed", Duration::from_secs(5)).await;

    // The stopped worker wakes up, finishes its copy, and its answer must not apply.
    a.signal(libc::SIGCONT);
    a.wait_log("lease no longer held", Duration::from_secs(10))
        .await;
    let (st, _, leased_by) = state(&pool, id).await;
    assert_eq!(st, "completed");
    assert!(leased_by.unwrap().ends_with(&b.identity_suffix()));
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_worker_survives_a_postgres_restart_and_finishes_every_job(
    _o: PgPoolOptions,
    _opts: PgConnectOptions,
) {
    // A cluster of its own: this test stops Postgres, which must never be the shared one.
    let pg = PrivateCluster::start("restart");
    let url = pg.url.clone();
    let pool = pg.migrated_pool().await;
    sqlx::query("INSERT INTO jobs (kind, payload) SELECT 'sluice.sleep', '{\"ms\": 5}' FROM generate_series(1, 2000)")
        .execute(&pool)
        .await
        .unwrap();
    let mut w = Worker::start(&url, &[]);
    w.wait_ready().await;
    wait_until(
        &pool,
        "SELECT count(*) > 200 FROM jobs WHERE state = 'completed'",
        Duration::from_secs(20),
    )
    .await;
    pool.close().await;
    pg.pg("stop");
    pg.pg("start");
    let pool = pg.pool().await;
    // Outcomes that could not be written while Postgres was down are retried by the
    // completer; nothing is released by hand.
    wait_until(
        &pool,
        "SELECT count(*) = 2000 FROM jobs WHERE state = 'completed'",
        Duration::from_secs(60),
    )
    .await;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker process survived"
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    pool.close().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_idle_worker_is_woken_by_the_enqueue_not_by_its_poll(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    // Latency figures belong in `make bench`; this proves the mechanism: with a poll
    // an hour away, only the NOTIFY can start these jobs.
    let pool = pool_for(&opts).await;
    let mut w = Worker::start(&url_of(&opts), &[("SLUICE_WORKER_POLL_INTERVAL", "1h")]);
    w.wait_ready().await;
    for _ in 0..5 {
        let id = insert(&pool, "sluice.noop", "{}").await;
        wait_state(&pool, id, "completed", Duration::from_secs(30)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn systemd_hears_ready_then_stopping(_o: PgPoolOptions, opts: PgConnectOptions) {
    let path = std::env::temp_dir().join(format!(
        "sluice-notify-{}-{}.sock",
        std::process::id(),
        rand::random::<u32>()
    ));
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut w = Worker::start(&url_of(&opts), &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    w.signal(libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    let _ = std::fs::remove_file(path);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn readiness_flips_to_503_the_moment_sigterm_lands(
    _o: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = pool_for(&opts).await;
    // The job is held until readiness has flipped: the flip cannot be waiting for the
    // drain, which cannot finish before the test lets the job go.
    let lock = HeldLock::take(&opts, 4).await;
    let id = insert(&pool, "sluice.hold", r#"{"key": 4}"#).await;
    let mut w = Worker::start(&url_of(&opts), &[("SLUICE_WORKER_TEST_KINDS", "on")]);
    w.wait_ready().await;
    wait_state(&pool, id, "processing", Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    w.signal(libc::SIGTERM);
    wait_ready_status(
        &mut w,
        503,
        r#"{"status":"draining"}"#,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(state(&pool, id).await.0, "processing", "still draining");
    let metrics = client
        .get(format!("http://127.0.0.1:{}/metrics", w.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sluice_shutting_down 1"), "{metrics}");
    lock.release().await;
    assert_eq!(w.wait_exit(Duration::from_secs(30)).await.code(), Some(0));
    assert_eq!(state(&pool, id).await.0, "completed");
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    for (env, needle) in [
        (
            ("SLUICE_WORKER_KINDS", "no.such.kind"),
            "SLUICE_WORKER_KINDS",
        ),
        (("SLUICE_SHUTDOWN_TIMEOUT", "0s"), "SLUICE_SHUTDOWN_TIMEOUT"),
        (
            ("SLUICE_SHUTDOWN_TIMEOUT", "soon"),
            "SLUICE_SHUTDOWN_TIMEOUT",
        ),
        (
            ("SLUICE_WORKER_CONCURRENCY", "0"),
            "SLUICE_WORKER_CONCURRENCY",
        ),
        (
            ("SLUICE_HANDLERS_FILE", "/nonexistent/handlers.toml"),
            "SLUICE_HANDLERS_FILE",
        ),
        (
            ("SLUICE_METRICS_ADDR", "not-an-address"),
            "SLUICE_METRICS_ADDR",
        ),
        (
            ("SLUICE_WORKER_TEST_KINDS", "maybe"),
            "SLUICE_WORKER_TEST_KINDS",
        ),
        // The test kinds exist only when explicitly enabled.
        (("SLUICE_WORKER_KINDS", "sluice.hold"), "sluice.hold"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
            .env_clear()
            .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
            .env(env.0, env.1)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.lines().count() == 1,
            "{env:?}: {stderr}"
        );
    }
}
