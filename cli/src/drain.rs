//! `wait-drained`: the runbooks' "confirm drain" step.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_common::config::format_duration;
use sluice_common::storage;

use crate::args::WaitArgs;
use crate::inspect::{held_jobs_table, HeldJob};
use crate::output::{print_json, print_lines};
use crate::{CliError, Ctx};

/// Polls until no job is `processing` (of `--kind`, if given). At the timeout, prints the
/// jobs still held, with `leased_by` and lease age, and fails with exit 1.
pub async fn wait_drained(ctx: &Ctx, args: &WaitArgs) -> Result<(), CliError> {
    if let Some(kind) = &args.kind {
        sluice_common::model::validate_kind(kind).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let started = Instant::now();
    let deadline = started + args.timeout;
    let interval = args.interval.max(Duration::from_millis(50));
    let mut last_count = None;
    loop {
        let held = storage::find_processing_jobs(&ctx.pool, args.kind.as_deref()).await?;
        let what = args
            .kind
            .as_deref()
            .map(|k| format!("kind {k}"))
            .unwrap_or_else(|| "all kinds".into());
        if held.is_empty() {
            let waited = started.elapsed();
            if ctx.json {
                return print_json(&json!({
                    "drained": true,
                    "kind": args.kind,
                    "waited_ms": waited.as_millis() as u64,
                    "processing": [],
                }));
            }
            return print_lines(&[format!(
                "{}: no job processing ({what}); waited {}",
                ctx.style.green("drained"),
                format_duration(Duration::from_millis(waited.as_millis() as u64))
            )]);
        }
        let now = Instant::now();
        if now >= deadline {
            let db_now = storage::fetch_database_now(&ctx.pool).await?;
            let jobs: Vec<HeldJob> = held.iter().map(|j| HeldJob::new(j, db_now)).collect();
            if ctx.json {
                print_json(&json!({
                    "drained": false,
                    "kind": args.kind,
                    "waited_ms": started.elapsed().as_millis() as u64,
                    "processing": jobs,
                }))?;
            } else {
                let mut lines = vec![format!(
                    "{}: {} job(s) still processing ({what}):",
                    ctx.style.red("not drained"),
                    jobs.len()
                )];
                lines.extend(held_jobs_table(&jobs, &ctx.style));
                lines.push(
                    "leased_by is <host>:<pid>: stop that process, or `sluicectl release ID` \
                     if it is gone"
                        .into(),
                );
                print_lines(&lines)?;
            }
            return Err(CliError::NotDrained {
                waited: format_duration(args.timeout),
                count: jobs.len(),
            });
        }
        if last_count != Some(held.len()) && !ctx.json {
            eprintln!("waiting: {} job(s) processing ({what})", held.len());
            last_count = Some(held.len());
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}
