//! `make bench` for the worker (scripts/bench.d/10-worker.sh): runs the release
//! `sluice-worker` binary against a fresh database and prints each figure beside its target.
//!
//! 1. Burn-down: 20,000 `sluice.noop` jobs enqueued in one statement while the worker is
//!    idle (concurrency 16); throughput from the database's own timestamps (first lease to
//!    last finish), peak RSS sampled from /proc while it runs.
//! 2. Pickup latency: single jobs on an idle worker, one at a time; latency is
//!    `leased_at - created_at` (both stamped by Postgres' clock, so no clock skew).
//! 3. Idle cost: transactions committed in the database by the idle worker over 30 s
//!    (`pg_stat_database.xact_commit`, minus this program's own reads), and idle RSS.

use std::{process::Command, time::Duration};

use sqlx::postgres::PgPoolOptions;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(name: &str, value: String, target: &str, ok: bool) {
    println!(
        "{name:<44} {value:>14}   target {target:<12} {}",
        if ok { "ok" } else { "MISSED" }
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let bin = std::env::var("SLUICE_WORKER_BIN")?;
    let jobs: i64 = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    sluice_common::db::migrate(&pool).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(&bin)
        .env("DATABASE_URL", &url)
        .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE_WORKER_CONCURRENCY", "16")
        .env("SLUICE_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    let ready_url = format!("http://127.0.0.1:{port}/health/ready");
    let client = reqwest::Client::new();
    for i in 0.. {
        if client
            .get(&ready_url)
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        anyhow::ensure!(i < 1000, "worker never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 1. Burn-down.
    sqlx::query(
        "INSERT INTO jobs (kind, payload) SELECT 'sluice.noop', '{}' FROM generate_series(1, $1)",
    )
    .bind(jobs)
    .execute(&pool)
    .await?;
    let mut peak_rss: f64 = 0.0;
    loop {
        peak_rss = peak_rss.max(rss_mib(pid));
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'completed'")
            .fetch_one(&pool)
            .await?;
        if done >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(leased_at))::float8 FROM jobs WHERE state = 'completed'",
    )
    .fetch_one(&pool)
    .await?;
    let rate = jobs as f64 / secs;

    // 2. Pickup latency on an idle worker.
    sqlx::query("DELETE FROM jobs").execute(&pool).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lat = Vec::new();
    for _ in 0..300 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, payload) VALUES ('sluice.noop', '{}') RETURNING id",
        )
        .fetch_one(&pool)
        .await?;
        loop {
            let ms: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM leased_at - created_at)::float8 * 1000 FROM jobs WHERE id = $1 AND state = 'completed'",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await?;
            if let Some(ms) = ms {
                lat.push(ms);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));

    // 3. Idle cost. Pending statistics reach pg_stat_database within ~10 s of a backend
    // going idle, so settle first and measure over a long window.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let xacts = || async {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&pool)
            .await?;
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await
    };
    let before = xacts().await?;
    let window = 30.0;
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    tokio::time::sleep(Duration::from_secs(11)).await; // let the window's stats arrive
    let after = xacts().await?;
    // This program's own statements in between: two reads per sample, each its own xact.
    let idle_qps = ((after - before - 2) as f64 / (window + 11.0)).max(0.0);
    let idle_rss = rss_mib(pid);

    // Drain.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = child.wait()?;

    println!("sluice-worker benchmark (release build, private Postgres, fsync on)");
    line(
        "no-op burn-down, 20k jobs, concurrency 16",
        format!("{rate:.0} jobs/s"),
        ">= 15000",
        rate >= 15_000.0,
    );
    line(
        "enqueue -> handler start, p50",
        format!("{:.2} ms", pct(&lat, 0.5)),
        "<= 1.5 ms",
        pct(&lat, 0.5) <= 1.5,
    );
    line(
        "enqueue -> handler start, p99",
        format!("{:.2} ms", pct(&lat, 0.99)),
        "<= 3 ms",
        pct(&lat, 0.99) <= 3.0,
    );
    line(
        "idle worker database load",
        format!("{idle_qps:.2} q/s"),
        "<= 0.5 q/s",
        idle_qps <= 0.5,
    );
    line(
        "RSS idle",
        format!("{idle_rss:.1} MiB"),
        "<= 15 MiB",
        idle_rss <= 15.0,
    );
    line(
        "RSS peak during burn-down",
        format!("{peak_rss:.1} MiB"),
        "<= 30 MiB",
        peak_rss <= 30.0,
    );
    println!("worker exit after SIGTERM: {status}");
    Ok(())
}
