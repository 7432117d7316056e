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
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{batcher::Batcher, config::Settings, waiters::Waiters};

/// Shared by every request; cheap to clone: one reference count, however many parts it
/// has (every middleware layer and extractor clones it, once per request each).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
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
    /// Request work detached from its client ([`crate::detach`]): the drain waits for it,
    /// so a request whose client left still ends before the pool closes.
    pub detached: TaskTracker,
    /// Failed UI sign-ins per client address ([`crate::ui::throttle`]).
    pub sign_in_throttle: crate::ui::throttle::SignInThrottle,
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
        AppState(Arc::new(Shared {
            batcher: Batcher::start(pool),
            client,
            settings: Arc::new(settings),
            readiness,
            waiters,
            metrics,
            in_flight: InFlight::default(),
            background,
            detached: TaskTracker::new(),
            sign_in_throttle: Default::default(),
        }))
    }
}

/// How often the database is checked while it answers.
const CHECK_EVERY_OK: Duration = Duration::from_secs(1);
/// How often it is checked while it does not, so readiness comes back soon after it does.
const CHECK_EVERY_FAILING: Duration = Duration::from_millis(200);

/// Readiness flags, flipped by the signal handler and a background database check.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Set once, the instant SIGTERM arrives.
    draining: Arc<AtomicBool>,
    /// Cancelled together with `draining`: wakes the long-polls, which answer at once.
    drain: CancellationToken,
    /// Result of the latest background check (reachable, and the schema this binary
    /// needs is applied), or a request's lost connection since. A probe reads it; it
    /// never queries the database itself.
    database: Arc<RwLock<DbStatus>>,
    /// Asks the checker to check now (a request saw the database fail).
    recheck: Arc<Notify>,
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

impl Readiness {
    fn new(gauge: IntGauge) -> Self {
        Readiness {
            draining: Arc::new(AtomicBool::new(false)),
            drain: CancellationToken::new(),
            database: Arc::new(RwLock::new(DbStatus::Unavailable(
                "starting: the first database check has not finished".into(),
            ))),
            recheck: Arc::new(Notify::new()),
            gauge,
        }
    }

    /// Flips readiness to 503 at once; called synchronously from the signal handler.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.gauge.set(1);
        self.drain.cancel();
    }

    /// Whether SIGTERM arrived.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Fires when the drain starts (at once if it has).
    pub fn drain_started(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// A request saw the database fail: a lost connection makes readiness 503 now, and
    /// the checker checks at once (and then often) to tell when it is back. Other
    /// transient failures (a statement timeout, a lost race) say nothing about readiness.
    pub fn report(&self, failure: sluice_common::error::Failure) {
        if failure != sluice_common::error::Failure::ConnectionLost {
            return;
        }
        if let Ok(mut db) = self.database.write() {
            if *db == DbStatus::Ready {
                tracing::warn!("a request lost its database connection; reporting not ready");
                *db = DbStatus::Unavailable("connect: a request lost its connection".into());
            }
        }
        self.recheck.notify_one();
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

    /// Checks the database, and the schema this binary needs, on a connection of its own
    /// (made like the pool's): a pool busy with requests is load, not an outage, and must
    /// not make the API look down; a pool of one must not be shared with the check either.
    fn spawn_database_check(&self, pool: PgPool, tls: TlsSettings, stop: CancellationToken) {
        let database = self.database.clone();
        let recheck = self.recheck.clone();
        tokio::spawn(async move {
            // Logs each change of answer once (DatabaseCheck remembers the last one).
            let mut check = DatabaseCheck::new(pool, tls);
            loop {
                let status = tokio::select! {
                    _ = stop.cancelled() => return,
                    status = check.check() => status,
                };
                let now_ok = status == DbStatus::Ready;
                if let Ok(mut slot) = database.write() {
                    *slot = status;
                }
                let every = if now_ok {
                    CHECK_EVERY_OK
                } else {
                    CHECK_EVERY_FAILING
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = recheck.notified() => {}
                    _ = tokio::time::sleep(every) => {}
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
