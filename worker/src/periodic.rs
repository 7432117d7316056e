//! Periodic jobs: the `[periodic.NAME]` tables of the handlers file, and the service that
//! enqueues their ticks.
//!
//! Every worker with the table runs the service; each tick still becomes exactly one job,
//! because the insert carries the key `periodic:<name>@<tick>` and does nothing on a
//! conflict (`storage::enqueue_periodic_tick`). There is no leader to elect or lose: during
//! a rolling restart whichever worker is up at the tick enqueues it, and a worker that
//! starts enqueues the latest tick that is due (once, whatever it missed while no worker
//! ran; the key makes a tick some other worker already enqueued a no-op).
//!
//! Ticks are computed on the database's clock (one `now()` per round), so workers whose
//! clocks disagree still agree on which tick is due.

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use sluice_common::{config::parse_duration, model::validate_kind, storage, storage::PeriodicJob};
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// A `[periodic.NAME]` table as written (SPEC.md §5).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodicSettings {
    /// 5-field cron expression (minute hour day-of-month month day-of-week).
    cron: Option<String>,
    /// Or a fixed interval (`10s`, `5m`), ticking at multiples of it since the Unix epoch.
    every: Option<String>,
    /// IANA zone the cron expression is read in; default UTC.
    timezone: Option<String>,
    kind: String,
    #[serde(default = "empty_object")]
    payload: Value,
    priority: Option<i16>,
    max_attempts: Option<i32>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// When a periodic job ticks.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Cron in a zone: croner finds occurrences on the zone's wall clock; a time that a
    /// DST change skips or repeats is handled as croner documents (OCPS: a fixed-time job
    /// in a spring-forward gap runs at the first valid time after it, one in a fall-back
    /// overlap runs once; interval-like patterns keep their real-time spacing).
    Cron {
        cron: Box<croner::Cron>,
        tz: chrono_tz::Tz,
    },
    /// Every `Duration`, at multiples of it since 1970-01-01T00:00Z (the same instants on
    /// every worker, whenever each started).
    Every(Duration),
}

impl Schedule {
    /// The latest tick at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, tz } => cron
                .find_previous_occurrence(&now.with_timezone(tz), true)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(d) => {
                let step = d.as_millis() as i64;
                let ms = now.timestamp_millis();
                Utc.timestamp_millis_opt(ms.div_euclid(step) * step)
                    .single()
            }
        }
    }

    /// The first tick after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, tz } => cron
                .find_next_occurrence(&now.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(d) => {
                let step = d.as_millis() as i64;
                let ms = now.timestamp_millis();
                Utc.timestamp_millis_opt((ms.div_euclid(step) + 1) * step)
                    .single()
            }
        }
    }
}

/// One periodic job: its schedule and the definition recorded in the database.
#[derive(Debug, Clone)]
pub struct Periodic {
    pub schedule: Schedule,
    pub def: PeriodicJob,
}

/// Shortest `every`: a tick is a statement on every worker.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// Checks and converts the file's `[periodic.*]` tables; errors name the table.
pub fn parse_periodic(
    file: &str,
    tables: BTreeMap<String, PeriodicSettings>,
) -> Result<Vec<Periodic>, String> {
    let mut out = Vec::new();
    for (name, s) in tables {
        let bad = |msg: String| format!("SLUICE_HANDLERS_FILE {file}: periodic.\"{name}\": {msg}");
        if name.is_empty() || name.len() > 200 {
            return Err(bad("the name must be 1 to 200 characters".into()));
        }
        validate_kind(&s.kind).map_err(|e| bad(format!("kind: {e}")))?;
        let zone = s.timezone.clone().unwrap_or_else(|| "UTC".to_string());
        let tz = chrono_tz::Tz::from_str(&zone).map_err(|_| {
            bad(format!(
                "timezone {zone:?} is not an IANA zone name (e.g. \"Europe/Berlin\", \"UTC\")"
            ))
        })?;
        let (schedule, text) = match (&s.cron, &s.every) {
            (Some(expr), None) => {
                let cron = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Disallowed)
                    .build()
                    .parse(expr)
                    .map_err(|e| bad(format!("cron {expr:?}: {e} (5 fields: minute hour day-of-month month day-of-week)")))?;
                (
                    Schedule::Cron {
                        cron: Box::new(cron),
                        tz,
                    },
                    format!("cron {}", expr.trim()),
                )
            }
            (None, Some(every)) => {
                let d = parse_duration(every).map_err(|e| bad(format!("every: {e}")))?;
                if d < MIN_EVERY {
                    return Err(bad(format!("every must be at least {MIN_EVERY:?}")));
                }
                (Schedule::Every(d), format!("every {}", every.trim()))
            }
            (Some(_), Some(_)) => return Err(bad("set cron or every, not both".into())),
            (None, None) => return Err(bad("needs cron = \"...\" or every = \"...\"".into())),
        };
        if let Some(p) = s.priority {
            if !(-1000..=1000).contains(&p) {
                return Err(bad(format!("priority {p} is outside -1000..=1000")));
            }
        }
        if let Some(n) = s.max_attempts {
            if !(1..=1000).contains(&n) {
                return Err(bad(format!("max_attempts {n} is outside 1..=1000")));
            }
        }
        let now = Utc::now();
        out.push(Periodic {
            def: PeriodicJob {
                name: name.clone(),
                schedule: text,
                timezone: zone,
                kind: s.kind,
                payload: s.payload,
                priority: s.priority,
                max_attempts: s.max_attempts,
                next_run_at: schedule.next_after(now),
                last_tick_at: None,
                last_enqueued_at: None,
                updated_by: None,
                updated_at: now,
                created_at: now,
            },
            schedule,
        });
    }
    Ok(out)
}

/// Records the definitions, then enqueues each due tick until `stop` fires.
pub async fn run(shared: Arc<Shared>, mut periodic: Vec<Periodic>, stop: CancellationToken) {
    if periodic.is_empty() {
        stop.cancelled().await;
        return;
    }
    let pool = shared.client.pool().clone();
    let mut backoff = Duration::from_millis(200);
    // Record the definitions (and learn when each was first recorded).
    loop {
        let defs: Vec<PeriodicJob> = periodic.iter().map(|p| p.def.clone()).collect();
        match storage::record_periodic_jobs(&pool, &shared.identity, &defs).await {
            Ok(stored) => {
                for p in &mut periodic {
                    if let Some(s) = stored.iter().find(|s| s.name == p.def.name) {
                        p.def.created_at = s.created_at;
                    }
                }
                break;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not record periodic jobs; retrying");
                if wait(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(
        periodic = periodic.len(),
        "periodic jobs recorded; enqueuing their ticks"
    );
    // The newest tick this worker has handed to the database, per periodic job: each tick
    // is one statement per worker, not one per round.
    let mut done: Vec<Option<DateTime<Utc>>> = vec![None; periodic.len()];
    loop {
        let now = match storage::fetch_database_now(&pool).await {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "periodic: could not read the database clock; retrying");
                if wait(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut failed = false;
        let mut next_wake: Option<DateTime<Utc>> = None;
        for (p, done) in periodic.iter().zip(done.iter_mut()) {
            let next = p.schedule.next_after(now);
            if let Some(n) = next {
                next_wake = Some(next_wake.map_or(n, |w| w.min(n)));
            }
            let Some(tick) = p.schedule.latest_at_or_before(now) else {
                continue;
            };
            // A definition never enqueues a tick from before it was first recorded, and
            // this worker does not ask twice about a tick.
            if tick < p.def.created_at || done.is_some_and(|d| d >= tick) {
                continue;
            }
            match storage::enqueue_periodic_tick(&pool, &p.def, tick, next).await {
                Ok(created) => {
                    *done = Some(tick);
                    let outcome = if created { "enqueued" } else { "skipped" };
                    shared
                        .metrics
                        .periodic_ticks
                        .with_label_values(&[&p.def.name, outcome])
                        .inc();
                    if created {
                        tracing::info!(periodic = %p.def.name, kind = %p.def.kind, tick = %tick, "periodic job enqueued");
                    }
                }
                Err(err) => {
                    tracing::warn!(periodic = %p.def.name, error = %err, "could not enqueue a periodic tick; retrying");
                    failed = true;
                }
            }
        }
        let sleep = if failed {
            let b = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            b
        } else {
            backoff = Duration::from_millis(200);
            // Wake just after the next tick (on the database's clock), and at least once a
            // minute so a clock jump or a long DST rule is picked up.
            next_wake
                .and_then(|w| (w - now).to_std().ok())
                .map_or(Duration::from_secs(60), |d| d.min(Duration::from_secs(60)))
                + Duration::from_millis(5)
        };
        if wait(&stop, sleep).await {
            return;
        }
    }
}

/// Sleeps for `d`; true if `stop` fired first.
async fn wait(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Periodic>, String> {
        #[derive(Deserialize)]
        struct F {
            periodic: BTreeMap<String, PeriodicSettings>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        parse_periodic("h.toml", f.periodic)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_ticks_at_multiples_of_its_interval_since_the_epoch() {
        let p = parse("[periodic.a]\nevery = \"10s\"\nkind = \"k\"").unwrap();
        let s = &p[0].schedule;
        let now = at("2026-12-03T10:00:07.5Z");
        assert_eq!(s.latest_at_or_before(now), Some(at("2026-12-03T10:00:00Z")));
        assert_eq!(s.next_after(now), Some(at("2026-12-03T10:00:10Z")));
        assert_eq!(
            s.latest_at_or_before(at("2026-12-03T10:00:10Z")),
            Some(at("2026-12-03T10:00:10Z"))
        );
    }

    #[test]
    fn cron_is_read_on_the_wall_clock_of_its_time_zone() {
        let p = parse(
            "[periodic.n]\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\nkind = \"k\"\npayload = { scope = \"all\" }",
        )
        .unwrap();
        let s = &p[0].schedule;
        // 03:00 in Berlin is 02:00 UTC in winter.
        assert_eq!(
            s.next_after(at("2026-12-03T00:00:00Z")),
            Some(at("2026-12-03T02:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-12-03T01:59:00Z")),
            Some(at("2026-12-02T02:00:00Z"))
        );
        assert_eq!(p[0].def.payload, serde_json::json!({"scope": "all"}));
        assert_eq!(p[0].def.schedule, "cron 0 3 * * *");
    }

    #[test]
    fn a_cron_time_skipped_by_the_spring_dst_change_still_runs_that_day() {
        // Europe/Berlin skips 02:00-03:00 on 2027-03-28.
        let p = parse(
            "[periodic.n]\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nkind = \"k\"",
        )
        .unwrap();
        let next = p[0]
            .schedule
            .next_after(at("2027-03-27T23:00:00Z"))
            .unwrap();
        assert!(next < at("2027-03-28T12:00:00Z"), "{next}");
    }

    #[test]
    fn a_bad_periodic_table_is_refused_naming_it_and_the_problem() {
        for (text, needle) in [
            ("[periodic.a]\nkind = \"k\"", "needs cron"),
            (
                "[periodic.a]\ncron = \"* * * * *\"\nevery = \"1s\"\nkind = \"k\"",
                "not both",
            ),
            ("[periodic.a]\ncron = \"61 * * * *\"\nkind = \"k\"", "cron"),
            (
                "[periodic.a]\ncron = \"0 0 * * * *\"\nkind = \"k\"",
                "5 fields",
            ),
            ("[periodic.a]\nevery = \"100ms\"\nkind = \"k\"", "at least"),
            (
                "[periodic.a]\nevery = \"1s\"\nkind = \"k\"\ntimezone = \"Mars/Olympus\"",
                "IANA",
            ),
            ("[periodic.a]\nevery = \"1s\"\nkind = \"\"", "kind"),
            (
                "[periodic.a]\nevery = \"1s\"\nkind = \"k\"\nmax_attempts = 0",
                "max_attempts",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(needle) && err.contains("periodic.\"a\""),
                "{text}: {err}"
            );
        }
    }
}
