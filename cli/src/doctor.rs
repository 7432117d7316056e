//! `sluicectl doctor`: the health of the queue's storage (SPEC.md §6). It reads catalog
//! views and partial indexes only, so it is safe to run against a struggling database.
//! Each warning has a stable `code`; docs/runbooks/storage.md says what each one means and
//! what to do.

use std::time::Duration;

use serde::Serialize;
use sluice_common::model::KindInfo;
use sluice_common::retention::{
    overrides_from_handlers_file, RetentionPolicy, RetentionReport, FINISHED_STATES,
};
use sluice_common::storage::{self, ExpiredLease, HorizonHolder, IndexSize, TableHealth};

use crate::args::DoctorArgs;
use crate::output::{human_ms, pad, print_json, print_lines};
use crate::{CliError, Ctx};

/// Dead tuples below this never warn: vacuum of a small table is not worth a page.
const DEAD_TUPLES_FLOOR: i64 = 10_000;
/// Dead tuples above this share of live ones warn (vacuum is not keeping up).
const DEAD_TUPLES_SHARE: f64 = 0.2;
/// NOTIFY queue use above this warns; at 100% every enqueue fails.
const NOTIFY_QUEUE_WARN: f64 = 0.5;
/// Finished rows this far past their retention mean the cleaner is not running.
const RETENTION_SLACK: Duration = Duration::from_secs(3600);
/// Pending counter deltas above this mean no worker folds them.
const DELTAS_WARN: i64 = 100_000;
/// Rows listed per section in text output.
const LIST_LIMIT: i64 = 10;

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// Stable identifier (`idle_in_transaction`, `long_transaction`, `expired_leases`,
    /// `dead_tuples`, `notify_queue`, `retention_behind`, `counts_not_folded`,
    /// `replication_slot`, `prepared_transaction`), the section of the runbook.
    pub code: &'static str,
    /// What was found, with the numbers.
    pub message: String,
}

/// Finished rows past their window plus [`RETENTION_SLACK`].
#[derive(Debug, Clone, Serialize)]
pub struct RetentionBehind {
    /// The kind.
    pub kind: String,
    /// The finished state.
    pub state: &'static str,
    /// How many rows (counted up to 10 000).
    pub rows: i64,
}

/// Retention: what is in effect and whether it is being applied.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionSection {
    /// The settings, as the worker would read them from this environment.
    pub settings: RetentionReport,
    /// Kinds and states with rows well past their window.
    pub behind: Vec<RetentionBehind>,
}

/// Expired leases nobody rescues.
#[derive(Debug, Clone, Serialize)]
pub struct LeasesSection {
    /// How many.
    pub count: i64,
    /// The oldest of them.
    pub oldest: Vec<ExpiredLease>,
}

/// `doctor --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// `healthy` or `warnings`.
    pub status: &'static str,
    /// Everything that needs attention; empty when healthy.
    pub warnings: Vec<Warning>,
    /// Size and vacuum state of `jobs`.
    pub table: TableHealth,
    /// Each index of `jobs`.
    pub indexes: Vec<IndexSize>,
    /// What holds back vacuum, oldest first.
    pub vacuum_horizon: Vec<HorizonHolder>,
    /// Leases expired longer than `--lease-grace` ago.
    pub expired_leases: LeasesSection,
    /// `pg_notification_queue_usage()`, 0..1.
    pub notification_queue_usage: f64,
    /// Kinds paused through the API/CLI.
    pub paused_kinds: Vec<KindInfo>,
    /// Retention in effect and its progress.
    pub retention: RetentionSection,
    /// Counter deltas not yet folded.
    pub count_deltas_pending: i64,
}

fn policy(args: &DoctorArgs) -> Result<RetentionPolicy, CliError> {
    let mut policy = RetentionPolicy {
        defaults: args.retention.retention(),
        ..RetentionPolicy::default()
    };
    if let Some(path) = &args.handlers_file {
        let name = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("SLUICE_HANDLERS_FILE {name}: cannot read: {e}"))
        })?;
        policy.kinds = overrides_from_handlers_file(&text)
            .map_err(|e| CliError::Usage(format!("SLUICE_HANDLERS_FILE {name}: {e}")))?;
    }
    Ok(policy)
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Gathers the report and its warnings.
pub async fn collect(ctx: &Ctx, args: &DoctorArgs) -> Result<DoctorReport, CliError> {
    let policy = policy(args)?;
    let pool = &ctx.pool;
    let table = storage::fetch_jobs_table_health(pool).await?;
    let indexes = storage::list_jobs_index_sizes(pool).await?;
    let horizon = storage::find_vacuum_horizon_holders(pool, 20).await?;
    let (lease_count, oldest) =
        storage::find_unrescued_leases(pool, ms(args.lease_grace), LIST_LIMIT).await?;
    let notify = storage::fetch_notification_queue_usage(pool).await?;
    let paused: Vec<KindInfo> = storage::list_kinds(pool)
        .await?
        .into_iter()
        .filter(|k| k.paused)
        .collect();
    let mut behind = Vec::new();
    for state in FINISHED_STATES {
        for kind in storage::find_kinds_with_finished_jobs(pool, state).await? {
            let Some(keep) = policy.keep(&kind, state) else {
                continue;
            };
            let rows =
                storage::count_expired_jobs(pool, state, &kind, keep + RETENTION_SLACK, 10_000)
                    .await?;
            if rows > 0 {
                behind.push(RetentionBehind {
                    kind,
                    state: state.as_str(),
                    rows,
                });
            }
        }
    }
    let deltas = storage::count_pending_count_deltas(pool).await?;

    let mut warnings = Vec::new();
    for h in &horizon {
        let age = h.xact_age_ms.unwrap_or(0);
        let who = format!(
            "{} pid {} ({}), application {:?}, transaction open {}, last query started {}: {}",
            h.holder,
            h.pid.map_or("-".into(), |p| p.to_string()),
            h.state.as_deref().unwrap_or("?"),
            h.application_name.as_deref().unwrap_or(""),
            human_ms(age),
            h.query_start
                .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            h.query.as_deref().unwrap_or("").replace('\n', " ")
        );
        match h.holder.as_str() {
            "session"
                if h.state.as_deref().is_some_and(|s| s.starts_with("idle in transaction"))
                    && age > ms(args.idle_tx_warn) =>
            {
                warnings.push(Warning {
                    code: "idle_in_transaction",
                    message: format!("{who} — idle in transaction longer than {}: it holds back vacuum of every table", human_ms(ms(args.idle_tx_warn))),
                })
            }
            "session" if age > ms(args.long_tx_warn) => warnings.push(Warning {
                code: "long_transaction",
                message: format!(
                    "{who} — open longer than {}: it holds back vacuum",
                    human_ms(ms(args.long_tx_warn))
                ),
            }),
            "prepared" if age > ms(args.idle_tx_warn) => warnings.push(Warning {
                code: "prepared_transaction",
                message: format!(
                    "prepared transaction {:?} open {}: it holds back vacuum until COMMIT PREPARED or ROLLBACK PREPARED",
                    h.application_name.as_deref().unwrap_or(""),
                    human_ms(age)
                ),
            }),
            "replication slot" if h.state.as_deref() == Some("inactive") => {
                warnings.push(Warning {
                    code: "replication_slot",
                    message: format!(
                        "inactive replication slot {:?} holds the vacuum horizon {} transactions back",
                        h.application_name.as_deref().unwrap_or(""),
                        h.xmin_age.unwrap_or(0)
                    ),
                })
            }
            _ => {}
        }
    }
    if lease_count > 0 {
        let first = oldest.first().map_or(String::new(), |l| {
            format!(
                "; oldest: job {} ({}) held by {}, expired {} ago",
                l.id,
                l.kind,
                l.leased_by.as_deref().unwrap_or("?"),
                human_ms(l.expired_ms)
            )
        });
        warnings.push(Warning {
            code: "expired_leases",
            message: format!(
                "{lease_count} processing job(s) with a lease expired more than {} ago and not rescued: no live worker{first}",
                human_ms(ms(args.lease_grace))
            ),
        });
    }
    if table.dead_tuples > DEAD_TUPLES_FLOOR
        && table.dead_tuples as f64 > DEAD_TUPLES_SHARE * table.live_tuples.max(1) as f64
    {
        let last = table
            .last_autovacuum
            .max(table.last_vacuum)
            .map_or("never".into(), |t| t.to_rfc3339());
        warnings.push(Warning {
            code: "dead_tuples",
            message: format!(
                "jobs has {} dead row versions for {} live; last vacuum {last}",
                table.dead_tuples, table.live_tuples
            ),
        });
    }
    if notify > NOTIFY_QUEUE_WARN {
        warnings.push(Warning {
            code: "notify_queue",
            message: format!(
                "the NOTIFY queue is {:.0}% full; at 100% every enqueue fails",
                notify * 100.0
            ),
        });
    }
    for b in &behind {
        warnings.push(Warning {
            code: "retention_behind",
            message: format!(
                "{} {} job(s) of kind {} are more than 1h past their retention: is a worker's cleaner running?",
                if b.rows >= 10_000 { "10000+".to_string() } else { b.rows.to_string() },
                b.state,
                b.kind
            ),
        });
    }
    if deltas > DELTAS_WARN {
        warnings.push(Warning {
            code: "counts_not_folded",
            message: format!(
                "{deltas} counter deltas are waiting to be folded: no worker's stats refresher is running"
            ),
        });
    }
    Ok(DoctorReport {
        status: if warnings.is_empty() {
            "healthy"
        } else {
            "warnings"
        },
        warnings,
        table,
        indexes,
        vacuum_horizon: horizon,
        expired_leases: LeasesSection {
            count: lease_count,
            oldest,
        },
        notification_queue_usage: notify,
        paused_kinds: paused,
        retention: RetentionSection {
            settings: policy.describe(),
            behind,
        },
        count_deltas_pending: deltas,
    })
}

/// `sluicectl doctor`: exit 0 healthy, 1 with warnings.
pub async fn doctor(ctx: &Ctx, args: &DoctorArgs) -> Result<(), CliError> {
    let report = collect(ctx, args).await?;
    if ctx.json {
        print_json(&report)?;
    } else {
        print_lines(&render(ctx, &report))?;
    }
    if report.warnings.is_empty() {
        Ok(())
    } else {
        Err(CliError::Unhealthy(report.warnings.len()))
    }
}

fn render(ctx: &Ctx, r: &DoctorReport) -> Vec<String> {
    let s = &ctx.style;
    let t = &r.table;
    let when = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map_or("never".to_string(), |t| {
            t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let mut lines = vec![
        s.bold("Table jobs"),
        format!(
            "  size {} (heap {}, indexes {})",
            mib(t.total_bytes),
            mib(t.table_bytes),
            mib(t.index_bytes)
        ),
        format!("  rows ~{} live, {} dead", t.live_tuples, t.dead_tuples),
        format!(
            "  last autovacuum {}, last vacuum {}, last autoanalyze {}",
            when(t.last_autovacuum),
            when(t.last_vacuum),
            when(t.last_autoanalyze)
        ),
        String::new(),
        s.bold("Indexes"),
    ];
    for i in &r.indexes {
        lines.push(format!(
            "  {} {} {} scans",
            pad(&i.name, 34),
            pad(&mib(i.bytes), 12),
            i.scans
        ));
    }
    lines.push(String::new());
    lines.push(s.bold("Oldest transactions holding back vacuum"));
    if r.vacuum_horizon.is_empty() {
        lines.push("  (none)".into());
    }
    for h in r.vacuum_horizon.iter().take(LIST_LIMIT as usize) {
        lines.push(format!(
            "  {} pid {} {} app {:?} open {} query start {} xmin age {}",
            h.holder,
            h.pid.map_or("-".into(), |p| p.to_string()),
            h.state.as_deref().unwrap_or("?"),
            h.application_name.as_deref().unwrap_or(""),
            h.xact_age_ms.map_or("-".into(), human_ms),
            when(h.query_start),
            h.xmin_age.map_or("-".into(), |a| a.to_string()),
        ));
    }
    lines.push(String::new());
    lines.push(s.bold(&format!(
        "Expired leases not rescued: {}",
        r.expired_leases.count
    )));
    for l in &r.expired_leases.oldest {
        lines.push(format!(
            "  job {} {} held by {} expired {} ago",
            l.id,
            l.kind,
            l.leased_by.as_deref().unwrap_or("?"),
            human_ms(l.expired_ms)
        ));
    }
    lines.push(format!(
        "NOTIFY queue usage: {:.2}%",
        r.notification_queue_usage * 100.0
    ));
    lines.push(format!(
        "Counter deltas waiting to be folded: {}",
        r.count_deltas_pending
    ));
    lines.push(format!(
        "Paused kinds: {}",
        if r.paused_kinds.is_empty() {
            "(none)".to_string()
        } else {
            r.paused_kinds
                .iter()
                .map(|k| k.kind.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    lines.push(String::new());
    let d = &r.retention.settings.defaults;
    lines.push(s.bold("Retention in effect"));
    lines.push(format!(
        "  completed {}, failed {}, cancelled {}",
        d.completed, d.failed, d.cancelled
    ));
    for (kind, k) in &r.retention.settings.kinds {
        lines.push(format!(
            "  {}: completed {}, failed {}, cancelled {}",
            kind, k.completed, k.failed, k.cancelled
        ));
    }
    lines.push(String::new());
    if r.warnings.is_empty() {
        lines.push(s.green("healthy: no warnings"));
    } else {
        lines.push(s.bold(&format!("Warnings ({})", r.warnings.len())));
        for w in &r.warnings {
            lines.push(format!(
                "  {} {}",
                s.yellow(&format!("[{}]", w.code)),
                w.message
            ));
        }
        lines.push("  see docs/runbooks/storage.md for what each means and what to do".into());
    }
    lines
}
