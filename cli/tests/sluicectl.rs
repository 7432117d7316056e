#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! `sluicectl` as operators run it: the real binary as a child process, against a real
//! Postgres database per test (`#[sqlx::test]`), outputs read as text and as JSON.
//! The job client stands in for a worker (lease, complete), so the drill does not depend
//! on the worker binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_common::model::Lease;
use sluice_common::{storage, JobClient, JobState, NewJob};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::process::Command;

use sluice_test_support::jobs::{enqueue_n, kinds};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const BIN: &str = env!("CARGO_BIN_EXE_sluicectl");

use sluice_test_support::{cli::Out, url_of};

fn command(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env("USER", "tester")
        .env_remove("SLUICECTL_ACTOR")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn finish(child: tokio::process::Child) -> Out {
    sluice_test_support::cli::finish(child, Duration::from_secs(60)).await
}

async fn ctl(url: &str, args: &[&str]) -> Out {
    finish(command(url, args).spawn().unwrap()).await
}

async fn state_of(pool: &PgPool, id: i64) -> JobState {
    storage::find_job(pool, id).await.unwrap().unwrap().state
}

/// Every row of `jobs` and `audit_log` that matters, to prove a refused command changed
/// nothing.
async fn snapshot(pool: &PgPool) -> (Vec<(i64, String, Option<String>, i32)>, i64, Value) {
    let jobs = sqlx::query_as("SELECT id, state, leased_by, attempts FROM jobs ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(pool)
        .await
        .unwrap();
    let kinds: Value = sqlx::query_scalar(
        "SELECT coalesce(json_agg(json_build_object('kind', kind, 'paused', paused) ORDER BY kind), '[]')::jsonb FROM job_kinds",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (jobs, audit, kinds)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn status_shows_every_state_the_kinds_the_paused_kinds_and_who_holds_what(pool: PgPool) {
    let url = url_of(&pool);
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "email", 3).await;
    enqueue_n(&client, "report", 2).await;
    let done = client
        .lease("host-a:41", &kinds(&["email"]), 1)
        .await
        .unwrap();
    client.complete(&[done[0].lease()]).await.unwrap();
    let held = client
        .lease("host-a:42", &kinds(&["email"]), 1)
        .await
        .unwrap();
    assert_eq!(
        ctl(&url, &["pause", "report", "--reason", "schema work"])
            .await
            .code,
        0
    );

    let text = ctl(&url, &["status"]).await;
    assert_eq!(text.code, 0, "{text:?}");
    let s = &text.stdout;
    assert!(!s.contains('\x1b'), "no colour when stdout is a pipe: {s}");
    for line in [
        "queued      1",
        "processing  1",
        "paused      2",
        "completed   1",
        "failed      0",
        "cancelled   0",
    ] {
        assert!(s.contains(line), "missing {line:?} in\n{s}");
    }
    assert!(s.contains("report [paused]"), "{s}");
    assert!(s.contains("by tester: schema work"), "{s}");
    assert!(s.contains("host-a:42"), "{s}");
    assert!(s.contains(&held[0].id.to_string()), "{s}");

    let out = ctl(&url, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(
        v["states"],
        json!({"queued": 1, "processing": 1, "paused": 2, "completed": 1, "failed": 0, "cancelled": 0})
    );
    let kinds_json = v["kinds"].as_array().unwrap();
    assert_eq!(kinds_json.len(), 2);
    assert_eq!(kinds_json[0]["kind"], "email");
    assert_eq!(kinds_json[0]["states"]["processing"], 1);
    assert_eq!(kinds_json[1]["kind"], "report");
    assert_eq!(kinds_json[1]["paused"], true);
    assert_eq!(v["paused_kinds"][0]["kind"], "report");
    assert_eq!(v["paused_kinds"][0]["paused_by"], "tester");
    let p = &v["processing"].as_array().unwrap()[0];
    assert_eq!(p["id"], held[0].id);
    assert_eq!(p["leased_by"], "host-a:42");
    assert!(p["lease_age_ms"].as_i64().unwrap() >= 0, "{p}");
    let expires_in = p["expires_in_ms"].as_i64().unwrap();
    assert!((0..=300_000).contains(&expires_in), "{p}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn status_of_an_empty_database_shows_processing_zero(pool: PgPool) {
    let url = url_of(&pool);
    let out = ctl(&url, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["states"]["processing"], 0);
    let text = ctl(&url, &["status"]).await;
    assert!(text.stdout.contains("processing  0 (drained)"), "{text:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_action_changes_the_job_and_leaves_its_audit_row(pool: PgPool) {
    let url = url_of(&pool);
    let client = JobClient::new(pool.clone());
    let ids = enqueue_n(&client, "email", 2).await;
    let leased = client
        .lease("host-b:7", &kinds(&["email"]), 1)
        .await
        .unwrap();
    let running = leased[0].id;
    let other = *ids.iter().find(|&&id| id != running).unwrap();

    let out = ctl(&url, &["pause", "email", "--reason", "r1", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        json!({"action": "pause", "kind": "email", "jobs": 1})
    );
    assert_eq!(state_of(&pool, other).await, JobState::Paused);

    let out = ctl(&url, &["resume", "email", "--reason", "r2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("resumed kind email: 1 job(s)"),
        "{out:?}"
    );
    assert_eq!(state_of(&pool, other).await, JobState::Queued);

    let out = ctl(&url, &["release", &running.to_string(), "--reason", "r3"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("was held by host-b:7"), "{out:?}");
    assert!(out.stdout.contains("fenced"), "{out:?}");
    assert_eq!(state_of(&pool, running).await, JobState::Queued);

    let out = ctl(
        &url,
        &["cancel", &other.to_string(), "--reason", "r4", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["action"], "cancel");
    assert_eq!(v["job"]["id"], other);
    assert_eq!(v["job"]["state"], "cancelled");

    let out = ctl(
        &url,
        &[
            "retry",
            &other.to_string(),
            "--reason",
            "r5",
            "--actor",
            "alice",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("is now queued"), "{out:?}");
    let job = storage::find_job(&pool, other).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));

    let out = ctl(&url, &["audit", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows = out.json();
    let got: Vec<(String, String, String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().into(),
                r["action"].as_str().unwrap().into(),
                r["target"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    let t = |a: &str, b: &str, c: String, d: &str| (a.to_string(), b.to_string(), c, d.to_string());
    assert_eq!(
        got,
        vec![
            t("tester", "pause", "kind:email".into(), "r1"),
            t("tester", "resume", "kind:email".into(), "r2"),
            t("tester", "release", format!("job:{running}"), "r3"),
            t("tester", "cancel", format!("job:{other}"), "r4"),
            t("alice", "retry", format!("job:{other}"), "r5"),
        ]
    );
    assert_eq!(rows[2]["details"]["leased_by"], "host-b:7");

    let text = ctl(&url, &["audit"]).await;
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.lines().count() == 6,
        "header + 5 rows: {}",
        text.stdout
    );
    assert!(text.stdout.contains("alice"), "{}", text.stdout);

    let newest = ctl(&url, &["audit", "--limit", "2", "--json"]).await.json();
    let actions: Vec<&str> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["cancel", "retry"], "the newest two, oldest first");

    assert_eq!(
        ctl(&url, &["audit", "--since", "1h", "--json"])
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let future = ctl(
        &url,
        &["audit", "--since", "2999-01-01T00:00:00Z", "--json"],
    )
    .await;
    assert_eq!(future.json(), json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_drain_runbook_works_end_to_end_with_every_step_audited(pool: PgPool) {
    let url = url_of(&pool);
    let client = JobClient::new(pool.clone());
    let both = kinds(&["fast", "slow"]);
    let fast = enqueue_n(&client, "fast", 3).await;
    let slow = enqueue_n(&client, "slow", 2).await;

    // Drain one kind: pause it, the other keeps running.
    let out = ctl(&url, &["pause", "slow", "--reason", "search schema work"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let late = client
        .enqueue(&NewJob::new("slow", json!({})))
        .await
        .unwrap()
        .job;
    assert_eq!(
        late.state,
        JobState::Paused,
        "a job enqueued after the pause is held too"
    );
    let leased = client.lease("worker-1:100", &both, 10).await.unwrap();
    let mut got: Vec<i64> = leased.iter().map(|j| j.id).collect();
    got.sort();
    assert_eq!(got, fast, "only the unpaused kind is leased");
    client
        .complete(&leased.iter().map(|j| j.lease()).collect::<Vec<Lease>>())
        .await
        .unwrap();
    assert!(client
        .lease("worker-1:100", &both, 10)
        .await
        .unwrap()
        .is_empty());

    // Resume: everything of the kind is runnable again, the late job included.
    assert_eq!(
        ctl(&url, &["resume", "slow", "--reason", "done"])
            .await
            .code,
        0
    );
    for id in slow.iter().chain([&late.id]) {
        assert_eq!(state_of(&pool, *id).await, JobState::Queued);
    }

    // A worker holds one job: wait-drained names it and gives up at the timeout.
    let held = client
        .lease("worker-1:100", &kinds(&["slow"]), 1)
        .await
        .unwrap()
        .remove(0);
    let started = Instant::now();
    let out = ctl(
        &url,
        &["wait-drained", "--timeout", "1s", "--interval", "100ms"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(out.stdout.contains("worker-1:100"), "{out:?}");
    assert!(out.stdout.contains(&held.id.to_string()), "{out:?}");
    assert!(
        out.stderr
            .contains("not drained after 1s: 1 job(s) still processing"),
        "{out:?}"
    );
    let v = ctl(&url, &["wait-drained", "--timeout", "0s", "--json"]).await;
    assert_eq!(v.code, 1);
    let v = v.json();
    assert_eq!(v["drained"], false);
    assert_eq!(v["processing"][0]["leased_by"], "worker-1:100");
    assert!(v["processing"][0]["lease_age_ms"].as_i64().unwrap() >= 0);
    // Another kind is drained even while this one is not.
    let other_kind = ctl(&url, &["wait-drained", "--kind", "fast", "--timeout", "0s"]).await;
    assert_eq!(other_kind.code, 0, "{other_kind:?}");

    // The worker finishes while wait-drained waits: it returns 0, queued jobs stay queued.
    let waiter = command(
        &url,
        &["wait-drained", "--timeout", "30s", "--interval", "100ms"],
    )
    .spawn()
    .unwrap();
    assert_eq!(
        client.complete(&[held.lease()]).await.unwrap(),
        vec![held.id]
    );
    let out = finish(waiter).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("drained"), "{out:?}");
    let status = ctl(&url, &["status", "--json"]).await.json();
    assert_eq!(status["states"]["processing"], 0);
    assert_eq!(
        status["states"]["queued"], 2,
        "queued jobs stay queued: {status}"
    );

    // A stuck job: release it; it is leasable at once, workers are woken, and the old
    // lease's late answer changes nothing.
    let stuck = client
        .lease("worker-2:200", &kinds(&["slow"]), 1)
        .await
        .unwrap()
        .remove(0);
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(storage::JOBS_CHANNEL).await.unwrap();
    let out = ctl(
        &url,
        &[
            "release",
            &stuck.id.to_string(),
            "--reason",
            "worker-2 host died",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("workers are notified of the released job")
        .unwrap();
    assert_eq!(note.payload(), "slow");
    let again = client
        .lease("worker-3:300", &kinds(&["slow"]), 3)
        .await
        .unwrap();
    let again_ids: Vec<i64> = again.iter().map(|j| j.id).collect();
    assert!(
        again_ids.contains(&stuck.id),
        "released job leased again: {again_ids:?}"
    );
    assert!(
        client.complete(&[stuck.lease()]).await.unwrap().is_empty(),
        "old lease fenced"
    );
    let job = storage::find_job(&pool, stuck.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Processing);
    assert_eq!(job.leased_by.as_deref(), Some("worker-3:300"));

    // Every manual step left its row.
    let audit = ctl(&url, &["audit", "--json"]).await.json();
    let steps: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().into(),
                r["target"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            (
                "pause".into(),
                "kind:slow".into(),
                "search schema work".into()
            ),
            ("resume".into(), "kind:slow".into(), "done".into()),
            (
                "release".into(),
                format!("job:{}", stuck.id),
                "worker-2 host died".into()
            ),
        ]
    );
    assert_eq!(audit[2]["details"]["leased_by"], "worker-2:200");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn refused_commands_say_why_exit_nonzero_and_change_nothing(pool: PgPool) {
    let url = url_of(&pool);
    let client = JobClient::new(pool.clone());
    let ids = enqueue_n(&client, "email", 2).await;
    let queued = ids[0];
    let before = snapshot(&pool).await;

    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            vec!["pause".into(), "never.seen".into()],
            1,
            "unknown kind \"never.seen\"".into(),
        ),
        (
            vec!["resume".into(), "never.seen".into()],
            1,
            "unknown kind".into(),
        ),
        (
            vec!["release".into(), "999999".into()],
            1,
            "job 999999 does not exist".into(),
        ),
        (
            vec!["cancel".into(), "999999".into()],
            1,
            "does not exist".into(),
        ),
        (
            vec!["release".into(), queued.to_string()],
            1,
            format!("job {queued} is queued; cannot release it"),
        ),
        (
            vec![
                "retry".into(),
                queued.to_string(),
                "--reason".into(),
                "x".into(),
            ],
            1,
            "is queued; cannot retry".into(),
        ),
        (vec!["pause".into(), "".into()], 2, "kind".into()),
        (
            vec!["wait-drained".into(), "--timeout".into(), "5parsecs".into()],
            2,
            "--timeout".into(),
        ),
        (
            vec!["wait-drained".into(), "--timeout".into(), "30".into()],
            2,
            "no unit".into(),
        ),
        (
            vec!["audit".into(), "--since".into(), "yesterday".into()],
            2,
            "RFC 3339".into(),
        ),
        (vec!["release".into(), "abc".into()], 2, "<ID>".into()),
        (vec!["frobnicate".into()], 2, "frobnicate".into()),
    ];
    for (args, code, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctl(&url, &args).await;
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: errors go to stderr: {out:?}"
        );
        let line = out.stderr.trim();
        assert!(line.starts_with("error: "), "{args:?}: {out:?}");
        assert_eq!(line.lines().count(), 1, "{args:?}: one line: {out:?}");
        assert!(
            line.contains(&needle),
            "{args:?}: want {needle:?} in {line:?}"
        );
    }
    // A finished job cannot be cancelled or released.
    let done = client.lease("w:1", &kinds(&["email"]), 2).await.unwrap();
    client
        .complete(&done.iter().map(|j| j.lease()).collect::<Vec<_>>())
        .await
        .unwrap();
    let before_done = snapshot(&pool).await;
    assert_eq!(before.1, before_done.1, "no audit row from refusals");
    assert_eq!(before.2, before_done.2, "no kind changed");
    for action in ["cancel", "release"] {
        let out = ctl(&url, &[action, &queued.to_string()]).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("is completed; cannot"), "{out:?}");
    }
    assert_eq!(
        snapshot(&pool).await,
        before_done,
        "refusals changed nothing"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn refusals_leave_jobs_untouched(pool: PgPool) {
    // The per-row half of the check above, before any lease: states and attempts equal.
    let url = url_of(&pool);
    let client = JobClient::new(pool.clone());
    let ids = enqueue_n(&client, "email", 1).await;
    let before = snapshot(&pool).await;
    for args in [
        vec!["retry".to_string(), ids[0].to_string()],
        vec!["release".to_string(), ids[0].to_string()],
        vec!["pause".to_string(), "nope".to_string()],
        vec![
            "wait-drained".to_string(),
            "--interval".to_string(),
            "fast".to_string(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_ne!(ctl(&url, &args).await.code, 0, "{args:?}");
    }
    assert_eq!(snapshot(&pool).await, before);
}

#[tokio::test]
async fn an_unreachable_database_fails_fast_with_one_clear_line() {
    // "Fast" is the acquire timeout, not a hang: `ctl` gives up on a run after 60 s.
    let out = ctl(
        "postgres://postgres@127.0.0.1:1/x",
        &["--db-acquire-timeout", "1s", "status"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{out:?}");
    assert!(
        line.starts_with("error: cannot reach the database at 127.0.0.1:1/x"),
        "{line}"
    );
    assert!(out.stdout.is_empty());
    // Mutating commands fail the same way.
    let out = ctl(
        "postgres://postgres@127.0.0.1:1/x",
        &[
            "--db-acquire-timeout",
            "500ms",
            "release",
            "1",
            "--reason",
            "x",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cannot reach the database"), "{out:?}");
}

#[sqlx::test(migrations = false)]
async fn two_migrations_at_once_both_succeed_and_apply_the_schema_once(pool: PgPool) {
    let url = url_of(&pool);
    let a = command(&url, &["migrate"]).spawn().unwrap();
    let b = command(&url, &["migrate"]).spawn().unwrap();
    let (a, b) = tokio::join!(finish(a), finish(b));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(b.code, 0, "{b:?}");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "the schema is there");
    // Running it again is a no-op that still succeeds.
    let again = ctl(&url, &["migrate", "--json"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["ok"], true);
}

#[tokio::test]
async fn help_shows_examples_and_exit_codes_for_every_subcommand() {
    let url = "postgres://unused@127.0.0.1:1/x";
    let main = ctl(url, &["--help"]).await;
    assert_eq!(main.code, 0, "{main:?}");
    assert!(main.stdout.contains("Exit codes:"), "{}", main.stdout);
    for sub in [
        "migrate",
        "status",
        "pause",
        "resume",
        "release",
        "cancel",
        "retry",
        "wait-drained",
        "audit",
        "periodic",
    ] {
        let out = ctl(url, &[sub, "--help"]).await;
        assert_eq!(out.code, 0, "{sub}: {out:?}");
        assert!(out.stdout.contains("Examples:"), "{sub}: {}", out.stdout);
        assert!(
            out.stdout.contains(&format!("sluicectl {sub}")),
            "{sub}: {}",
            out.stdout
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn without_user_or_actor_the_audit_names_the_os_account(pool: PgPool) {
    let url = url_of(&pool);
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "email", 1).await;
    let mut cmd = command(&url, &["pause", "email", "--reason", "who am i"]);
    cmd.env_remove("USER");
    let out = finish(cmd.spawn().unwrap()).await;
    assert_eq!(out.code, 0, "{out:?}");
    let expected = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let expected = String::from_utf8(expected.stdout)
        .unwrap()
        .trim()
        .to_string();
    let audit = client.audit_log(None, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, expected);
    assert_eq!(audit[0].reason.as_deref(), Some("who am i"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn no_job_stays_paused_after_resume_however_enqueues_race_a_hundred_pause_resume_cycles(
    pool: PgPool,
) {
    // 16 enqueuers (single inserts and batches, as the API's two paths write) run while
    // `sluicectl` pauses and resumes the kind 100 times; they stop when the cycles do, so
    // the test is bounded by the cycles, not by a clock.
    let url = url_of(&pool);
    // A pool with a place for every task below, so none waits on another for a connection.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let client = JobClient::new(pool.clone());
    enqueue_n(&client, "race", 1).await;
    // An operator cancelling and retrying jobs meanwhile: a retry also picks `queued` or
    // `paused` by the kind (as do the workers' fail, interrupt and rescue, and release).
    let kept: Vec<i64> = client
        .enqueue_batch(
            &(0..4)
                .map(|i| NewJob::new("race", json!({ "kept": i })))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut enqueuers = Vec::new();
    for n in 0..16 {
        let (client, stop) = (client.clone(), stop.clone());
        enqueuers.push(tokio::spawn(async move {
            let mut written = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if n % 2 == 0 {
                    client
                        .enqueue(&NewJob::new("race", json!({ "n": n })))
                        .await
                        .unwrap();
                    written += 1;
                } else {
                    let jobs: Vec<NewJob> = (0..8)
                        .map(|i| NewJob::new("race", json!({ "n": n, "i": i })))
                        .collect();
                    written += client.enqueue_batch(&jobs).await.unwrap().len();
                }
            }
            written
        }));
    }
    // A stand-in for the workers: queued jobs are finished, so the kind's queue (which
    // every pause and resume rewrites) stays short. A job stranded `paused` is never
    // finished by it, so it is still there to count at the end.
    let finisher = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                sqlx::query(
                    "UPDATE jobs SET state = 'completed', finished_at = now()
                      WHERE kind = 'race' AND state = 'queued' AND NOT payload ? 'kept'",
                )
                .execute(&pool)
                .await
                .unwrap();
            }
        })
    };
    let operator = {
        let (pool, stop, kept) = (pool.clone(), stop.clone(), kept.clone());
        tokio::spawn(async move {
            let actor = sluice_common::model::Actor {
                name: "tester",
                reason: None,
            };
            let mut retried = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for id in &kept {
                    storage::cancel_job(&pool, *id, &actor).await.unwrap();
                    storage::retry_job(&pool, *id, &actor).await.unwrap();
                    retried += 1;
                }
            }
            retried
        })
    };
    for cycle in 0..100 {
        let out = ctl(&url, &["pause", "race"]).await;
        assert_eq!(out.code, 0, "pause {cycle}: {out:?}");
        let out = ctl(&url, &["resume", "race"]).await;
        assert_eq!(out.code, 0, "resume {cycle}: {out:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    finisher.await.unwrap();
    assert!(operator.await.unwrap() > 0);
    let mut written = 0;
    for e in enqueuers {
        written += e.await.unwrap();
    }
    let stranded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'race' AND state = 'paused'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'race'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total as usize, written + 1 + kept.len());
    assert!(written > 100, "the enqueuers barely ran: {written}");
    assert_eq!(
        stranded, 0,
        "{stranded} of {total} jobs stayed paused after the last resume"
    );
}

/// A periodic definition as a worker records it (`[periodic.NAME]`).
fn periodic_def(name: &str, schedule: &str) -> sluice_common::storage::PeriodicJob {
    sluice_common::storage::PeriodicJob {
        name: name.into(),
        schedule: schedule.into(),
        timezone: "Europe/Berlin".into(),
        kind: "reports.nightly".into(),
        payload: json!({"scope": "all"}),
        priority: None,
        max_attempts: None,
        next_run_at: None,
        last_tick_at: None,
        last_enqueued_at: None,
        updated_by: None,
        updated_at: chrono::Utc::now(),
        created_at: chrono::Utc::now(),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn periodic_lists_the_recorded_tables_with_their_next_run_and_flags_overdue_ones(
    pool: PgPool,
) {
    let url = url_of(&pool);
    let empty = ctl(&url, &["periodic"]).await;
    assert_eq!(empty.code, 0, "{empty:?}");
    assert!(
        empty.stdout.contains("no periodic jobs recorded"),
        "{}",
        empty.stdout
    );

    sluice_common::storage::record_periodic_jobs(
        &pool,
        "w1",
        &[
            periodic_def("nightly-report", "cron 0 3 * * *"),
            periodic_def("heartbeat", "every 10s"),
        ],
    )
    .await
    .unwrap();
    // One kept by a live worker (next run ahead), one nobody keeps any more.
    sqlx::query(
        "UPDATE periodic_jobs SET next_run_at = CASE name WHEN 'nightly-report'
                THEN now() + interval '5 hours' ELSE now() - interval '10 minutes' END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = ctl(&url, &["periodic"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {}", out.stdout))
            .to_string()
    };
    assert!(
        line("nightly-report").contains("cron 0 3 * * *"),
        "{}",
        out.stdout
    );
    assert!(line("nightly-report").contains("Europe/Berlin"));
    assert!(
        !line("nightly-report").contains("OVERDUE"),
        "{}",
        out.stdout
    );
    assert!(line("heartbeat").contains("OVERDUE"), "{}", out.stdout);

    let json = ctl(&url, &["periodic", "--json"]).await;
    assert_eq!(json.code, 0, "{json:?}");
    let v = json.json();
    let names: Vec<(&str, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["overdue"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, vec![("heartbeat", true), ("nightly-report", false)]);
    assert_eq!(v[1]["kind"], "reports.nightly");
    assert!(v[1]["next_run_at"].is_string());
}
