//! What every handler shares: the job client, settings, readiness, the enqueue batcher,
//! long-poll waiters, metrics and the in-flight register.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use sluice_common::{
    db::{DatabaseCheck, DbStatus, TlsSettings},
    metrics, JobClient,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{batcher::Batcher, config::Settings, waiters::Waiters};

/// Shared by every request; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The jobs table.
    pub client: JobClient,
    /// Limits and tokens.
    pub settings: Arc<Settings>,
    /// What `/health/ready` answers, with no database round trip.
    pub readiness: Readiness,
    /// Coalesces concurrent enqueues into one commit.
    pub batcher: Batcher,
    /// Long-polls waiting for jobs to finish.
    pub waiters: Waiters,
    /// HTTP and enqueue metrics.
    pub metrics: Arc<Metrics>,
    /// Requests being served, so a cut-off drain can say which.
    pub in_flight: InFlight,
    /// Stops the background tasks (listener, database check) this state started.
    pub background: CancellationToken,
}

impl AppState {
    /// Builds the state and starts its background tasks (needs a Tokio runtime).
    pub fn new(pool: PgPool, settings: Settings) -> AppState {
        let background = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(metrics.shutting_down.clone());
        let client = JobClient::new(pool.clone());
        let waiters = Waiters::start(pool.clone(), background.clone());
        readiness.spawn_database_check(
            pool.clone(),
            settings.database_tls.clone(),
            background.clone(),
        );
        AppState {
            batcher: Batcher::start(pool),
            client,
            settings: Arc::new(settings),
            readiness,
            waiters,
            metrics,
            in_flight: InFlight::default(),
            background,
        }
    }
}

/// Readiness flags, flipped by the signal handler and a background database check.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Set once, the instant SIGTERM arrives.
    draining: Arc<AtomicBool>,
    /// Result of the latest background check (reachable, and the schema this binary
    /// needs is applied). A probe reads it; it never queries the database itself.
    database: Arc<RwLock<DbStatus>>,
    /// `sluice_shutting_down`, flipped together with `draining`.
    gauge: IntGauge,
}

/// What `/health/ready` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyStatus {
    /// Serving.
    Ready,
    /// SIGTERM arrived.
    Draining,
    /// The last database check did not pass: unreachable, TLS or auth failure, or the
    /// schema is missing or older than this binary.
    NotReady(DbStatus),
}

impl ReadyStatus {
    /// The `status` word of the readiness body.
    pub fn word(&self) -> &'static str {
        match self {
            ReadyStatus::Ready => "ready",
            ReadyStatus::Draining => "draining",
            ReadyStatus::NotReady(db) => db.status(),
        }
    }

    /// Why it is not ready, when a database check said so.
    pub fn reason(&self) -> Option<String> {
        match self {
            ReadyStatus::NotReady(db) => db.reason(),
            _ => None,
        }
    }
}

/// How often the background check runs; readiness lags a database change by at most this
/// plus one check's timeout.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl Readiness {
    fn new(gauge: IntGauge) -> Self {
        Readiness {
            draining: Arc::new(AtomicBool::new(false)),
            database: Arc::new(RwLock::new(DbStatus::Unavailable(
                "starting: the first database check has not finished".into(),
            ))),
            gauge,
        }
    }

    /// Flips readiness to 503 at once; called synchronously from the signal handler.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.gauge.set(1);
    }

    /// The current answer.
    pub fn status(&self) -> ReadyStatus {
        if self.draining.load(Ordering::SeqCst) {
            return ReadyStatus::Draining;
        }
        match self.database.read() {
            Ok(db) if *db == DbStatus::Ready => ReadyStatus::Ready,
            Ok(db) => ReadyStatus::NotReady(db.clone()),
            Err(_) => ReadyStatus::NotReady(DbStatus::Unavailable("internal: poisoned".into())),
        }
    }

    fn spawn_database_check(&self, pool: PgPool, tls: TlsSettings, stop: CancellationToken) {
        let database = self.database.clone();
        tokio::spawn(async move {
            // Logs each change of answer once (DatabaseCheck remembers the last one).
            let mut check = DatabaseCheck::new(pool, tls);
            loop {
                let status = tokio::select! {
                    _ = stop.cancelled() => return,
                    status = check.check() => status,
                };
                if let Ok(mut slot) = database.write() {
                    *slot = status;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                }
            }
        });
    }
}

/// The API's own metrics (names are binding: SPEC.md §7).
#[derive(Debug)]
pub struct Metrics {
    /// Served on `SLUICE_METRICS_ADDR`.
    pub registry: Registry,
    /// `sluice_http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `sluice_http_request_duration_seconds{route,method}`.
    pub duration: HistogramVec,
    /// `sluice_http_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `sluice_jobs_enqueued_total{kind}` (created, not idempotent repeats).
    pub enqueued: IntCounterVec,
    /// `sluice_shutting_down`.
    pub shutting_down: IntGauge,
}

impl Metrics {
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let registry = metrics::new_registry("sluice-api");
        let shutting_down = metrics::shutting_down_gauge(&registry);
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_http_requests_total",
                "HTTP requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("static metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_http_request_duration_seconds",
                "HTTP request latency.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["route", "method"],
        )
        .expect("static metric");
        let in_flight = IntGauge::new(
            "sluice_http_requests_in_flight",
            "HTTP requests being served.",
        )
        .expect("static metric");
        let enqueued = IntCounterVec::new(
            Opts::new(
                "sluice_jobs_enqueued_total",
                "Jobs created through the API, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(enqueued.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            enqueued,
            shutting_down,
        }
    }
}

/// One request being served.
#[derive(Debug, Clone)]
pub struct InFlightEntry {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// When it arrived.
    pub started: Instant,
}

/// Register of requests being served.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// Next key.
    next: Arc<AtomicU64>,
    /// Requests by key.
    map: Arc<Mutex<HashMap<u64, InFlightEntry>>>,
}

/// Removes its request from the register when dropped (also when the future is dropped).
#[derive(Debug)]
pub struct InFlightGuard {
    /// Register to remove from.
    owner: InFlight,
    /// This request's key.
    key: u64,
}

impl InFlight {
    /// Records a request until the guard drops.
    pub fn enter(&self, method: String, path: String) -> InFlightGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.map.lock() {
            map.insert(
                key,
                InFlightEntry {
                    method,
                    path,
                    started: Instant::now(),
                },
            );
        }
        InFlightGuard {
            owner: self.clone(),
            key,
        }
    }

    /// The requests still running.
    pub fn snapshot(&self) -> Vec<InFlightEntry> {
        self.map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.owner.map.lock() {
            map.remove(&self.key);
        }
    }
}
