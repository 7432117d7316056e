#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The real `sluice-api` binary as a child process: real signals, real HTTP, real exit
//! codes. Every wait is bounded and synchronised on an event (readiness, a metric, a log
//! line), never on a fixed sleep.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sluice_test_support::{free_port, url_of, Process};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const BIN: &str = env!("CARGO_BIN_EXE_sluice-api");
const ENQ: &str = "enq-secret";
const ADM: &str = "adm-secret";

/// A running `sluice-api` (a [`Process`] with its addresses and a client).
struct Api {
    /// The process, its output kept.
    process: Process,
    /// `http://127.0.0.1:PORT` of the API.
    base: String,
    /// The metrics listener's `/metrics` URL.
    metrics: String,
    /// A client with a generous timeout, so no request can hang a test.
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
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Api {
            process: Process::spawn(cmd),
            base: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    async fn wait_ready(&mut self) {
        let url = format!("{}/health/ready", self.base);
        self.process
            .wait_http(&url, 200, None, Duration::from_secs(30))
            .await;
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
        let deadline = Instant::now() + Duration::from_secs(30);
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

    fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    fn log(&self) -> Vec<String> {
        self.process.lines()
    }

    async fn wait_log(&self, needle: &str) {
        self.process.wait_log(needle, Duration::from_secs(30)).await;
    }

    async fn wait_exit(&mut self, limit: Duration) -> i32 {
        self.process.wait_exit(limit).await.code().unwrap_or(-1)
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

/// Holds the kind's `job_kinds` row locked until the returned transaction ends: a pause
/// of that kind then blocks in the database, a request that lasts as long as the test says.
async fn hold_kind(pool: &PgPool, kind: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    sqlx::query("INSERT INTO job_kinds (kind) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(kind)
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM job_kinds WHERE kind = $1 FOR UPDATE")
        .bind(kind)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until `n` of the API's backends wait on a lock; returns their pids.
async fn wait_blocked(pool: &PgPool, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'sluice-api'
                AND wait_event_type = 'Lock'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if pids.len() >= n {
            return pids;
        }
        assert!(Instant::now() < deadline, "never {n} blocked: {pids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sigterm_flips_readiness_answers_every_long_poll_at_once_and_serves_through_the_drain_delay(
    pool: PgPool,
) {
    // The budget (30 s) is shorter than the polls' wait (50 s): exit 0 proves the drain
    // did not wait on them.
    let mut api = Api::spawn(
        &url_of(&pool),
        &[
            ("SLUICE_DRAIN_DELAY", "5s"),
            ("SLUICE_SHUTDOWN_TIMEOUT", "30s"),
            ("SLUICE_API_MAX_WAIT", "60s"),
        ],
    );
    api.wait_ready().await;
    let id = api.enqueue().await;
    let polls: Vec<_> = (0..5)
        .map(|_| {
            let (http, url) = (
                api.http.clone(),
                format!("{}/v1/jobs/{id}?wait=50s", api.base),
            );
            tokio::spawn(async move { http.get(url).bearer_auth(ENQ).send().await })
        })
        .collect();
    api.wait_in_flight(5).await;

    let probe = reqwest::Client::new();
    let ready_url = format!("{}/health/ready", api.base);
    assert_eq!(probe.get(&ready_url).send().await.unwrap().status(), 200);
    api.signal(libc::SIGTERM);
    // How fast it flips is a figure for `make bench`; here only that it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = probe.get(&ready_url).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"status": "draining"})
            );
            break;
        }
        assert!(Instant::now() < deadline, "readiness never flipped");
    }

    // Every long-poll is answered with the job as it stands.
    for poll in polls {
        let resp = tokio::time::timeout(Duration::from_secs(20), poll)
            .await
            .expect("a long-poll was not answered at SIGTERM")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap()["state"], "queued");
    }

    // During the drain delay new requests are still served, marked `Connection: close`.
    api.wait_log("Shutting down API...").await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/jobs", api.base))
        .bearer_auth(ENQ)
        .json(&json!({"kind": "slow", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(api.wait_exit(Duration::from_secs(60)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_request_longer_than_the_shutdown_budget_is_cut_off_named_in_the_log_and_exits_1(
    pool: PgPool,
) {
    let mut api = Api::spawn(&url_of(&pool), &[("SLUICE_SHUTDOWN_TIMEOUT", "1s")]);
    api.wait_ready().await;
    let _held = hold_kind(&pool, "slow").await;
    let _pause = {
        let (http, url) = (
            api.http.clone(),
            format!("{}/v1/kinds/slow/pause", api.base),
        );
        tokio::spawn(async move { http.post(url).bearer_auth(ADM).send().await })
    };
    wait_blocked(&pool, 1).await;
    let signalled = Instant::now();
    api.signal(libc::SIGTERM);
    assert_eq!(api.wait_exit(Duration::from_secs(30)).await, 1);
    assert!(signalled.elapsed() >= Duration::from_millis(900));
    assert!(
        api.log()
            .iter()
            .any(|l| l.contains("cut off") && l.contains("/v1/kinds/slow/pause")),
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
    let mut api = Api::spawn(&url_of(&pool), &[]);
    api.wait_ready().await;
    let addr = api.base.trim_start_matches("http://").to_string();

    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut idle).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let held = hold_kind(&pool, "slow").await;
    let mut busy = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/kinds/slow/pause HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADM}\r\ncontent-length: 0\r\n\r\n"
    );
    busy.write_all(req.as_bytes()).await.unwrap();
    wait_blocked(&pool, 1).await;

    api.signal(libc::SIGTERM);
    // The idle connection is closed cleanly: EOF, not a reset.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);

    // The busy one gets its whole response, marked `Connection: close`, then EOF.
    api.wait_log("no longer accepting").await;
    held.commit().await.unwrap();
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
    assert_eq!(body["paused"], true);
    assert_eq!(api.wait_exit(Duration::from_secs(10)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_second_signal_exits_at_once(pool: PgPool) {
    let mut api = Api::spawn(&url_of(&pool), &[("SLUICE_DRAIN_DELAY", "30s")]);
    api.wait_ready().await;
    api.signal(libc::SIGTERM);
    api.wait_log("Shutting down API...").await;
    // Well inside the 30 s drain delay it would otherwise wait out.
    api.signal(libc::SIGINT);
    assert_eq!(api.wait_exit(Duration::from_secs(20)).await, 130);
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

#[sqlx::test(migrator = "MIGRATOR")]
async fn half_sent_request_heads_at_sigterm_are_closed_and_the_drain_ends_clean(pool: PgPool) {
    // A budget of 60 s: were the half-sent heads kept, the drain would end at it, exit 1.
    let mut api = Api::spawn(
        &url_of(&pool),
        &[
            ("SLUICE_DRAIN_DELAY", "1s"),
            ("SLUICE_SHUTDOWN_TIMEOUT", "60s"),
        ],
    );
    api.wait_ready().await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head: &[u8] = if i % 2 == 0 {
            b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bear"
        } else {
            b"GET /v1/jo"
        };
        s.write_all(head).await.unwrap();
        slow.push(s);
    }
    // Connections are accepted in order: once this one is answered, all of them are open.
    api.wait_ready().await;
    api.signal(libc::SIGTERM);
    assert_eq!(api.wait_exit(Duration::from_secs(40)).await, 0);
    for mut s in slow {
        let mut rest = Vec::new();
        // Closed by the server: EOF (or a reset), never left hanging.
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("a half-sent connection was left open");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_terminated_connection_and_a_statement_timeout_are_503_with_retry_after_never_500(
    pool: PgPool,
) {
    let mut api = Api::spawn(&url_of(&pool), &[("SLUICE_DB_STATEMENT_TIMEOUT", "2s")]);
    api.wait_ready().await;
    let id = api.enqueue().await;
    let check = |r: reqwest::Response, what: &'static str| async move {
        assert_eq!(r.status(), 503, "{what}");
        assert!(r.headers().contains_key("retry-after"), "{what}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
    };

    // Every statement on `jobs` waits behind this lock while the test holds it.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    // A read whose backend is terminated under it (a failover, an operator's kill).
    let read = {
        let (http, url) = (api.http.clone(), format!("{}/v1/jobs/{id}", api.base));
        tokio::spawn(async move { http.get(url).bearer_auth(ENQ).send().await.unwrap() })
    };
    let pids = wait_blocked(&pool, 1).await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid")
        .bind(&pids)
        .execute(&pool)
        .await
        .unwrap();
    check(read.await.unwrap(), "terminated read").await;

    // Reads, a list, an enqueue and a batch that outlive the statement timeout.
    let http = api.http.clone();
    let base = api.base.clone();
    let requests = vec![
        http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(ENQ),
        http.get(format!("{base}/v1/jobs?state=queued"))
            .bearer_auth(ENQ),
        http.post(format!("{base}/v1/jobs"))
            .bearer_auth(ENQ)
            .json(&json!({"kind": "slow", "payload": {}})),
        http.post(format!("{base}/v1/jobs/batch"))
            .bearer_auth(ENQ)
            .json(&json!({"jobs": [{"kind": "slow", "payload": {}}]})),
        http.get(format!("{base}/v1/stats")).bearer_auth(ENQ),
    ];
    let answers: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(async move { r.send().await.unwrap() }))
        .collect();
    for a in answers {
        check(a.await.unwrap(), "statement timeout").await;
    }
    lock.rollback().await.unwrap();

    // And the API is back to normal once the database is.
    api.wait_ready().await;
    let r = api
        .http
        .get(format!("{}/v1/jobs/{id}", api.base))
        .bearer_auth(ENQ)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.signal(libc::SIGTERM);
    assert_eq!(api.wait_exit(Duration::from_secs(30)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_pool_of_one_connection_is_ready_serves_and_wakes_long_polls(pool: PgPool) {
    let mut api = Api::spawn(&url_of(&pool), &[("SLUICE_DB_MAX_CONNECTIONS", "1")]);
    api.wait_ready().await;
    let id = api.enqueue().await;
    let poll = {
        let (http, url) = (
            api.http.clone(),
            format!("{}/v1/jobs/{id}?wait=30s", api.base),
        );
        tokio::spawn(async move { http.get(url).bearer_auth(ENQ).send().await.unwrap() })
    };
    api.wait_in_flight(1).await;
    // The waiting poll holds no connection: the one the pool has still serves.
    api.enqueue().await;
    finish_job(&pool, id).await;
    let resp = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["state"], "completed");
    api.signal(libc::SIGTERM);
    assert_eq!(api.wait_exit(Duration::from_secs(30)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn clients_that_hang_up_mid_batch_leave_every_batch_whole_and_no_connection_mid_transaction(
    pool: PgPool,
) {
    let mut api = Api::spawn(&url_of(&pool), &[]);
    api.wait_ready().await;
    let addr = api.base.trim_start_matches("http://").to_string();
    const BATCH: usize = 40;
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let addr = addr.clone();
            tokio::spawn(async move {
                for i in 0..15 {
                    let tag = format!("{c}-{i}");
                    let jobs: Vec<Value> = (0..BATCH)
                        .map(|n| json!({"kind": "abort", "payload": {"batch": tag, "n": n}}))
                        .collect();
                    let body = json!({ "jobs": jobs }).to_string();
                    let req = format!(
                        "POST /v1/jobs/batch HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ENQ}\r\n\
                         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                    s.write_all(req.as_bytes()).await.unwrap();
                    if (c + i) % 3 != 0 {
                        // Hang up at once, mid-request, with a reset rather than a FIN.
                        let _ = s.set_zero_linger();
                        drop(s);
                    } else {
                        let text = read_response(&mut s).await;
                        assert!(text.starts_with("HTTP/1.1 201"), "{text}");
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // Detached batches finish by themselves; nothing is in flight once they have.
    api.wait_in_flight(0).await;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT payload->>'batch', count(*) FROM jobs WHERE kind = 'abort' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (tag, n) in &counts {
        assert_eq!(*n as usize, BATCH, "batch {tag} was written in part");
    }
    let notices: Vec<String> = api
        .log()
        .into_iter()
        .filter(|l| l.contains("transaction in progress"))
        .collect();
    assert!(
        notices.is_empty(),
        "{} transaction-state notices, the first: {:?}",
        notices.len(),
        notices.iter().take(3).collect::<Vec<_>>()
    );
    api.signal(libc::SIGTERM);
    assert_eq!(api.wait_exit(Duration::from_secs(30)).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn readiness_follows_the_database_down_and_back_up(pool: PgPool) {
    let mut api = Api::spawn(&url_of(&pool), &[]);
    api.wait_ready().await;
    let id = api.enqueue().await;
    // From the server's main database: a database cannot refuse connections to itself.
    let db = pool.connect_options().get_database().unwrap().to_string();
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&std::env::var("DATABASE_URL").unwrap())
            .await
            .unwrap();
    let set = |allow: bool| format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {allow}");
    sqlx::query(&set(false)).execute(&mut admin).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND application_name = 'sluice-api'",
    )
    .bind(&db)
    .execute(&mut admin)
    .await
    .unwrap();

    // Down: readiness says so, and requests are 503 with Retry-After, not 500.
    let ready_url = format!("{}/health/ready", api.base);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.http.get(&ready_url).send().await.unwrap();
        if r.status() == 503 {
            let body = r.json::<Value>().await.unwrap();
            assert_eq!(body["status"], "database_unavailable", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readiness never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = api
        .http
        .get(format!("{}/v1/jobs/{id}", api.base))
        .bearer_auth(ENQ)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", api.log());
    assert!(r.headers().contains_key("retry-after"));

    // Back up: ready again, and serving.
    sqlx::query(&set(true)).execute(&mut admin).await.unwrap();
    api.wait_ready().await;
    let r = api
        .http
        .get(format!("{}/v1/jobs/{id}", api.base))
        .bearer_auth(ENQ)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.signal(libc::SIGTERM);
    assert_eq!(api.wait_exit(Duration::from_secs(30)).await, 0);
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
    let api = Api::spawn(&url_of(&pool), &[]);
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
        // Migrations apply one by one, so a check between two of them sees an
        // outdated schema.
        if code != 200 {
            assert!(
                body["status"] == "schema_missing" || body["status"] == "schema_outdated",
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
    let api = Api::spawn(&url_of(&pool), &[]);
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
    let mut api = Api::spawn(&url_of(&pool), &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
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
    api.signal(libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(api.wait_exit(Duration::from_secs(20)).await, 0);
    let _ = std::fs::remove_file(path);
}
