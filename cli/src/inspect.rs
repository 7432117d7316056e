//! `status` and `audit`: the read-only commands.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_common::model::KindInfo;
use sluice_common::{storage, Job, JobState};

use crate::args::{AuditArgs, PeriodicArgs, StatusArgs};
use crate::output::{human_ms, pad, print_json, print_lines, Style};
use crate::{CliError, Ctx};

/// Counts for every state, zeros included: "processing = 0" must be visible, not implied
/// by a missing row as in the runbook's `GROUP BY state`.
pub type StateCounts = BTreeMap<&'static str, i64>;

fn zero_counts() -> StateCounts {
    JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect()
}

/// `status --json`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The database's clock, which ages and expiries are relative to.
    pub now: DateTime<Utc>,
    /// Totals by state, all six present.
    pub states: StateCounts,
    /// Per kind: paused or not, and counts by state.
    pub kinds: Vec<KindStatus>,
    /// Kinds paused through the API/CLI, with who and why.
    pub paused_kinds: Vec<KindInfo>,
    /// Jobs currently leased, oldest lease first.
    pub processing: Vec<HeldJob>,
}

/// One kind's line of `status`.
#[derive(Debug, Serialize)]
pub struct KindStatus {
    /// The kind's name.
    pub kind: String,
    /// Whether its jobs are being held back.
    pub paused: bool,
    /// Counts by state, all six present.
    pub states: StateCounts,
}

/// A job held by a worker, as `status` and `wait-drained` show it.
#[derive(Debug, Serialize)]
pub struct HeldJob {
    /// The job.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// `<host>:<pid>` of the worker holding it: where to look when a drain hangs.
    pub leased_by: Option<String>,
    /// When the lease was taken.
    pub leased_at: Option<DateTime<Utc>>,
    /// When the rescuer may take it back if the worker stops renewing.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// How long it has been held, by the database's clock.
    pub lease_age_ms: Option<i64>,
    /// Until the lease expires; negative once it has (the rescuer will re-queue it).
    pub expires_in_ms: Option<i64>,
    /// Which attempt this is.
    pub attempts: i32,
}

impl HeldJob {
    /// From a job row and the database's current time.
    pub fn new(job: &Job, now: DateTime<Utc>) -> Self {
        HeldJob {
            id: job.id,
            kind: job.kind.clone(),
            leased_by: job.leased_by.clone(),
            leased_at: job.leased_at,
            lease_expires_at: job.lease_expires_at,
            lease_age_ms: job.leased_at.map(|at| (now - at).num_milliseconds()),
            expires_in_ms: job.lease_expires_at.map(|at| (at - now).num_milliseconds()),
            attempts: job.attempts,
        }
    }
}

/// The table of held jobs, shared with `wait-drained`.
pub fn held_jobs_table(jobs: &[HeldJob], style: &Style) -> Vec<String> {
    let mut lines = vec![style.bold(&format!(
        "  {} {} {} {} {}",
        pad("ID", 10),
        pad("KIND", 24),
        pad("LEASED_BY", 28),
        pad("AGE", 8),
        "EXPIRES"
    ))];
    for j in jobs {
        let expires = match j.expires_in_ms {
            Some(ms) if ms < 0 => style.red(&format!("expired {} ago", human_ms(-ms))),
            Some(ms) => format!("in {}", human_ms(ms)),
            None => "-".into(),
        };
        lines.push(format!(
            "  {} {} {} {} {}",
            pad(&j.id.to_string(), 10),
            pad(&j.kind, 24),
            pad(j.leased_by.as_deref().unwrap_or("-"), 28),
            pad(
                &j.lease_age_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                8
            ),
            expires
        ));
    }
    lines
}

/// Gathers everything `status` shows.
pub async fn collect_status(ctx: &Ctx) -> Result<StatusReport, CliError> {
    let now = storage::fetch_database_now(&ctx.pool).await?;
    let counts = storage::count_jobs_by_kind_and_state(&ctx.pool).await?;
    let kinds = storage::list_kinds(&ctx.pool).await?;
    let processing = storage::find_processing_jobs(&ctx.pool, None).await?;

    let mut states = zero_counts();
    let mut by_kind: BTreeMap<String, KindStatus> = kinds
        .iter()
        .map(|k| {
            (
                k.kind.clone(),
                KindStatus {
                    kind: k.kind.clone(),
                    paused: k.paused,
                    states: zero_counts(),
                },
            )
        })
        .collect();
    for c in &counts {
        *states.entry(c.state.as_str()).or_default() += c.count;
        let entry = by_kind.entry(c.kind.clone()).or_insert_with(|| KindStatus {
            kind: c.kind.clone(),
            paused: false,
            states: zero_counts(),
        });
        *entry.states.entry(c.state.as_str()).or_default() += c.count;
    }
    Ok(StatusReport {
        now,
        states,
        kinds: by_kind.into_values().collect(),
        paused_kinds: kinds.into_iter().filter(|k| k.paused).collect(),
        processing: processing.iter().map(|j| HeldJob::new(j, now)).collect(),
    })
}

/// `sluicectl status`.
pub async fn status(ctx: &Ctx, _args: &StatusArgs) -> Result<(), CliError> {
    let report = collect_status(ctx).await?;
    if ctx.json {
        return print_json(&report);
    }
    let s = &ctx.style;
    let mut lines = vec![s.bold("Jobs by state")];
    for st in JobState::ALL {
        let n = report.states.get(st.as_str()).copied().unwrap_or(0);
        let value = match st {
            JobState::Processing if n == 0 => s.green(&format!("{n} (drained)")),
            JobState::Processing | JobState::Paused if n > 0 => s.yellow(&n.to_string()),
            JobState::Failed if n > 0 => s.red(&n.to_string()),
            _ => n.to_string(),
        };
        lines.push(format!("  {} {value}", pad(st.as_str(), 11)));
    }

    lines.push(String::new());
    lines.push(s.bold("Jobs by kind"));
    if report.kinds.is_empty() {
        lines.push("  (no kinds yet)".into());
    } else {
        let mut header = format!("  {}", pad("KIND", 24));
        for st in JobState::ALL {
            header.push_str(&format!(" {}", pad(&st.as_str().to_uppercase(), 11)));
        }
        lines.push(s.bold(header.trim_end()));
        for k in &report.kinds {
            // Pad the plain text, then paint: escape codes would count as width.
            let mut line = if k.paused {
                let padded = pad(&format!("{} [paused]", k.kind), 24);
                format!(
                    "  {}",
                    padded.replacen("[paused]", &s.yellow("[paused]"), 1)
                )
            } else {
                format!("  {}", pad(&k.kind, 24))
            };
            for st in JobState::ALL {
                let n = k.states.get(st.as_str()).copied().unwrap_or(0);
                line.push_str(&format!(" {}", pad(&n.to_string(), 11)));
            }
            lines.push(line.trim_end().to_string());
        }
    }

    lines.push(String::new());
    lines.push(s.bold("Paused kinds"));
    if report.paused_kinds.is_empty() {
        lines.push("  (none)".into());
    }
    for k in &report.paused_kinds {
        let since = k
            .paused_at
            .map(|at| format!(" since {}", at.to_rfc3339()))
            .unwrap_or_default();
        let by = k
            .paused_by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default();
        let why = k
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        lines.push(format!("  {}{since}{by}{why}", s.yellow(&k.kind)));
    }

    lines.push(String::new());
    lines.push(s.bold(&format!("Processing ({})", report.processing.len())));
    if report.processing.is_empty() {
        lines.push("  (none: drained)".into());
    } else {
        lines.extend(held_jobs_table(&report.processing, s));
    }
    print_lines(&lines)
}

/// `sluicectl audit`.
pub async fn audit(ctx: &Ctx, args: &AuditArgs) -> Result<(), CliError> {
    let entries = storage::list_recent_audit_log(&ctx.pool, args.since, args.limit).await?;
    if ctx.json {
        return print_json(&entries);
    }
    let s = &ctx.style;
    let mut lines = vec![s.bold(&format!(
        "{} {} {} {} {} DETAILS",
        pad("AT", 25),
        pad("ACTOR", 14),
        pad("ACTION", 8),
        pad("TARGET", 28),
        pad("REASON", 30),
    ))];
    if entries.is_empty() {
        lines.push("(no entries)".into());
    }
    for e in &entries {
        lines.push(format!(
            "{} {} {} {} {} {}",
            pad(&e.at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), 25),
            pad(&e.actor, 14),
            pad(&e.action, 8),
            pad(&e.target, 28),
            pad(e.reason.as_deref().unwrap_or("-"), 30),
            e.details
        ));
    }
    print_lines(&lines)
}

/// `sluicectl periodic`: the recorded periodic definitions, their next run and last tick.
pub async fn periodic(ctx: &Ctx, _args: &PeriodicArgs) -> Result<(), CliError> {
    let defs = storage::list_periodic_status(&ctx.pool).await?;
    if ctx.json {
        return print_json(&defs);
    }
    let s = &ctx.style;
    let at = |t: Option<DateTime<Utc>>| {
        t.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let mut lines = vec![s.bold(&format!(
        "{} {} {} {} {} LAST TICK",
        pad("NAME", 24),
        pad("SCHEDULE", 22),
        pad("TIMEZONE", 16),
        pad("KIND", 24),
        pad("NEXT RUN", 21),
    ))];
    if defs.is_empty() {
        lines.push("(no periodic jobs recorded: no worker has a [periodic.NAME] table)".into());
    }
    for d in &defs {
        let next = at(d.def.next_run_at);
        let next = if d.overdue {
            s.yellow(&pad(&format!("{next} OVERDUE"), 21))
        } else {
            pad(&next, 21)
        };
        lines.push(format!(
            "{} {} {} {} {} {}",
            pad(&d.def.name, 24),
            pad(&d.def.schedule, 22),
            pad(&d.def.timezone, 16),
            pad(&d.def.kind, 24),
            next,
            at(d.def.last_tick_at),
        ));
    }
    print_lines(&lines)
}
