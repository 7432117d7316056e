//! The audited actions: `pause`, `resume`, `release`, `cancel`, `retry`.
//!
//! Each is one `storage` call, which runs the change and its `audit_log` row in one
//! transaction and refuses impossible transitions (exit 1, nothing written).

use serde_json::json;
use sluice_common::model::Actor;
use sluice_common::{storage, Job};

use crate::args::{JobArgs, KindArgs};
use crate::output::{print_json, print_lines};
use crate::{CliError, Ctx};

fn actor<'a>(ctx: &'a Ctx, reason: &'a Option<String>) -> Actor<'a> {
    Actor {
        name: &ctx.actor,
        reason: reason.as_deref(),
    }
}

/// `sluicectl pause KIND`.
pub async fn pause(ctx: &Ctx, args: &KindArgs) -> Result<(), CliError> {
    let n = storage::pause_kind(&ctx.pool, &args.kind, &actor(ctx, &args.reason)).await?;
    if ctx.json {
        return print_json(&json!({ "action": "pause", "kind": args.kind, "jobs": n }));
    }
    print_lines(&[
        format!(
            "paused kind {}: {n} queued job(s) now {}",
            args.kind,
            ctx.style.yellow("paused")
        ),
        format!(
            "jobs of it enqueued later start paused too; running ones finish \
             (sluicectl wait-drained --kind {}); undo with: sluicectl resume {}",
            args.kind, args.kind
        ),
    ])
}

/// `sluicectl resume KIND`.
pub async fn resume(ctx: &Ctx, args: &KindArgs) -> Result<(), CliError> {
    let n = storage::resume_kind(&ctx.pool, &args.kind, &actor(ctx, &args.reason)).await?;
    if ctx.json {
        return print_json(&json!({ "action": "resume", "kind": args.kind, "jobs": n }));
    }
    print_lines(&[format!(
        "resumed kind {}: {n} job(s) back to {}; workers woken",
        args.kind,
        ctx.style.green("queued")
    )])
}

fn report(ctx: &Ctx, action: &str, before: Option<Job>, after: &Job) -> Result<(), CliError> {
    if ctx.json {
        return print_json(&json!({ "action": action, "job": after }));
    }
    let held = before
        .and_then(|b| b.leased_by)
        .map(|w| format!(" (was held by {w})"))
        .unwrap_or_default();
    let mut lines = vec![format!(
        "{action}: job {} ({}) is now {}{held}",
        after.id,
        after.kind,
        ctx.style.bold(after.state.as_str())
    )];
    if action == "release" {
        lines.push(
            "its old lease is fenced off: a late answer from that worker changes nothing; \
             make sure the old process is stopped"
                .into(),
        );
    }
    print_lines(&lines)
}

/// `sluicectl release ID`: the runbook's force re-lease.
pub async fn release(ctx: &Ctx, args: &JobArgs) -> Result<(), CliError> {
    // Only for the message: the transition itself re-reads and locks the row.
    let before = storage::find_job(&ctx.pool, args.id).await?;
    let job = storage::release_job(&ctx.pool, args.id, &actor(ctx, &args.reason)).await?;
    report(ctx, "release", before, &job)
}

/// `sluicectl cancel ID`.
pub async fn cancel(ctx: &Ctx, args: &JobArgs) -> Result<(), CliError> {
    let before = storage::find_job(&ctx.pool, args.id).await?;
    let job = storage::cancel_job(&ctx.pool, args.id, &actor(ctx, &args.reason)).await?;
    report(ctx, "cancel", before, &job)
}

/// `sluicectl retry ID`.
pub async fn retry(ctx: &Ctx, args: &JobArgs) -> Result<(), CliError> {
    let job = storage::retry_job(&ctx.pool, args.id, &actor(ctx, &args.reason)).await?;
    report(ctx, "retry", None, &job)
}
