//! The handler registry: which kinds this worker runs, and how.
//!
//! Each kind has a handler and settings: lease timeout (default 5m), max attempts, retry
//! backoff, an optional per-attempt timeout and an optional per-process concurrency limit.
//! Built-ins are `sluice.noop` and `sluice.sleep`; `SLUICE_HANDLERS_FILE` configures them
//! and adds HTTP-target kinds.

use std::{collections::BTreeMap, fmt, path::Path, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use sluice_common::config::{format_duration, parse_duration};
use sluice_common::model::{validate_kind, Backoff};
use sluice_common::retention::{overrides_from_handlers_file, RetentionOverride};
use tokio_util::sync::CancellationToken;

use crate::http_target::HttpTarget;

/// Lease timeout of a kind that does not set one (SPEC.md §3).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a handler gets: the job and the shutdown signal.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: i64,
    pub kind: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub payload: Value,
    /// W3C trace context of the enqueuing request, for handlers that call out.
    pub traceparent: Option<String>,
    /// Fires when the worker's drain budget is nearly spent (or the lease was lost):
    /// check it at safe yield points and return [`JobError::Interrupted`].
    pub shutdown: CancellationToken,
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Try again later (after the backoff, or `retry_after` if the target said).
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Never try again: the job ends `failed`.
    Permanent(String),
    /// Stopped because of the shutdown signal: back to `queued` without using the attempt.
    Interrupted(String),
    /// Not an error: the handler asks to run again after this delay, without using the
    /// attempt (a rate-limited downstream, a resource not ready yet). An HTTP target asks
    /// with `Sluice-Snooze: 30s` on a 2xx.
    Snooze(Duration),
}

impl JobError {
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retryable { message, .. } => write!(f, "{message}"),
            JobError::Permanent(m) => write!(f, "permanent: {m}"),
            JobError::Interrupted(m) => write!(f, "interrupted: {m}"),
            JobError::Snooze(d) => write!(f, "snoozed for {}", format_duration(*d)),
        }
    }
}

/// Runs jobs of one kind.
pub trait Handler: Send + Sync + fmt::Debug + 'static {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>>;
}

/// `sluice.noop`: returns at once (benchmarks, smoke tests).
#[derive(Debug)]
pub struct Noop;

impl Handler for Noop {
    fn run(&self, _ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(async { Ok(()) })
    }
}

/// `sluice.sleep`: `{"ms": N}`; sleeps in small steps, stopping early when the shutdown
/// signal fires, and then reports itself interrupted so it runs again elsewhere.
#[derive(Debug)]
pub struct Sleep;

/// Granularity of `sluice.sleep`: how late it may notice the shutdown signal.
const SLEEP_STEP: Duration = Duration::from_millis(50);

impl Handler for Sleep {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(async move {
            let ms = ctx
                .payload
                .get("ms")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    JobError::Permanent("sluice.sleep needs a payload {\"ms\": N}".into())
                })?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
            loop {
                if ctx.shutdown.is_cancelled() {
                    return Err(JobError::Interrupted(
                        "shutdown signal while sleeping".into(),
                    ));
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(());
                }
                tokio::time::sleep((deadline - now).min(SLEEP_STEP)).await;
            }
        })
    }
}

/// One kind's settings and handler.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: String,
    pub handler: Arc<dyn Handler>,
    pub lease_timeout: Duration,
    /// Attempts after which a retryable error fails the job, whatever the job's own
    /// `max_attempts` (the smaller wins).
    pub max_attempts: Option<i32>,
    pub backoff: Backoff,
    /// Per-attempt limit; past it the attempt is a retryable error.
    pub timeout: Option<Duration>,
    /// Most jobs of this kind running at once in this process.
    pub concurrency: Option<u32>,
    /// Most jobs of this kind `processing` at once across all workers (`global_concurrency`).
    pub global_concurrency: Option<u32>,
    /// Most starts of this kind in any window of the given length, across all workers
    /// (`rate_limit = "100/s"`).
    pub rate_limit: Option<RateLimit>,
}

/// `rate_limit = "N/s"` (or `/m`, `/h`): at most `starts` leases in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub starts: u32,
    pub window: Duration,
}

/// Most slots (concurrency or rate) one kind may have: each is a row locked by leases.
pub const MAX_LIMIT: u32 = 10_000;

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let hint = "write e.g. \"100/s\", \"30/m\" or \"500/h\"";
        let (n, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a rate; {hint}"))?;
        let starts: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: {n:?} is not a whole number; {hint}"))?;
        if !(1..=MAX_LIMIT).contains(&starts) {
            return Err(format!("{text:?}: the count must be 1..={MAX_LIMIT}"));
        }
        let window = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("{text:?}: unknown unit {other:?}; {hint}")),
        };
        Ok(RateLimit { starts, window })
    }
}

/// Every kind this worker knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Kind>,
    /// Per-kind retention overrides of the handlers file (`retention_completed` etc.), for
    /// every kind of the file: [`Registry::restrict_to`] leaves them alone, because the
    /// cleaner deletes all kinds' rows, not only the ones this worker runs.
    retention: BTreeMap<String, RetentionOverride>,
    /// The file's `[periodic.*]` tables. Kept by [`Registry::restrict_to`]: a worker may
    /// enqueue jobs of kinds it does not run itself.
    periodic: Vec<crate::periodic::Periodic>,
}

impl Registry {
    /// The built-ins with default settings.
    pub fn builtins() -> Self {
        let mut r = Registry::default();
        r.insert(Kind::new("sluice.noop", Arc::new(Noop)));
        r.insert(Kind::new("sluice.sleep", Arc::new(Sleep)));
        r
    }

    /// Adds the test-only kinds `sluice.hold`, `sluice.record` and `sluice.bench`
    /// (`SLUICE_WORKER_TEST_KINDS=on`).
    pub fn add_test_kinds(&mut self, pool: &sqlx::PgPool) {
        use crate::test_kinds::{Bench, Hold, Record};
        self.insert(Kind::new("sluice.bench", Arc::new(Bench::from_env())));
        self.insert(Kind::new(
            "sluice.hold",
            Arc::new(Hold { pool: pool.clone() }),
        ));
        self.insert(Kind::new(
            "sluice.record",
            Arc::new(Record { pool: pool.clone() }),
        ));
    }

    pub fn insert(&mut self, kind: Kind) {
        self.kinds.insert(kind.name.clone(), kind);
    }

    pub fn get(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// The handlers file's per-kind retention overrides (all kinds of the file).
    pub fn retention_overrides(&self) -> &BTreeMap<String, RetentionOverride> {
        &self.retention
    }

    /// Every kind's global limits (none for most), for `storage::register_kind_limits`.
    pub fn limits(&self) -> Vec<sluice_common::storage::KindLimits> {
        self.kinds
            .values()
            .map(|k| sluice_common::storage::KindLimits {
                kind: k.name.clone(),
                global_concurrency: k.global_concurrency,
                rate_limit: k.rate_limit.map(|r| (r.starts, r.window)),
            })
            .collect()
    }

    /// The handlers file's periodic jobs.
    pub fn periodic(&self) -> &[crate::periodic::Periodic] {
        &self.periodic
    }

    /// Keeps only `names` (SLUICE_WORKER_KINDS); an unknown name is an error naming it.
    pub fn restrict_to(&mut self, names: &[String]) -> Result<(), String> {
        if names.is_empty() {
            return Ok(());
        }
        for n in names {
            if !self.kinds.contains_key(n.trim()) {
                let known: Vec<&str> = self.names().collect();
                return Err(format!(
                    "SLUICE_WORKER_KINDS names unknown kind {:?}; known kinds: {}",
                    n.trim(),
                    known.join(", ")
                ));
            }
        }
        self.kinds
            .retain(|k, _| names.iter().any(|n| n.trim() == k));
        Ok(())
    }

    /// Applies a handlers file (SPEC.md §5) on top of the built-ins.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), String> {
        let name = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("SLUICE_HANDLERS_FILE {name}: cannot read: {e}"))?;
        let file: HandlersFile = toml::from_str(&text).map_err(|e| {
            format!(
                "SLUICE_HANDLERS_FILE {name}: {}",
                e.to_string().replace('\n', " ")
            )
        })?;
        self.retention = overrides_from_handlers_file(&text)
            .map_err(|e| format!("SLUICE_HANDLERS_FILE {name}: {e}"))?;
        self.periodic = crate::periodic::parse_periodic(&name.to_string(), file.periodic)?;
        for (kind_name, s) in file.kinds {
            let bad =
                |msg: String| format!("SLUICE_HANDLERS_FILE {name}: kinds.\"{kind_name}\": {msg}");
            validate_kind(&kind_name).map_err(|e| bad(e.to_string()))?;
            let dur = |field: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
                v.as_deref()
                    .map(|t| parse_duration(t).map_err(|e| bad(format!("{field}: {e}"))))
                    .transpose()
            };
            let timeout = dur("timeout", &s.timeout)?;
            let lease_timeout = dur("lease_timeout", &s.lease_timeout)?;
            let backoff_base = dur("backoff_base", &s.backoff_base)?;
            let backoff_max = dur("backoff_max", &s.backoff_max)?;
            if let Some(lt) = lease_timeout {
                if lt < Duration::from_millis(100) {
                    return Err(bad("lease_timeout must be at least 100ms".into()));
                }
            }
            if let Some(n) = s.max_attempts {
                if !(1..=1000).contains(&n) {
                    return Err(bad(format!("max_attempts {n} is outside 1..=1000")));
                }
            }
            if s.concurrency == Some(0) {
                return Err(bad("concurrency must be at least 1".into()));
            }
            if let Some(n) = s.global_concurrency {
                if !(1..=MAX_LIMIT).contains(&n) {
                    return Err(bad(format!(
                        "global_concurrency {n} is outside 1..={MAX_LIMIT}"
                    )));
                }
            }
            let rate_limit = s
                .rate_limit
                .as_deref()
                .map(|t| {
                    t.parse::<RateLimit>()
                        .map_err(|e| bad(format!("rate_limit: {e}")))
                })
                .transpose()?;
            let mut kind = match (&s.url, self.kinds.get(&kind_name)) {
                (Some(url), _) => {
                    let target = HttpTarget::new(
                        url,
                        &s.headers,
                        timeout.unwrap_or(Duration::from_secs(30)),
                    )
                    .map_err(&bad)?;
                    Kind::new(&kind_name, Arc::new(target))
                }
                (None, Some(existing)) => existing.clone(),
                (None, None) => return Err(bad("has no url and is not a built-in kind".into())),
            };
            if s.url.is_none() && !s.headers.is_empty() {
                return Err(bad("headers need a url".into()));
            }
            if let Some(lt) = lease_timeout {
                kind.lease_timeout = lt;
            }
            kind.timeout = timeout.or(kind.timeout);
            kind.max_attempts = s.max_attempts.or(kind.max_attempts);
            kind.concurrency = s.concurrency.or(kind.concurrency);
            kind.global_concurrency = s.global_concurrency.or(kind.global_concurrency);
            kind.rate_limit = rate_limit.or(kind.rate_limit);
            if let Some(b) = backoff_base {
                kind.backoff.base = b;
            }
            if let Some(m) = backoff_max {
                kind.backoff.max = m;
            }
            self.insert(kind);
        }
        Ok(())
    }
}

impl Kind {
    pub fn new(name: &str, handler: Arc<dyn Handler>) -> Self {
        Kind {
            name: name.to_string(),
            handler,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            max_attempts: None,
            backoff: Backoff::default(),
            timeout: None,
            concurrency: None,
            global_concurrency: None,
            rate_limit: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlersFile {
    #[serde(default)]
    kinds: BTreeMap<String, KindSettings>,
    #[serde(default)]
    periodic: BTreeMap<String, crate::periodic::PeriodicSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindSettings {
    url: Option<String>,
    timeout: Option<String>,
    lease_timeout: Option<String>,
    max_attempts: Option<i32>,
    concurrency: Option<u32>,
    global_concurrency: Option<u32>,
    rate_limit: Option<String>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    // The retention overrides (`1h`, `off`) are parsed by
    // `sluice_common::retention::overrides_from_handlers_file`; they are named here only so
    // `deny_unknown_fields` accepts them.
    /// How long completed jobs of this kind are kept.
    #[allow(dead_code)]
    retention_completed: Option<String>,
    /// How long failed jobs of this kind are kept.
    #[allow(dead_code)]
    retention_failed: Option<String>,
    /// How long cancelled jobs of this kind are kept.
    #[allow(dead_code)]
    retention_cancelled: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny temp-file helper so the tests need no extra crate.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "sluice-handlers-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::write(&p, text).expect("write temp file");
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn a_handlers_file_configures_builtins_and_adds_http_targets() {
        let f = write(
            r#"
            [kinds."search.reindex"]
            url = "http://127.0.0.1:9/reindex"
            timeout = "30s"
            lease_timeout = "5m"
            max_attempts = 25
            concurrency = 4
            headers = { Authorization = "Bearer x" }

            [kinds."sluice.sleep"]
            lease_timeout = "2s"
            "#,
        );
        let mut r = Registry::builtins();
        r.apply_file(&f.0).expect("valid file");
        let k = r.get("search.reindex").expect("added");
        assert_eq!(
            (k.concurrency, k.max_attempts, k.timeout),
            (Some(4), Some(25), Some(Duration::from_secs(30)))
        );
        assert_eq!(
            r.get("sluice.sleep").map(|k| k.lease_timeout),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_bad_handlers_file_is_refused_naming_the_problem() {
        for (text, needle) in [
            ("[kinds.\"x\"]\ntimeout = \"1s\"", "not a built-in"),
            (
                "[kinds.\"x\"]\nurl = \"http://a\"\nlease_timeout = \"5 parsecs\"",
                "lease_timeout",
            ),
            (
                "[kinds.\"x\"]\nurl = \"http://a\"\ncolour = \"red\"",
                "colour",
            ),
            ("[kinds.\"x\"]\nurl = \"ftp://a\"", "http"),
            ("not toml at all [", "SLUICE_HANDLERS_FILE"),
        ] {
            let f = write(text);
            let err = Registry::builtins().apply_file(&f.0).expect_err(text);
            assert!(
                err.contains(needle) && err.contains("SLUICE_HANDLERS_FILE"),
                "{err}"
            );
        }
        let err = Registry::builtins()
            .apply_file(Path::new("/nonexistent/h.toml"))
            .expect_err("missing");
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn retention_overrides_are_read_for_every_kind_of_the_file_even_when_restricted() {
        let f = write(
            r#"
            [kinds."search.reindex"]
            url = "http://127.0.0.1:9/reindex"
            retention_completed = "1h"
            retention_failed = "off"

            [kinds."sluice.sleep"]
            retention_cancelled = "30d"
            "#,
        );
        let mut r = Registry::builtins();
        r.apply_file(&f.0).expect("valid file");
        r.restrict_to(&["sluice.noop".into()]).expect("known");
        let o = r.retention_overrides();
        assert_eq!(
            o["search.reindex"].completed,
            Some(Some(Duration::from_secs(3600)))
        );
        assert_eq!(o["search.reindex"].failed, Some(None));
        assert_eq!(
            o["sluice.sleep"].cancelled,
            Some(Some(Duration::from_secs(30 * 86400)))
        );
        let bad = write("[kinds.\"sluice.noop\"]\nretention_completed = \"1 fortnight\"");
        let err = Registry::builtins().apply_file(&bad.0).expect_err("bad");
        assert!(err.contains("retention_completed"), "{err}");
    }

    #[test]
    fn worker_kinds_must_name_registered_kinds() {
        let mut r = Registry::builtins();
        assert!(r
            .restrict_to(&["nope".into()])
            .expect_err("unknown")
            .contains("nope"));
        r.restrict_to(&["sluice.noop".into()]).expect("known");
        assert_eq!(r.names().collect::<Vec<_>>(), vec!["sluice.noop"]);
    }
}
