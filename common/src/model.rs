//! The job model: states, rows, inputs and their validation, retry backoff.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest payload accepted, as serialized JSON. Postgres would take far more, but a queue
/// row is read on every lease; big blobs belong in object storage with a key in the payload.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Inclusive priority range; higher runs first. Mirrors `jobs_priority_check`.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i16> = -1000..=1000;
/// Inclusive `max_attempts` range. Mirrors `jobs_max_attempts_check`.
pub const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<i32> = 1..=1000;
/// Attempts a job gets when its enqueuer does not say.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;
/// Longest kind name. Mirrors `jobs_kind_check`.
pub const MAX_KIND_LEN: usize = 200;
/// Longest idempotency key. Mirrors `jobs_idempotency_key_check`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Years a `run_at` may fall in. Postgres refuses timestamps before 4713 BC, and RFC 3339
/// (how the API writes times back) has four-digit years only; this range is inside both,
/// so a job accepted is a job Postgres stores and every client can read back.
pub const RUN_AT_YEARS: std::ops::RangeInclusive<i32> = 1..=9999;
/// Largest magnitude of a JSON number in a payload. Postgres stores JSON numbers as exact
/// decimals and writes them back in full; one near the edge of a double can come back out
/// of range and make the stored job unreadable.
pub const MAX_PAYLOAD_NUMBER: f64 = 1e300;

/// The life cycle of a job (SPEC.md §3). Stored as text so operators can read and write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at` and a free worker.
    Queued,
    /// Leased by a worker (`leased_by`) until `lease_expires_at`.
    Processing,
    /// Held back by an operator; never leased.
    Paused,
    /// Finished successfully.
    Completed,
    /// Out of attempts, or failed permanently.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Processing,
        JobState::Paused,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in `jobs.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// A job in a terminal state will not run again unless retried by an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned when a string is not one of the six states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state {0:?}; expected one of queued, processing, paused, completed, failed, cancelled"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

impl TryFrom<String> for JobState {
    type Error = UnknownState;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A row of `jobs`, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    pub leased_by: Option<String>,
    pub leased_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
}

/// The columns of [`Job`], for `SELECT`/`RETURNING` lists.
pub(crate) const JOB_COLUMNS: &str = "id, kind, payload, state, priority, run_at, attempts, max_attempts, \
     idempotency_key, leased_by, leased_at, lease_expires_at, last_error, created_at, updated_at, finished_at, traceparent";

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    pub priority: i16,
    /// Not before this time; `None` is "now" by the database clock.
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    /// With `kind`, makes the enqueue idempotent: the same pair again returns the first job.
    pub idempotency_key: Option<String>,
    /// W3C trace context of the enqueuing request.
    pub traceparent: Option<String>,
}

impl NewJob {
    /// A job of `kind` with `payload`, default priority and attempts, runnable now.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            priority: 0,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            idempotency_key: None,
            traceparent: None,
        }
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n;
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn traceparent(mut self, tp: Option<String>) -> Self {
        self.traceparent = tp;
        self
    }

    /// Checks every rule the database would also enforce, so bad input gets a precise
    /// message instead of a constraint name, and nothing reaches the database.
    ///
    /// This is the one place that knows what Postgres refuses (text with U+0000, a
    /// timestamp out of its range, numbers past the CHECK constraints): an input that
    /// passes here is stored, so one bad job batched with others can never fail them.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        validate_kind(&self.kind)?;
        if let Some(at) = self.run_at {
            use chrono::Datelike;
            if !RUN_AT_YEARS.contains(&at.year()) {
                return Err(InvalidJob::RunAt(at.to_rfc3339()));
            }
        }
        if !PRIORITY_RANGE.contains(&self.priority) {
            return Err(InvalidJob::Priority(self.priority as i64));
        }
        if !MAX_ATTEMPTS_RANGE.contains(&self.max_attempts) {
            return Err(InvalidJob::MaxAttempts(self.max_attempts as i64));
        }
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN {
                return Err(InvalidJob::IdempotencyKey);
            }
            if key.contains('\0') {
                return Err(InvalidJob::Nul("idempotency_key"));
            }
        }
        if let Some(tp) = &self.traceparent {
            if !is_valid_traceparent(tp) {
                return Err(InvalidJob::Traceparent);
            }
        }
        if json_has_nul(&self.payload) {
            return Err(InvalidJob::Nul("payload"));
        }
        if !json_numbers_fit(&self.payload) {
            return Err(InvalidJob::PayloadNumber);
        }
        let size = serde_json::to_vec(&self.payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_PAYLOAD_BYTES {
            return Err(InvalidJob::PayloadTooLarge {
                size,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(())
    }
}

/// Whether a JSON value holds U+0000 in a string or a key: Postgres text and jsonb cannot.
pub fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// Whether every number of a JSON value is within ±[`MAX_PAYLOAD_NUMBER`].
fn json_numbers_fit(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|f| f.abs() <= MAX_PAYLOAD_NUMBER),
        Value::Array(items) => items.iter().all(json_numbers_fit),
        Value::Object(map) => map.values().all(json_numbers_fit),
        _ => true,
    }
}

/// Refuses text Postgres cannot store (U+0000), naming the field: for free-text inputs
/// such as an operator's reason.
pub fn validate_text(field: &'static str, text: &str) -> Result<(), InvalidJob> {
    if text.contains('\0') {
        return Err(InvalidJob::Nul(field));
    }
    Ok(())
}

/// Why a job (or a kind name) was refused before reaching the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJob {
    #[error("kind must not be empty")]
    EmptyKind,
    #[error("kind is longer than {MAX_KIND_LEN} characters")]
    KindTooLong,
    #[error("kind {0:?} contains whitespace or control characters")]
    KindCharacters(String),
    #[error("priority {0} is outside -1000..=1000")]
    Priority(i64),
    #[error("max_attempts {0} is outside 1..=1000")]
    MaxAttempts(i64),
    #[error("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters")]
    IdempotencyKey,
    #[error("run_at {0} is outside the years 0001 to 9999")]
    RunAt(String),
    #[error("{0} holds a NUL character (\\u0000), which Postgres cannot store")]
    Nul(&'static str),
    #[error("payload holds a number beyond ±1e300, which cannot be stored exactly")]
    PayloadNumber,
    #[error("traceparent is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)")]
    Traceparent,
    #[error("payload is {size} bytes; the limit is {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("a batch holds 1 to {max} jobs; got {got}")]
    BatchSize { got: usize, max: usize },
    #[error("job {index} of the batch: {source}")]
    InBatch {
        index: usize,
        #[source]
        source: Box<InvalidJob>,
    },
}

/// Checks a kind name: 1 to 200 characters, none of them whitespace or control characters
/// (kinds appear in metric labels, log lines and NOTIFY payloads).
pub fn validate_kind(kind: &str) -> Result<(), InvalidJob> {
    if kind.is_empty() {
        return Err(InvalidJob::EmptyKind);
    }
    if kind.chars().count() > MAX_KIND_LEN {
        return Err(InvalidJob::KindTooLong);
    }
    if kind
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '@')
    {
        return Err(InvalidJob::KindCharacters(kind.to_string()));
    }
    Ok(())
}

/// `00-<trace id>-<parent id>-<flags>` as W3C Trace Context defines version 00.
pub fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

/// The outcome of an enqueue: the job, and whether this call created it (false when an
/// existing job with the same `(kind, idempotency_key)` was returned instead).
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    pub job: Job,
    pub created: bool,
}

/// Proof of a lease: the answer for a job is applied only while the row still holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub job_id: i64,
    /// The fencing token the lease statement wrote to `jobs.lease_token`.
    pub token: i64,
}

/// A job handed to a worker by [`crate::storage::lease_jobs`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LeasedJob {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub priority: i16,
    /// This attempt's number, starting at 1.
    pub attempts: i32,
    pub max_attempts: i32,
    #[sqlx(rename = "lease_token")]
    pub token: i64,
    pub lease_expires_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub traceparent: Option<String>,
}

impl LeasedJob {
    /// The fencing proof to present with this job's answer.
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.id,
            token: self.token,
        }
    }
}

/// A kind a worker leases, with the lease timeout its registry gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindLease {
    pub kind: String,
    pub lease_timeout: Duration,
}

/// A kind's retry settings from a worker's registry, for
/// [`crate::storage::rescue_expired_leases_for`]: the rescuer applies the same limits and
/// backoff as the completer would have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRetry {
    pub kind: String,
    /// Caps the row's `max_attempts` (the smaller wins); `None`: the row's alone.
    pub max_attempts: Option<i32>,
    /// Delay before the rescued job runs again.
    pub backoff: Backoff,
}

/// A failed attempt, to be recorded by [`crate::storage::fail_jobs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub lease: Lease,
    pub error: String,
    /// When to try again if attempts remain (ignored when `permanent`).
    pub retry_in: Duration,
    /// Do not retry whatever the attempts left (a 4xx from an HTTP target, a bad payload).
    pub permanent: bool,
}

/// What became of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailOutcome {
    pub job_id: i64,
    /// `queued` (will retry), `paused` (will retry once its kind resumes) or `failed`.
    pub state: JobState,
}

/// A job whose expired lease the rescuer took back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Rescued {
    pub id: i64,
    pub kind: String,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    /// Who held the lease that expired.
    pub leased_by: Option<String>,
}

/// Exponential backoff with jitter for retries.
///
/// The delay before attempt `n + 1` is `base * 2^(n-1)`, capped at `max`, then drawn
/// uniformly from its upper half ("equal jitter"): retries of jobs that failed together
/// spread out instead of hammering a recovering dependency in lockstep, and no retry comes
/// sooner than half the nominal delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// Nominal (un-jittered) delay after failed attempt number `attempt` (1-based).
    pub fn nominal(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 63) as u32 - 1;
        let factor = 2u64.saturating_pow(exp);
        let ms = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max)
    }

    /// Jittered delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: i32) -> Duration {
        let nominal = self.nominal(attempt);
        let half = nominal / 2;
        let extra = if half.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rand::thread_rng().gen_range(0..=half.as_nanos() as u64))
        };
        half + extra
    }
}

/// Number of jobs of one kind in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StateCount {
    pub kind: String,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    pub count: i64,
}

/// A kind as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct KindInfo {
    pub kind: String,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub reason: Option<String>,
}

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: Option<String>,
    pub details: Value,
}

/// Who did a manual action, and why; written to `audit_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub reason: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn states_round_trip_through_their_names() {
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>(), Ok(st));
        }
        assert!("running".parse::<JobState>().is_err());
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitters_within_the_upper_half() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.nominal(1), Duration::from_millis(100));
        assert_eq!(b.nominal(3), Duration::from_millis(400));
        assert_eq!(b.nominal(50), Duration::from_secs(1));
        for attempt in 1..10 {
            let d = b.delay(attempt);
            assert!(
                d >= b.nominal(attempt) / 2 && d <= b.nominal(attempt),
                "{d:?}"
            );
        }
    }

    #[test]
    fn validation_names_each_broken_rule() {
        let ok = NewJob::new("email.send", json!({"to": "a"}));
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            NewJob::new("", json!({})).validate(),
            Err(InvalidJob::EmptyKind)
        );
        assert_eq!(
            NewJob::new("a b", json!({})).validate(),
            Err(InvalidJob::KindCharacters("a b".into()))
        );
        assert_eq!(
            ok.clone().priority(1001).validate(),
            Err(InvalidJob::Priority(1001))
        );
        assert_eq!(
            ok.clone().max_attempts(0).validate(),
            Err(InvalidJob::MaxAttempts(0))
        );
        assert_eq!(
            ok.clone().idempotency_key("").validate(),
            Err(InvalidJob::IdempotencyKey)
        );
        assert_eq!(
            ok.clone().traceparent(Some("nope".into())).validate(),
            Err(InvalidJob::Traceparent)
        );
        let ancient = chrono::NaiveDate::from_ymd_opt(-5000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc());
        assert!(matches!(
            ok.clone().run_at(ancient.unwrap()).validate(),
            Err(InvalidJob::RunAt(_))
        ));
        assert_eq!(
            NewJob::new("k", json!({"a": ["x\u{0}"]})).validate(),
            Err(InvalidJob::Nul("payload"))
        );
        assert_eq!(
            NewJob::new("k", json!({"a\u{0}": 1})).validate(),
            Err(InvalidJob::Nul("payload"))
        );
        assert_eq!(
            ok.clone().idempotency_key("a\u{0}b").validate(),
            Err(InvalidJob::Nul("idempotency_key"))
        );
        assert_eq!(
            NewJob::new("k", json!([1e308])).validate(),
            Err(InvalidJob::PayloadNumber)
        );
        let big = NewJob::new("k", json!("x".repeat(MAX_PAYLOAD_BYTES)));
        assert!(matches!(
            big.validate(),
            Err(InvalidJob::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn traceparents_follow_the_w3c_shape() {
        assert!(is_valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
    }
}
