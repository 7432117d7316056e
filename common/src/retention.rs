//! Retention of finished jobs (SPEC.md §2, §3): how long `completed`, `failed` and
//! `cancelled` jobs are kept after `finished_at`, per state, with per-kind overrides from
//! the handlers file. The worker's cleaner applies it; `sluicectl doctor` reads the same
//! variables to show what is in effect.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::config::{format_duration, parse_duration};
use crate::JobState;

/// How long finished jobs are kept: `Some(d)` deletes them `d` after they finished, `None`
/// (written `off`) keeps them forever.
pub type Keep = Option<Duration>;

/// The finished states, the ones retention applies to, in a fixed order.
pub const FINISHED_STATES: [JobState; 3] =
    [JobState::Completed, JobState::Failed, JobState::Cancelled];

/// Parses a retention value: a duration (`24h`, `7d`, `90m`) or `off`.
pub fn parse_keep(text: &str) -> Result<Keep, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_duration(text)
        .map(Some)
        .map_err(|e| format!("{e}, or off to keep forever"))
}

/// Formats a retention value the way [`parse_keep`] reads it.
pub fn format_keep(keep: Keep) -> String {
    match keep {
        None => "off".to_string(),
        Some(d)
            if d.as_secs() >= 2 * 86_400 && d.as_secs() % 86_400 == 0 && d.subsec_nanos() == 0 =>
        {
            format!("{}d", d.as_secs() / 86_400)
        }
        Some(d) => format_duration(d),
    }
}

/// The retention of each finished state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `completed` jobs: most of the table, so kept shortest by default (24h).
    pub completed: Keep,
    /// `failed` jobs: kept longer (7d) because someone may need to read `last_error` or
    /// retry them after a weekend.
    pub failed: Keep,
    /// `cancelled` jobs: kept as long as failed ones (7d), as the record of an operator's
    /// decision.
    pub cancelled: Keep,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            completed: Some(Duration::from_secs(24 * 3600)),
            failed: Some(Duration::from_secs(7 * 24 * 3600)),
            cancelled: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl Retention {
    /// The retention of `state`; `None` for states that are not finished.
    pub fn for_state(&self, state: JobState) -> Option<Keep> {
        match state {
            JobState::Completed => Some(self.completed),
            JobState::Failed => Some(self.failed),
            JobState::Cancelled => Some(self.cancelled),
            _ => None,
        }
    }
}

/// A kind's overrides from the handlers file (`retention_completed = "1h"` etc.); `None`
/// inherits the process-wide setting for that state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOverride {
    /// `retention_completed`.
    pub completed: Option<Keep>,
    /// `retention_failed`.
    pub failed: Option<Keep>,
    /// `retention_cancelled`.
    pub cancelled: Option<Keep>,
}

impl RetentionOverride {
    fn for_state(&self, state: JobState) -> Option<Keep> {
        match state {
            JobState::Completed => self.completed,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
            _ => None,
        }
    }

    /// Whether it overrides anything at all.
    pub fn is_empty(&self) -> bool {
        self.completed.is_none() && self.failed.is_none() && self.cancelled.is_none()
    }
}

/// What the cleaner applies: the process-wide retention and the kinds that override it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// From `SLUICE_RETENTION_*`.
    pub defaults: Retention,
    /// From the handlers file, by kind. Every kind of the file is here, including kinds
    /// this worker does not run (`SLUICE_WORKER_KINDS`): the elected cleaner deletes every
    /// kind's rows and must honour every kind's window.
    pub kinds: BTreeMap<String, RetentionOverride>,
}

impl RetentionPolicy {
    /// How long finished jobs of `kind` in `state` are kept (`None`: forever, or `state`
    /// is not finished).
    pub fn keep(&self, kind: &str, state: JobState) -> Keep {
        let default = self.defaults.for_state(state).flatten();
        match self.kinds.get(kind).and_then(|o| o.for_state(state)) {
            Some(over) => over,
            None if state.is_terminal() => default,
            None => None,
        }
    }

    /// For display (`sluicectl doctor`, the worker's start-up log).
    pub fn describe(&self) -> RetentionReport {
        let show = |r: &Retention| StateRetention {
            completed: format_keep(r.completed),
            failed: format_keep(r.failed),
            cancelled: format_keep(r.cancelled),
        };
        RetentionReport {
            defaults: show(&self.defaults),
            kinds: self
                .kinds
                .iter()
                .filter(|(_, o)| !o.is_empty())
                .map(|(k, o)| {
                    let r = Retention {
                        completed: o.completed.unwrap_or(self.defaults.completed),
                        failed: o.failed.unwrap_or(self.defaults.failed),
                        cancelled: o.cancelled.unwrap_or(self.defaults.cancelled),
                    };
                    (k.clone(), show(&r))
                })
                .collect(),
        }
    }
}

/// Retention as text, per state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StateRetention {
    /// e.g. `24h`, or `off`.
    pub completed: String,
    /// e.g. `7d`, or `off`.
    pub failed: String,
    /// Same for cancelled.
    pub cancelled: String,
}

/// The policy in effect, for people and scripts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RetentionReport {
    /// The process-wide settings.
    pub defaults: StateRetention,
    /// Kinds with an override, with their resulting settings.
    pub kinds: BTreeMap<String, StateRetention>,
}

/// The per-kind retention overrides of a handlers file (`SLUICE_HANDLERS_FILE`):
/// `retention_completed`, `retention_failed` and `retention_cancelled` in any
/// `[kinds."..."]` table, each a duration or `off`. Other keys are not looked at here (the
/// worker's registry checks them). Errors name the file's kind and key.
pub fn overrides_from_handlers_file(
    text: &str,
) -> Result<BTreeMap<String, RetentionOverride>, String> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?;
    let mut out = BTreeMap::new();
    let Some(kinds) = doc.get("kinds") else {
        return Ok(out);
    };
    let kinds = kinds
        .as_table()
        .ok_or_else(|| "kinds must be a table of kinds".to_string())?;
    for (kind, settings) in kinds {
        let Some(settings) = settings.as_table() else {
            continue;
        };
        let read = |key: &str| -> Result<Option<Keep>, String> {
            match settings.get(key) {
                None => Ok(None),
                Some(toml::Value::String(v)) => parse_keep(v)
                    .map(Some)
                    .map_err(|e| format!("kinds.\"{kind}\": {key}: {e}")),
                Some(_) => Err(format!(
                    "kinds.\"{kind}\": {key} must be a string such as \"1h\" or \"off\""
                )),
            }
        };
        let o = RetentionOverride {
            completed: read("retention_completed")?,
            failed: read("retention_failed")?,
            cancelled: read("retention_cancelled")?,
        };
        if !o.is_empty() {
            out.insert(kind.clone(), o);
        }
    }
    Ok(out)
}

/// `SLUICE_RETENTION_*`, flattened into the worker's command line and `sluicectl doctor`'s.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Completed jobs older than this (by `finished_at`) are deleted; `off` keeps them.
    #[arg(long = "retention-completed", env = "SLUICE_RETENTION_COMPLETED", value_name = "SLUICE_RETENTION_COMPLETED",
          default_value = "24h", value_parser = parse_keep)]
    pub completed: Keep,

    /// The same for failed jobs.
    #[arg(long = "retention-failed", env = "SLUICE_RETENTION_FAILED", value_name = "SLUICE_RETENTION_FAILED",
          default_value = "7d", value_parser = parse_keep)]
    pub failed: Keep,

    /// The same for cancelled jobs.
    #[arg(long = "retention-cancelled", env = "SLUICE_RETENTION_CANCELLED", value_name = "SLUICE_RETENTION_CANCELLED",
          default_value = "7d", value_parser = parse_keep)]
    pub cancelled: Keep,
}

impl RetentionArgs {
    /// The process-wide retention these settings describe.
    pub fn retention(&self) -> Retention {
        Retention {
            completed: self.completed,
            failed: self.failed,
            cancelled: self.cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_values_are_durations_or_off() {
        assert_eq!(parse_keep("off"), Ok(None));
        assert_eq!(parse_keep("OFF"), Ok(None));
        assert_eq!(parse_keep("1h"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(parse_keep("7d"), Ok(Some(Duration::from_secs(7 * 86400))));
        let err = parse_keep("forever").expect_err("refused");
        assert!(err.contains("off"), "{err}");
    }

    #[test]
    fn a_handlers_file_sets_per_kind_retention_and_bad_values_name_the_key() {
        let got = overrides_from_handlers_file(
            r#"
            [kinds."audit.export"]
            url = "http://x"
            retention_completed = "1h"
            retention_failed = "off"
            [kinds."sluice.noop"]
            lease_timeout = "2s"
            "#,
        )
        .expect("valid");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got["audit.export"].completed,
            Some(Some(Duration::from_secs(3600)))
        );
        assert_eq!(got["audit.export"].failed, Some(None));
        assert_eq!(got["audit.export"].cancelled, None);
        let err = overrides_from_handlers_file("[kinds.\"x\"]\nretention_failed = \"soon\"")
            .expect_err("bad");
        assert!(
            err.contains("retention_failed") && err.contains("kinds.\"x\""),
            "{err}"
        );
    }

    #[test]
    fn a_kind_override_wins_per_state_and_the_rest_inherit() {
        let mut policy = RetentionPolicy::default();
        policy.kinds.insert(
            "audit.export".into(),
            RetentionOverride {
                completed: Some(Some(Duration::from_secs(60))),
                failed: Some(None),
                cancelled: None,
            },
        );
        let day = Some(Duration::from_secs(86400));
        assert_eq!(
            policy.keep("audit.export", JobState::Completed),
            Some(Duration::from_secs(60))
        );
        assert_eq!(policy.keep("audit.export", JobState::Failed), None);
        assert_eq!(
            policy.keep("audit.export", JobState::Cancelled),
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(policy.keep("other", JobState::Completed), day);
        assert_eq!(policy.keep("other", JobState::Queued), None);
        let shown = policy.describe();
        assert_eq!(shown.defaults.completed, "1d");
        assert_eq!(shown.kinds["audit.export"].failed, "off");
    }
}
