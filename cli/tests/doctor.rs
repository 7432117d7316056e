#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! `sluicectl doctor` on seeded databases: healthy, a lease expired 15 minutes ago with
//! no worker to rescue it, and a session idle in transaction past the threshold. The real
//! binary as a child process, a real Postgres database per test.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_test_support::{cli, cli::Out, url_of};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::Command;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const BIN: &str = env!("CARGO_BIN_EXE_sluicectl");

/// The warning codes of a `--json` report.
trait Codes {
    fn codes(&self) -> Vec<String>;
}

impl Codes for Out {
    fn codes(&self) -> Vec<String> {
        self.json()["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["code"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn doctor(url: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.arg("doctor")
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("SLUICE_RETENTION_COMPLETED")
        .env_remove("SLUICE_RETENTION_FAILED")
        .env_remove("SLUICE_RETENTION_CANCELLED")
        .env_remove("SLUICE_HANDLERS_FILE")
        .env_remove("SLUICE_DOCTOR_IDLE_TX_WARN");
    cli::run(cmd, Duration::from_secs(60)).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn doctor_says_healthy_and_exits_0_on_a_healthy_database(pool: PgPool) {
    // Some ordinary traffic: queued, running (lease valid), finished jobs.
    sqlx::query("INSERT INTO jobs (kind) SELECT 'mail.send' FROM generate_series(1, 50)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs (kind, state, finished_at) SELECT 'mail.send', 'completed', now() - interval '1 hour' FROM generate_series(1, 50)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs (kind, state, leased_by, leased_at, lease_expires_at, lease_token) VALUES ('mail.send', 'processing', 'w:1', now(), now() + interval '5 minutes', 1)")
        .execute(&pool)
        .await
        .unwrap();
    let url = url_of(&pool);
    let out = doctor(&url, &["--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let j = out.json();
    assert_eq!(j["status"], "healthy");
    assert!(j["table"]["total_bytes"].as_i64().unwrap() > 0);
    assert!(j["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == "jobs_claim_idx"));
    assert_eq!(j["retention"]["settings"]["defaults"]["completed"], "1d");
    assert_eq!(j["retention"]["settings"]["defaults"]["failed"], "7d");
    assert!(j["notification_queue_usage"].as_f64().unwrap() < 0.5);

    let text = doctor(&url, &[]).await;
    assert_eq!(text.code, 0, "{text:?}");
    for needle in [
        "Table jobs",
        "dead",
        "last autovacuum",
        "Oldest transactions holding back vacuum",
        "NOTIFY queue usage",
        "Retention in effect",
        "healthy",
    ] {
        assert!(text.stdout.contains(needle), "{needle}: {}", text.stdout);
    }

    // Retention settings are read from the environment, like the worker's.
    let out = Command::new(BIN)
        .args(["doctor", "--json"])
        .env("DATABASE_URL", &url)
        .env("SLUICE_RETENTION_COMPLETED", "30m")
        .env("SLUICE_RETENTION_FAILED", "off")
        .output()
        .await
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["retention"]["settings"]["defaults"]["completed"], "30m");
    assert_eq!(j["retention"]["settings"]["defaults"]["failed"], "off");
    // 30m retention and completed rows an hour old, but only 1h past the window warns.
    assert_eq!(out.status.code(), Some(0));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn doctor_warns_and_exits_1_about_a_lease_expired_15_minutes_ago(pool: PgPool) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, state, attempts, leased_by, leased_at, lease_expires_at, lease_token)
         VALUES ('search.reindex', 'processing', 1, 'gone-host:4242', now() - interval '20 minutes',
                 now() - interval '15 minutes', 7) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let url = url_of(&pool);
    let out = doctor(&url, &["--json"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.codes(), vec!["expired_leases"]);
    let j = out.json();
    assert_eq!(j["expired_leases"]["count"], 1);
    assert_eq!(j["expired_leases"]["oldest"][0]["id"], id);
    assert_eq!(
        j["expired_leases"]["oldest"][0]["leased_by"],
        "gone-host:4242"
    );
    let text = doctor(&url, &[]).await;
    assert_eq!(text.code, 1);
    assert!(text.stdout.contains("[expired_leases]"), "{}", text.stdout);
    assert!(text.stdout.contains("gone-host:4242"), "{}", text.stdout);
    assert!(text.stderr.contains("1 warning"), "{}", text.stderr);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn doctor_warns_about_a_session_idle_in_transaction_past_the_threshold(pool: PgPool) {
    // The default threshold is 60s; the test sets 1s and holds a transaction (with an
    // xid, as a stuck migration or report would) until doctor reports it.
    let mut stuck = PgConnection::connect_with(
        &(*pool.connect_options())
            .clone()
            .application_name("nightly-report"),
    )
    .await
    .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut stuck)
        .await
        .unwrap();
    let mut tx = stuck.begin().await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut *tx)
        .await
        .unwrap();
    let url = url_of(&pool);
    // Not yet past the default.
    let out = doctor(&url, &["--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let holders = out.json()["vacuum_horizon"].clone();
    assert!(
        holders.as_array().unwrap().iter().any(|h| h["pid"] == pid),
        "the open transaction is listed as a horizon holder: {holders}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = doctor(&url, &["--json", "--idle-tx-warn", "1s"]).await;
        if out.code == 1 {
            break out;
        }
        assert_eq!(out.code, 0, "{out:?}");
        assert!(Instant::now() < deadline, "never warned: {out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(out.codes(), vec!["idle_in_transaction"]);
    let w = &out.json()["warnings"][0]["message"];
    let w = w.as_str().unwrap();
    assert!(w.contains(&format!("pid {pid}")), "{w}");
    assert!(w.contains("nightly-report"), "{w}");
    assert!(w.contains("idle in transaction"), "{w}");
    tx.rollback().await.unwrap();
    let out = doctor(&url, &["--json", "--idle-tx-warn", "1s"]).await;
    assert_eq!(out.code, 0, "healthy again once it ends: {out:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn doctor_refuses_a_bad_threshold_with_exit_2(pool: PgPool) {
    let out = doctor(&url_of(&pool), &["--idle-tx-warn", "60"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("idle-tx-warn"), "{}", out.stderr);
    let out = Command::new(BIN)
        .arg("doctor")
        .env("DATABASE_URL", url_of(&pool))
        .env("SLUICE_RETENTION_FAILED", "a while")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_RETENTION_FAILED"));
}
