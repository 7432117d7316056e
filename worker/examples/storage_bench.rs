//! `make bench` for storage (scripts/bench.d/30-storage.sh): the release `sluice-worker`
//! and `sluice-api` against a fresh database; each figure printed beside its target.
//!
//! 1. Drain: `BENCH_DRAIN_JOBS` (20 000) `sluice.noop` jobs on an empty table, then again
//!    with `BENCH_FINISHED` (2 000 000) finished rows present (one generate_series INSERT,
//!    then VACUUM ANALYZE). Target: empty / full ≤ 1.1. Throughput is from the database's
//!    own timestamps (first lease to last finish). `BENCH_COMPARE_NO_COUNTERS=1` also
//!    drains once with the counter triggers dropped, to show what they cost.
//! 2. `GET /v1/stats` with the finished rows present: `BENCH_STATS_REQUESTS` (300)
//!    sequential requests on one keep-alive connection. Target p50 ≤ 10 ms.
//! 3. Stress: `BENCH_STRESS_SECS` (300) at a fixed offered rate of half the measured drain
//!    capacity, with retention `BENCH_STRESS_RETENTION` (1m) so the table reaches a steady
//!    size; first clean, then with a session idle in transaction holding an xid for
//!    `BENCH_IDLE_TX_SECS` (120) in the middle. Per `BENCH_WINDOW_SECS` (10) window:
//!    completed jobs/s (target ≥ 95% of offered), enqueue→start p50/p99 (target p99 ≤
//!    100 ms), dead tuples and table size (reported). Completions are counted by
//!    `finished_at` (the completion statement's start) when each window closes, so a
//!    window whose completions commit late (slow WAL fsync) shows fewer than ran.
//!
//! `BENCH_STORAGE_PART` picks a part: `drain` (1 and 2: scripts/bench.d/30-storage.sh),
//! `stress` (3 only, after one empty-table drain to measure the capacity it offers half
//! of: scripts/bench.d/35-stress.sh), or `all` (the default). The stress part also gives
//! issue 11's verdicts: completed jobs/s in every window while the session is held within
//! 10 % of the clean run's mean; every window that starts 30 s or more after the session
//! ends back at the clean figures (done/s within 10 %, p99 ≤ 1.2× the clean run's worst);
//! the clean run's table size flat (≤ 1.2× growth) once the retention window, one
//! `autovacuum_naptime` (dead row versions wait that long for autovacuum) and two windows
//! have passed (growth after the retention window alone is reported too). Its enqueue→start latency is `leased_at − created_at` (database
//! stamps; the exact client→handler figure is in 10-worker.sh).
//!
//! For a closer look: `BENCH_STRESS_RATE` offers a fixed rate instead of half the measured
//! capacity, `BENCH_STRESS_SKIP_CLEAN=1` runs only the held stress.
//!
//! Run it tiny to check it works, e.g. `BENCH_DRAIN_JOBS=2000 BENCH_FINISHED=50000
//! BENCH_STRESS_SECS=30 BENCH_IDLE_TX_SECS=10 BENCH_WINDOW_SECS=5`.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(name: &str, value: String, target: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "(report)",
    };
    println!("{name:<46} {value:>16}   target {target:<14} {verdict}");
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/health/ready");
    let client = reqwest::Client::new();
    for _ in 0..2000 {
        if client
            .get(&url)
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{url} never became ready")
}

async fn start_worker(url: &str, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let bin = std::env::var("SLUICE_WORKER_BIN")?;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.env("DATABASE_URL", url)
        .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE_WORKER_CONCURRENCY", "16")
        .env("SLUICE_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let p = Proc(cmd.spawn()?);
    wait_ready(port).await?;
    Ok(p)
}

/// Drains `jobs` no-op jobs enqueued in one statement; jobs/s by the database's clock.
async fn drain(pool: &PgPool, jobs: i64) -> anyhow::Result<f64> {
    let first: i64 = sqlx::query_scalar(
        "WITH i AS (INSERT INTO jobs (kind, payload) SELECT 'sluice.noop', '{}' FROM generate_series(1, $1) RETURNING id)
         SELECT min(id) FROM i",
    )
    .bind(jobs)
    .fetch_one(pool)
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    // Literal bounds, so the planner sees a short primary-key range (a parameter could get
    // a generic plan that walks every finished row of the kind, on every poll).
    let poll = format!(
        "SELECT count(*) FROM jobs WHERE id BETWEEN {first} AND {} AND state = 'completed'",
        first + jobs - 1
    );
    loop {
        let done: i64 = sqlx::query_scalar(&poll).fetch_one(pool).await?;
        if done >= jobs {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "drain did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(leased_at))::float8 FROM jobs WHERE id BETWEEN $1 AND $2",
    )
    .bind(first)
    .bind(first + jobs - 1)
    .fetch_one(pool)
    .await?;
    Ok(jobs as f64 / secs)
}

/// One stress window's figures.
struct Window {
    end_s: f64,
    completed_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    dead: i64,
    size_mib: f64,
    idle_tx: bool,
}

/// Offers `rate` jobs/s for `secs`, holding an xid in an idle transaction for `idle_secs`
/// in the middle when `idle_secs > 0`; samples every `window` seconds.
async fn stress(
    pool: &PgPool,
    url: &str,
    worker_env: &[(&str, &str)],
    rate: f64,
    secs: u64,
    idle_secs: u64,
    window: u64,
) -> anyhow::Result<Vec<Window>> {
    // A fresh table and a fresh worker (no lease of the previous run outlives the TRUNCATE).
    sqlx::query("TRUNCATE jobs").execute(pool).await?;
    sqlx::query("ANALYZE jobs").execute(pool).await?;
    let worker = start_worker(url, worker_env).await?;
    let started = Instant::now();
    let total = Duration::from_secs(secs);
    let stop = tokio_util::sync::CancellationToken::new();

    // The load: a batch every 20 ms, so the rate is smooth at this granularity.
    let load = {
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tick = Duration::from_millis(20);
            let mut owed = 0.0;
            let mut next = Instant::now();
            while !stop.is_cancelled() {
                owed += rate * tick.as_secs_f64();
                let n = owed.floor() as i64;
                owed -= n as f64;
                if n > 0 {
                    let _ = sqlx::query(
                        "INSERT INTO jobs (kind, payload) SELECT 'sluice.noop', '{\"stress\":1}' FROM generate_series(1, $1)",
                    )
                    .bind(n)
                    .execute(&pool)
                    .await;
                }
                next += tick;
                tokio::time::sleep_until(next.into()).await;
            }
        })
    };

    // The session that forgets to commit: holds an xid (so the vacuum horizon) open.
    let idle = if idle_secs > 0 {
        let url = url.to_string();
        let begin = total.saturating_sub(Duration::from_secs(idle_secs)) / 2;
        let hold = Duration::from_secs(idle_secs);
        Some(tokio::spawn(async move {
            tokio::time::sleep(begin).await;
            let mut conn = PgConnection::connect(&url).await?;
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT txid_current()")
                .execute(&mut *tx)
                .await?;
            tokio::time::sleep(hold).await;
            tx.rollback().await?;
            Ok::<_, anyhow::Error>(())
        }))
    } else {
        None
    };
    let idle_from = total.saturating_sub(Duration::from_secs(idle_secs)) / 2;
    let idle_to = idle_from + Duration::from_secs(idle_secs);

    let mut out = Vec::new();
    let mut t0: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let mut next = Instant::now() + Duration::from_secs(window);
    while started.elapsed() < total {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_secs(window);
        let t1: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(pool)
            .await?;
        let (done, p50, p99): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs WHERE state = 'completed' AND finished_at >= $1 AND finished_at < $2),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM leased_at - created_at) * 1000),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM leased_at - created_at) * 1000)
               FROM jobs WHERE leased_at >= $1 AND leased_at < $2",
        )
        .bind(t0)
        .bind(t1)
        .fetch_one(pool)
        .await?;
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(pool)
            .await?;
        let (dead, size): (i64, i64) = sqlx::query_as(
            "SELECT n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass",
        )
        .fetch_one(pool)
        .await?;
        let span = (t1 - t0).num_milliseconds() as f64 / 1000.0;
        let at = started.elapsed();
        out.push(Window {
            end_s: at.as_secs_f64(),
            completed_per_s: done as f64 / span,
            p50_ms: p50.unwrap_or(f64::NAN),
            p99_ms: p99.unwrap_or(f64::NAN),
            dead,
            size_mib: size as f64 / (1024.0 * 1024.0),
            idle_tx: idle_secs > 0
                && at > idle_from
                && at.saturating_sub(Duration::from_secs(window)) < idle_to,
        });
        t0 = t1;
    }
    stop.cancel();
    let _ = load.await;
    if let Some(h) = idle {
        h.await??;
    }
    drop(worker);
    Ok(out)
}

fn print_windows(title: &str, rate: f64, windows: &[Window]) {
    println!("{title}: offered {rate:.0} jobs/s");
    println!(
        "  {:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "end_s", "done/s", "p50_ms", "p99_ms", "dead_tup", "size_MiB", "idle_tx"
    );
    for w in windows {
        println!(
            "  {:>6.0} {:>12.0} {:>10.2} {:>10.2} {:>10} {:>10.1} {:>8}",
            w.end_s,
            w.completed_per_s,
            w.p50_ms,
            w.p99_ms,
            w.dead,
            w.size_mib,
            if w.idle_tx { "yes" } else { "" }
        );
    }
    // The first window includes start-up; judge the rest.
    let judged = if windows.len() > 1 {
        &windows[1..]
    } else {
        windows
    };
    let worst_rate = judged
        .iter()
        .map(|w| w.completed_per_s)
        .fold(f64::INFINITY, f64::min);
    let worst_p99 = judged.iter().map(|w| w.p99_ms).fold(0.0, f64::max);
    let max_size = windows.iter().map(|w| w.size_mib).fold(0.0, f64::max);
    let max_dead = windows.iter().map(|w| w.dead).max().unwrap_or(0);
    line(
        &format!("{title}: worst window done/s"),
        format!("{worst_rate:.0} jobs/s"),
        &format!(">= {:.0}", rate * 0.95),
        Some(worst_rate >= rate * 0.95),
    );
    line(
        &format!("{title}: worst window enqueue->start p99"),
        format!("{worst_p99:.2} ms"),
        "<= 100 ms",
        Some(worst_p99 <= 100.0),
    );
    line(
        &format!("{title}: largest table size"),
        format!("{max_size:.1} MiB"),
        "",
        None,
    );
    line(
        &format!("{title}: most dead tuples"),
        format!("{max_dead}"),
        "",
        None,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let jobs: i64 = env_or("BENCH_DRAIN_JOBS", 20_000);
    let finished: i64 = env_or("BENCH_FINISHED", 2_000_000);
    let stats_requests: usize = env_or("BENCH_STATS_REQUESTS", 300);
    let stress_secs: u64 = env_or("BENCH_STRESS_SECS", 300);
    let idle_secs: u64 = env_or("BENCH_IDLE_TX_SECS", 120);
    let window: u64 = env_or("BENCH_WINDOW_SECS", 10);
    let stress_retention =
        std::env::var("BENCH_STRESS_RETENTION").unwrap_or_else(|_| "1m".to_string());
    let compare = std::env::var("BENCH_COMPARE_NO_COUNTERS").is_ok_and(|v| v == "1");
    let part = std::env::var("BENCH_STORAGE_PART").unwrap_or_else(|_| "all".to_string());

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    sluice_common::db::migrate(&pool).await?;
    println!(
        "storage benchmark (release build, private Postgres): drain {jobs} jobs, {finished} finished rows, stress {stress_secs}s, idle tx {idle_secs}s, window {window}s"
    );

    // 1. Drain, empty table vs many finished rows.
    let worker = start_worker(&url, &[]).await?;
    let empty_rate = drain(&pool, jobs).await?;
    if part == "stress" {
        drop(worker);
        return stress_part(
            &pool,
            &url,
            empty_rate,
            stress_secs,
            idle_secs,
            window,
            &stress_retention,
        )
        .await;
    }
    let no_counters_rate = if compare {
        sqlx::query("TRUNCATE jobs").execute(&pool).await?;
        for t in [
            "jobs_count_inserted",
            "jobs_count_updated",
            "jobs_count_deleted",
        ] {
            sqlx::query(&format!("ALTER TABLE jobs DISABLE TRIGGER {t}"))
                .execute(&pool)
                .await?;
        }
        let r = drain(&pool, jobs).await?;
        for t in [
            "jobs_count_inserted",
            "jobs_count_updated",
            "jobs_count_deleted",
        ] {
            sqlx::query(&format!("ALTER TABLE jobs ENABLE TRIGGER {t}"))
                .execute(&pool)
                .await?;
        }
        Some(r)
    } else {
        None
    };
    sqlx::query("TRUNCATE jobs").execute(&pool).await?;
    let seeded = Instant::now();
    // Finished within the last 12 h: inside the default 24h retention, so the cleaner
    // leaves them alone during the benchmark.
    sqlx::query(
        "INSERT INTO jobs (kind, payload, state, attempts, created_at, leased_at, leased_by, finished_at)
         SELECT (ARRAY['mail.send','search.reindex','reports.nightly','sluice.noop'])[1 + g % 4],
                jsonb_build_object('n', g),
                (ARRAY['completed','completed','completed','completed','completed','completed','completed','completed','failed','cancelled'])[1 + g % 10],
                1, now() - interval '12 hours', now() - interval '12 hours', 'bench:1',
                now() - (g % 43200) * interval '1 second'
           FROM generate_series(1, $1) g",
    )
    .bind(finished)
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE jobs").execute(&pool).await?;
    // Write the seeding's dirty pages out now, not in the middle of the measured drain.
    // (Needs superuser or pg_checkpoint; without it the figure just includes that noise.)
    let _ = sqlx::query("CHECKPOINT").execute(&pool).await;
    let seed_secs = seeded.elapsed().as_secs_f64();
    let full_rate = drain(&pool, jobs).await?;
    drop(worker);

    // 2. GET /v1/stats with the finished rows present.
    let api_bin = std::env::var("SLUICE_API_BIN")?;
    let api_port = free_port()?;
    let api_metrics = free_port()?;
    let _api = Proc(
        Command::new(api_bin)
            .env("DATABASE_URL", &url)
            .env("SLUICE_API_ADDR", format!("127.0.0.1:{api_port}"))
            .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{api_metrics}"))
            .env("SLUICE_API_TOKENS", "enqueue:bench")
            .env("SLUICE_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .spawn()?,
    );
    wait_ready(api_port).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let stats_url = format!("http://127.0.0.1:{api_port}/v1/stats");
    let mut lat = Vec::with_capacity(stats_requests);
    let mut last = serde_json::Value::Null;
    for i in 0..stats_requests + 10 {
        let t = Instant::now();
        let r = client.get(&stats_url).bearer_auth("bench").send().await?;
        anyhow::ensure!(r.status() == 200, "GET /v1/stats: {}", r.status());
        last = r.json().await?;
        if i >= 10 {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let reported: i64 = ["completed", "failed", "cancelled"]
        .iter()
        .map(|s| last["by_state"][s].as_i64().unwrap_or(0))
        .sum();

    println!();
    line(
        "no-op drain, empty table",
        format!("{empty_rate:.0} jobs/s"),
        "(baseline)",
        None,
    );
    line(
        &format!("no-op drain, {finished} finished rows"),
        format!("{full_rate:.0} jobs/s"),
        "",
        None,
    );
    let ratio = empty_rate / full_rate;
    line(
        "drain ratio empty / with finished rows",
        format!("{ratio:.3}"),
        "<= 1.1",
        Some(ratio <= 1.1),
    );
    if let Some(r) = no_counters_rate {
        line(
            "no-op drain, empty, counter triggers off",
            format!("{r:.0} jobs/s"),
            "",
            None,
        );
        line(
            "counter cost: drain off / on",
            format!("{:.3}", r / empty_rate),
            "",
            None,
        );
    }
    line(
        "seeding finished rows (+VACUUM ANALYZE)",
        format!("{seed_secs:.1} s"),
        "",
        None,
    );
    line(
        &format!("GET /v1/stats p50, {finished} finished"),
        format!("{:.2} ms", pct(&lat, 0.5)),
        "<= 10 ms",
        Some(pct(&lat, 0.5) <= 10.0),
    );
    line(
        "GET /v1/stats p99",
        format!("{:.2} ms", pct(&lat, 0.99)),
        "",
        None,
    );
    // The seeded rows plus the second drain's jobs.
    line(
        "GET /v1/stats finished total",
        format!("{reported}"),
        &format!("= {}", finished + jobs),
        Some(reported == finished + jobs),
    );
    if part == "all" {
        println!();
        stress_part(
            &pool,
            &url,
            empty_rate,
            stress_secs,
            idle_secs,
            window,
            &stress_retention,
        )
        .await?;
    }
    Ok(())
}

/// `1m`, `90s`, `2h` → seconds (the retention forms the stress run uses).
fn duration_secs(s: &str) -> f64 {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: f64 = n.parse().unwrap_or(0.0);
    n * match unit {
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => 1.0,
    }
}

/// Part 3: the stress runs at half of `capacity` and issue 11's verdicts on them.
async fn stress_part(
    pool: &PgPool,
    url: &str,
    capacity: f64,
    stress_secs: u64,
    idle_secs: u64,
    window: u64,
    retention: &str,
) -> anyhow::Result<()> {
    let rate = match std::env::var("BENCH_STRESS_RATE") {
        Ok(r) => r.parse()?,
        Err(_) => (capacity / 2.0).max(1.0),
    };
    let stress_env = [
        ("SLUICE_RETENTION_COMPLETED", retention),
        ("SLUICE_RETENTION_INTERVAL", "5s"),
    ];
    let _ = sqlx::query("CHECKPOINT").execute(pool).await;
    let clean = if std::env::var("BENCH_STRESS_SKIP_CLEAN").is_ok_and(|v| v == "1") {
        Vec::new()
    } else {
        stress(pool, url, &stress_env, rate, stress_secs, 0, window).await?
    };
    let held = stress(pool, url, &stress_env, rate, stress_secs, idle_secs, window).await?;
    println!("stress: drain capacity {capacity:.0} jobs/s measured on an empty table, retention {retention}");
    print_windows("stress, clean", rate, &clean);
    println!();
    print_windows(
        &format!("stress, idle tx {idle_secs}s in the middle"),
        rate,
        &held,
    );
    println!();

    let w = window as f64;
    let judged = if clean.len() > 1 {
        &clean[1..]
    } else {
        &clean[..]
    };
    let clean_rate =
        judged.iter().map(|x| x.completed_per_s).sum::<f64>() / judged.len().max(1) as f64;
    let clean_p99 = judged.iter().map(|x| x.p99_ms).fold(0.0, f64::max);
    let held_min = held
        .iter()
        .filter(|x| x.idle_tx)
        .map(|x| x.completed_per_s)
        .fold(f64::INFINITY, f64::min);
    line(
        "held: worst window done/s / clean mean",
        format!("{:.2}", held_min / clean_rate),
        ">= 0.9",
        held_min.is_finite().then_some(held_min >= 0.9 * clean_rate),
    );
    let idle_to = (stress_secs.saturating_sub(idle_secs) / 2 + idle_secs) as f64;
    let after: Vec<&Window> = held
        .iter()
        .filter(|x| x.end_s - w >= idle_to + 30.0)
        .collect();
    if after.is_empty() {
        line(
            "held: back to clean 30 s after the session",
            "no window".into(),
            "",
            None,
        );
    } else {
        let r = after
            .iter()
            .map(|x| x.completed_per_s)
            .fold(f64::INFINITY, f64::min);
        let p = after.iter().map(|x| x.p99_ms).fold(0.0, f64::max);
        line(
            "held: 30 s after the session, worst done/s",
            format!("{:.2}x clean", r / clean_rate),
            ">= 0.9x",
            Some(r >= 0.9 * clean_rate),
        );
        line(
            "held: 30 s after the session, worst p99",
            format!("{p:.2} ms"),
            &format!("<= {:.2} ms", clean_p99 * 1.2),
            Some(p <= clean_p99 * 1.2),
        );
    }
    // Steady state: rows live for the retention window, and dead row versions for up to
    // one autovacuum period (autovacuum visits a table at most once per
    // `autovacuum_naptime`), so the size settles once both have passed. Growth right
    // after the retention window alone is reported beside it.
    let naptime: String = sqlx::query_scalar("SHOW autovacuum_naptime")
        .fetch_one(pool)
        .await?;
    let growth = |from_s: f64| {
        let after: Vec<&Window> = clean.iter().filter(|x| x.end_s - w >= from_s).collect();
        (after.len() >= 2).then(|| {
            let first = after[0].size_mib;
            let max = after.iter().map(|x| x.size_mib).fold(0.0, f64::max);
            (first, max)
        })
    };
    match growth(duration_secs(retention) + 2.0 * w) {
        Some((first, max)) => line(
            "clean: table size after the retention window",
            format!("{first:.1} -> {max:.1} MiB"),
            "",
            None,
        ),
        None => line(
            "clean: table size after the retention window",
            "too short".into(),
            "",
            None,
        ),
    }
    match growth(duration_secs(retention) + duration_secs(&naptime) + 2.0 * w) {
        Some((first, max)) => line(
            &format!("clean: table size growth after retention + naptime {naptime}"),
            format!("{first:.1} -> {max:.1} MiB"),
            "<= 1.2x",
            Some(max <= first * 1.2),
        ),
        None => line(
            "clean: table size flat after retention + naptime",
            "too short".into(),
            "",
            None,
        ),
    }
    Ok(())
}
