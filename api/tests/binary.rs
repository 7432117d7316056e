#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The real `sluice-api` binary as a child process: real signals, real HTTP, real exit
//! codes. Every wait is bounded and synchronised on an event (readiness, a metric, a log
//! line), never on a fixed sleep.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const BIN: &str = env!("CARGO_BIN_EXE_sluice-api");
const ENQ: &str = "enq-secret-0123456789";
const ADM: &str = "adm-secret-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The URL of the test's own database (sqlx::test made it from `DATABASE_URL`).
fn db_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let db = pool.connect_options().get_database().unwrap().to_string();
    let (prefix, rest) = base.rsplit_once('/').unwrap();
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{prefix}/{db}{query}")
}

struct Api {
    child: Child,
    base: String,
    metrics: String,
    lines: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Api {
    fn spawn(database_url: &str, env: &[(&str, &str)]) -> Api {
        let port = free_port();
        let metrics_port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.env("DATABASE_URL", database_url)
            .env("SLUICE_API_ADDR", format!("127.0.0.1:{port}"))
            .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env(
                "SLUICE_API_TOKENS",
                format!("enqueue:{ENQ},admin:ops:{ADM}"),
            )
            .env("SLUICE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for reader in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Api {
            child,
            base: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            lines,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "never ready; log: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn enqueue(&self) -> i64 {
        let r = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .bearer_auth(ENQ)
            .json(&json!({"kind": "slow", "payload": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// Waits until the API reports `n` requests in flight.
    async fn wait_in_flight(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("sluice_http_requests_in_flight {n}");
        loop {
            if let Ok(r) = self.http.get(&self.metrics).send().await {
                if r.text()
                    .await
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == want)
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "never {n} in flight");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "still running; log: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn finish_job(pool: &PgPool, id: i64) {
    sqlx::query("UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('sluice_done', $1)")
        .bind(id.to_string())
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sigterm_flips_readiness_at_once_serves_through_the_drain_delay_and_finishes_the_long_poll(
    pool: PgPool,
) {
    let mut api = Api::spawn(
        &db_url(&pool),
        &[
            ("SLUICE_DRAIN_DELAY", "2s"),
            ("SLUICE_SHUTDOWN_TIMEOUT", "20s"),
        ],
    );
    api.wait_ready().await;
    let id = api.enqueue().await;
    let poll = {
        let (http, url) = (
            api.http.clone(),
            format!("{}/v1/jobs/{id}?wait=30s", api.base),
        );
        tokio::spawn(async move { http.get(url).bearer_auth(ENQ).send().await })
    };
    api.wait_in_flight(1).await;

    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let ready_url = format!("{}/health/ready", api.base);
    assert_eq!(probe.get(&ready_url).send().await.unwrap().status(), 200);
    let signalled = Instant::now();
    api.signal("-TERM");
    loop {
        let r = probe.get(&ready_url).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"status": "draining"})
            );
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "readiness never flipped"
        );
    }
    let flip = signalled.elapsed();
    assert!(
        flip < Duration::from_millis(50),
        "readiness flipped after {flip:?}"
    );

    // During the drain delay new requests are still served.
    api.wait_log("Shutting down API...").await;
    api.enqueue().await;

    // After it, the listener is closed but the long-poll is still in flight.
    api.wait_log("no longer accepting").await;
    finish_job(&pool, id).await;
    let resp = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["state"], "completed");
    assert_eq!(api.wait_exit(Duration::from_secs(10)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_request_longer_than_the_shutdown_budget_is_cut_off_named_in_the_log_and_exits_1(
    pool: PgPool,
) {
    let mut api = Api::spawn(&db_url(&pool), &[("SLUICE_SHUTDOWN_TIMEOUT", "1s")]);
    api.wait_ready().await;
    let id = api.enqueue().await;
    let _poll = {
        let (http, url) = (
            api.http.clone(),
            format!("{}/v1/jobs/{id}?wait=30s", api.base),
        );
        tokio::spawn(async move { http.get(url).bearer_auth(ENQ).send().await })
    };
    api.wait_in_flight(1).await;
    let signalled = Instant::now();
    api.signal("-TERM");
    assert_eq!(api.wait_exit(Duration::from_secs(10)).await, 1);
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let path = format!("/v1/jobs/{id}");
    assert!(
        api.log()
            .iter()
            .any(|l| l.contains("cut off") && l.contains(&path)),
        "{:?}",
        api.log()
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn keep_alive_connections_are_closed_between_responses_never_mid_response(pool: PgPool) {
    let mut api = Api::spawn(&db_url(&pool), &[]);
    api.wait_ready().await;
    let id = api.enqueue().await;
    let addr = api.base.trim_start_matches("http://").to_string();

    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut idle).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let mut busy = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET /v1/jobs/{id}?wait=30s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ENQ}\r\n\r\n"
    );
    busy.write_all(req.as_bytes()).await.unwrap();
    api.wait_in_flight(1).await;

    api.signal("-TERM");
    // The idle connection is closed cleanly: EOF, not a reset.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);

    // The busy one gets its whole response, marked `Connection: close`, then EOF.
    api.wait_log("no longer accepting").await;
    finish_job(&pool, id).await;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["state"], "completed");
    assert_eq!(api.wait_exit(Duration::from_secs(10)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_second_signal_exits_at_once(pool: PgPool) {
    let mut api = Api::spawn(&db_url(&pool), &[("SLUICE_DRAIN_DELAY", "30s")]);
    api.wait_ready().await;
    api.signal("-TERM");
    api.wait_log("Shutting down API...").await;
    let second = Instant::now();
    api.signal("-INT");
    assert_eq!(api.wait_exit(Duration::from_secs(5)).await, 130);
    assert!(second.elapsed() < Duration::from_secs(2));
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    const OK: &str = "admin:0123456789abcdef0123";
    let cases: [(&str, &[(&str, &str)]); 7] = [
        ("SLUICE_API_TOKENS", &[]),
        (
            "SLUICE_API_TOKENS",
            &[("SLUICE_API_TOKENS", "root:secret-0123456789")],
        ),
        (
            "SLUICE_API_TOKENS",
            &[("SLUICE_API_TOKENS", "admin:REPLACE_ME_ADMIN_TOKEN")],
        ),
        ("SLUICE_API_TOKENS", &[("SLUICE_API_TOKENS", "admin:")]),
        (
            "SLUICE_DRAIN_DELAY",
            &[("SLUICE_API_TOKENS", OK), ("SLUICE_DRAIN_DELAY", "soon")],
        ),
        (
            "SLUICE_API_ADDR",
            &[("SLUICE_API_TOKENS", OK), ("SLUICE_API_ADDR", "nowhere")],
        ),
        (
            "SLUICE_API_BODY_LIMIT",
            &[("SLUICE_API_TOKENS", OK), ("SLUICE_API_BODY_LIMIT", "huge")],
        ),
    ];
    for (var, env) in cases {
        let mut cmd = Command::new(BIN);
        cmd.env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("SLUICE_API_TOKENS")
            .env_remove("SLUICE_INSECURE_NO_AUTH");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        // A secret never reaches the log, whatever is wrong with it.
        for (k, v) in env {
            if *k == "SLUICE_API_TOKENS" {
                let secret = v.rsplit(':').next().unwrap();
                assert!(
                    secret.is_empty() || !stderr.contains(secret),
                    "{stderr} quotes the token"
                );
            }
        }
    }
}

impl Api {
    /// Polls readiness until `pred` holds for its status code and body.
    async fn wait_readiness(&self, what: &str, pred: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
            {
                let code = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if pred(code, &body) {
                    return body;
                }
            }
            assert!(
                Instant::now() < deadline,
                "readiness never {what}; last lines of the log: {:?}",
                self.log().iter().rev().take(20).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[sqlx::test(migrations = false)]
async fn readiness_says_schema_missing_on_an_unmigrated_database_until_it_is_migrated(
    pool: PgPool,
) {
    let api = Api::spawn(&db_url(&pool), &[]);
    // The first completed check reports the missing schema (with what to do about it)
    // instead of 200 over a database where every enqueue would fail.
    let body = api
        .wait_readiness("schema_missing", |code, body| {
            assert_ne!(code, 200, "ready on an unmigrated database: {body}");
            body["status"] == "schema_missing"
        })
        .await;
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("sluicectl migrate"),
        "{body}"
    );
    api.wait_log("DATABASE_URL: the database has no Sluice schema")
        .await;

    MIGRATOR.run(&pool).await.unwrap();
    api.wait_readiness("ready after migrating", |code, body| {
        if code != 200 {
            assert!(
                body["status"] == "schema_missing",
                "unexpected readiness while migrating: {body}"
            );
        }
        code == 200
    })
    .await;
    api.wait_log("database reachable and migrated").await;
    // The change was logged once, not once per check.
    let warnings = api
        .log()
        .iter()
        .filter(|l| l.contains("has no Sluice schema"))
        .count();
    assert_eq!(warnings, 1, "{:?}", api.log());
}

#[sqlx::test(migrations = false)]
async fn readiness_says_schema_outdated_when_the_database_is_older_than_the_binary(pool: PgPool) {
    // An older release's schema: the migrations table ends at an older version.
    MIGRATOR.run(&pool).await.unwrap();
    let newest = sluice_common::db::required_schema_version();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (1, 'an older release', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let api = Api::spawn(&db_url(&pool), &[]);
    let body = api
        .wait_readiness("schema_outdated", |code, body| {
            assert_ne!(code, 200, "ready on an outdated schema: {body}");
            body["status"] == "schema_outdated"
        })
        .await;
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains(&newest.to_string()),
        "{body}"
    );
}

#[tokio::test]
async fn readiness_names_the_reason_when_the_database_is_unreachable() {
    let api = Api::spawn("postgres://postgres@127.0.0.1:1/none", &[]);
    let body = api
        .wait_readiness("database_unavailable with a reason", |_, body| {
            body["status"] == "database_unavailable"
                && body["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("connect:"))
        })
        .await;
    assert!(
        body["reason"].as_str().unwrap().contains("refused"),
        "{body}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn systemd_hears_ready_then_stopping_from_the_api(pool: PgPool) {
    let path = std::env::temp_dir().join(format!(
        "sluice-api-notify-{}-{}.sock",
        std::process::id(),
        free_port()
    ));
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut api = Api::spawn(&db_url(&pool), &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // READY=1 means the listener is bound: the API answers right away.
    let r = api
        .http
        .get(format!("{}/health/live", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.wait_ready().await;
    api.signal("-TERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(api.wait_exit(Duration::from_secs(20)).await, 0);
    let _ = std::fs::remove_file(path);
}
