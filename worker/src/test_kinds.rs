//! Kinds for tests, registered only when `SLUICE_WORKER_TEST_KINDS=on` (never by
//! default: a production worker must not run jobs that wait on arbitrary locks or files).
//! They let a test hold a job at a point it controls and release it by an event, instead
//! of guessing with sleeps how long a job will take on a loaded machine.
//!
//! - `sluice.hold` — `{"key": N}`: runs until Postgres advisory lock `N` is free (the test
//!   holds `pg_advisory_lock(N)` on a connection of its own and unlocks it to let the job
//!   finish); or `{"file": "/path"}`: runs until that file exists (for tests that stop
//!   the database meanwhile). Checks every 50 ms; stops early on the shutdown or
//!   cancellation signal and reports itself interrupted, like `sluice.sleep` — unless
//!   the payload also says `"deaf": true`: then it ignores the signal, like a handler
//!   that never checks it, so a test can see the worker abort it.
//! - `sluice.record` — `{"ms": N}`: inserts `(job_id, attempt, pid)` into the table
//!   `sluice_test_runs`, which the test creates, then sleeps `N` ms like `sluice.sleep`.
//!   A test counts deliveries per job with it. With `"snooze_ms": M` as well, the job's
//!   first run (no earlier row of it in the table) snoozes for `M` ms instead of sleeping,
//!   so a test sees a snooze and the run after it.
//! - `sluice.bench` — `{"t": NS}` (the client's CLOCK_REALTIME in ns, stamped just before
//!   its enqueue call): as its first instruction reads CLOCK_REALTIME, then appends the
//!   line `job_id client_ns start_ns` to the file named by `SLUICE_BENCH_START_FILE`
//!   (nothing without it) and returns. `make bench` measures exact enqueue→handler start
//!   with it; the append happens after the stamp, so its cost is not in the figure.

use std::{path::PathBuf, time::Duration};

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgPool;

use crate::registry::{Handler, JobContext, JobError, Sleep};

/// How often `sluice.hold` checks whether it may finish.
const HOLD_STEP: Duration = Duration::from_millis(50);

/// `sluice.hold`.
#[derive(Debug)]
pub struct Hold {
    /// For the advisory-lock check (one short statement per step, no connection held).
    pub pool: PgPool,
}

impl Handler for Hold {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let key = ctx.payload.get("key").and_then(Value::as_i64);
            let file = ctx
                .payload
                .get("file")
                .and_then(Value::as_str)
                .map(PathBuf::from);
            if key.is_none() && file.is_none() {
                return Err(JobError::Permanent(
                    "sluice.hold needs a payload {\"key\": N} or {\"file\": \"/path\"}".into(),
                ));
            }
            let deaf = ctx.payload.get("deaf").and_then(Value::as_bool) == Some(true);
            let never = tokio_util::sync::CancellationToken::new();
            let signal = if deaf { &never } else { &ctx.shutdown };
            loop {
                if signal.is_cancelled() {
                    return Err(JobError::Interrupted("shutdown signal while held".into()));
                }
                let free = match (&file, key) {
                    (Some(f), _) => f.exists(),
                    (None, Some(k)) => {
                        sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_xact_lock_shared($1)")
                            .bind(k)
                            .fetch_one(&pool)
                            .await
                            .unwrap_or(false)
                    }
                    (None, None) => unreachable!("checked above"),
                };
                if free {
                    return Ok(());
                }
                tokio::select! {
                    _ = signal.cancelled() => {}
                    _ = tokio::time::sleep(HOLD_STEP) => {}
                }
            }
        })
    }
}

/// `sluice.bench`.
#[derive(Debug)]
pub struct Bench {
    /// `SLUICE_BENCH_START_FILE`, opened for appending once at start-up (one `write` per
    /// job, a line far below PIPE_BUF, so lines never interleave); `None` records nothing.
    pub sink: Option<std::sync::Arc<std::fs::File>>,
}

impl Bench {
    /// Opens `SLUICE_BENCH_START_FILE` if set; a file that cannot be opened is logged and
    /// recorded into nowhere (a test kind must not stop the worker from starting).
    pub fn from_env() -> Self {
        let sink = std::env::var_os("SLUICE_BENCH_START_FILE").and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| tracing::warn!("SLUICE_BENCH_START_FILE {path:?}: {e}"))
                .ok()
                .map(std::sync::Arc::new)
        });
        Bench { sink }
    }
}

impl Handler for Bench {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        let sink = self.sink.clone();
        Box::pin(async move {
            // First instruction: the stamp. Everything else comes after it.
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            if let Some(file) = sink {
                use std::io::Write;
                let client = ctx.payload.get("t").and_then(Value::as_i64).unwrap_or(0);
                let _ = (&*file).write_all(format!("{} {client} {start}\n", ctx.id).as_bytes());
            }
            Ok(())
        })
    }
}

/// `sluice.record`.
#[derive(Debug)]
pub struct Record {
    /// To write the run record.
    pub pool: PgPool,
}

impl Handler for Record {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO sluice_test_runs (job_id, attempt, pid) VALUES ($1, $2, $3)")
                .bind(ctx.id)
                .bind(ctx.attempt)
                .bind(std::process::id() as i32)
                .execute(&pool)
                .await
                .map_err(|e| JobError::retryable(format!("recording the run: {e}")))?;
            if let Some(ms) = ctx.payload.get("snooze_ms").and_then(Value::as_u64) {
                let runs: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM sluice_test_runs WHERE job_id = $1")
                        .bind(ctx.id)
                        .fetch_one(&pool)
                        .await
                        .map_err(|e| JobError::retryable(format!("counting runs: {e}")))?;
                if runs == 1 {
                    return Err(JobError::Snooze(Duration::from_millis(ms)));
                }
            }
            Sleep.run(ctx).await
        })
    }
}
