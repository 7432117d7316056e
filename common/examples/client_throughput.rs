//! Lease + complete throughput of the bare job client, with no worker around it: the floor
//! the worker builds on. Run by `make bench` (scripts/bench.d/05-client.sh).
//!
//! For each configuration it enqueues N no-op jobs (batches of 1000), then runs `leasers`
//! concurrent loops, each leasing up to `batch` jobs in one statement and completing them
//! in one statement, until the queue is empty. Prints jobs/s per configuration.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_common::model::{KindLease, Lease};
use sluice_common::{JobClient, NewJob};
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await?;
    sluice_common::db::migrate(&pool).await?;
    let client = JobClient::new(pool.clone());
    let kinds = vec![KindLease {
        kind: "bench.noop".into(),
        lease_timeout: Duration::from_secs(300),
    }];

    println!("{:<34} {:>10} {:>12}", "configuration", "jobs", "jobs/s");
    for (leasers, batch) in [(1usize, 16usize), (1, 100), (4, 100), (16, 16)] {
        sqlx::query("DELETE FROM jobs WHERE kind = 'bench.noop'")
            .execute(&pool)
            .await?;
        let started = Instant::now();
        let new: Vec<NewJob> = (0..jobs)
            .map(|i| NewJob::new("bench.noop", json!({ "i": i })))
            .collect();
        for chunk in new.chunks(1000) {
            client.enqueue_batch(chunk).await?;
        }
        let enqueue_rate = jobs as f64 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..leasers {
            let client = client.clone();
            let kinds = kinds.clone();
            tasks.push(tokio::spawn(async move {
                let me = format!("bench:{w}");
                let mut done = 0usize;
                loop {
                    let leased = client.lease(&me, &kinds, batch).await?;
                    if leased.is_empty() {
                        return anyhow::Ok(done);
                    }
                    let leases: Vec<Lease> = leased.iter().map(|j| j.lease()).collect();
                    done += client.complete(&leases).await?.len();
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:<34} {:>10} {:>12.0}   (enqueue in batches of 1000: {:.0} jobs/s)",
            format!("{leasers} leaser(s) x batch {batch}"),
            total,
            rate,
            enqueue_rate
        );
        anyhow::ensure!(total == jobs, "completed {total} of {jobs}");
    }
    sqlx::query("DELETE FROM jobs WHERE kind = 'bench.noop'")
        .execute(&pool)
        .await?;
    Ok(())
}
