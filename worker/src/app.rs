//! Start-up and the drain: [`Worker::build`] checks configuration and binds the metrics
//! port; [`Worker::run_until_stopped`] leases and runs jobs until a signal, then drains in
//! the order SPEC.md §5 gives.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use sluice_common::{
    config::format_duration, db, listen::Wakeups, shutdown::Signals, storage, JobClient,
};
use tokio::{net::TcpListener, sync::mpsc, sync::Notify, sync::Semaphore, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    completer,
    config::Config,
    health, maintenance,
    metrics::WorkerMetrics,
    producer,
    registry::Registry,
    sd_notify,
    state::{Shared, Totals},
};

/// A worker ready to run: configuration checked, metrics port bound.
#[derive(Debug)]
pub struct Worker {
    config: Config,
    registry: Registry,
    metrics_listener: TcpListener,
}

/// A configuration problem: the binary prints it and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Worker {
    /// Builds the registry from the built-ins, the handlers file and the kinds filter, and
    /// binds the metrics listener.
    pub async fn build(config: Config) -> Result<Worker, ConfigError> {
        config.validate().map_err(ConfigError)?;
        let mut registry = Registry::builtins();
        if let Some(path) = &config.handlers_file {
            registry.apply_file(path).map_err(ConfigError)?;
        }
        registry.restrict_to(&config.kinds).map_err(ConfigError)?;
        let metrics_listener = TcpListener::bind(config.metrics_addr).await.map_err(|e| {
            ConfigError(format!(
                "SLUICE_METRICS_ADDR {}: cannot listen: {e}",
                config.metrics_addr
            ))
        })?;
        Ok(Worker {
            config,
            registry,
            metrics_listener,
        })
    }

    /// The address `/metrics` and `/health/*` are served on.
    pub fn metrics_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Runs until the drain completes. Exit code 0 after a graceful drain (even one that
    /// had to put jobs back), 130 after a second signal, 1 if the database never came up.
    pub async fn run_until_stopped(self, signals: Signals, draining: Arc<AtomicBool>) -> ExitCode {
        let Worker {
            config,
            registry,
            metrics_listener,
        } = self;
        let metrics = WorkerMetrics::new();
        let identity = sluice_common::shutdown::worker_identity();
        let max_conn = (config.concurrency / 8).clamp(4, 16) + 2;
        let pool = match db::connect_lazy(&config.db, "sluice-worker", max_conn) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: DATABASE_URL: {e}");
                return ExitCode::from(2);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: JobClient::new(pool.clone()),
            registry,
            identity: identity.clone(),
            metrics,
            running: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(config.concurrency as usize)),
            slot_freed: Notify::new(),
            outcomes: tx,
            handler_cancel: CancellationToken::new(),
            leasing: AtomicBool::new(false),
            draining: draining.clone(),
            totals: Totals::default(),
        });
        let flag_watch = {
            let shared = shared.clone();
            let soft = signals.soft.clone();
            tokio::spawn(async move {
                soft.cancelled().await;
                shared.draining.store(true, Ordering::SeqCst);
                shared.metrics.shutting_down.set(1);
            })
        };

        let health_stop = CancellationToken::new();
        let health = {
            let app = health::router(shared.clone());
            let stop = health_stop.clone();
            tokio::spawn(async move {
                let _ = axum::serve(metrics_listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            })
        };

        // Start-up: wait for the database (a worker may start before Postgres).
        if !db::wait_for_database(&pool, &signals.soft).await {
            tracing::info!("stopped before the database was reachable");
            health_stop.cancel();
            return ExitCode::SUCCESS;
        }
        let kinds: Vec<&str> = shared.registry.names().collect();
        if let Err(err) = storage::register_kinds(&pool, &kinds).await {
            tracing::warn!(error = %err, "could not register kinds; continuing");
        }
        let mut wakeups = Wakeups::new(pool.clone(), &[storage::JOBS_CHANNEL]);
        let mut delay = Duration::from_millis(100);
        while let Err(err) = wakeups.start().await {
            tracing::warn!(error = %err, "LISTEN failed; retrying");
            tokio::select! {
                _ = signals.soft.cancelled() => { health_stop.cancel(); return ExitCode::SUCCESS; }
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }

        let tracker = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let completer_finish = CancellationToken::new();
        let completer_abandon = CancellationToken::new();
        let completer = tokio::spawn(completer::run(
            shared.clone(),
            rx,
            completer_finish.clone(),
            completer_abandon.clone(),
        ));
        let heartbeat = tokio::spawn(maintenance::heartbeat(
            shared.clone(),
            background_stop.clone(),
        ));
        let rescuer = tokio::spawn(maintenance::rescuer(
            shared.clone(),
            config.rescue_interval,
            signals.soft.clone(),
        ));
        let stats = tokio::spawn(crate::stats::run(
            shared.clone(),
            config.stats_interval,
            signals.soft.clone(),
        ));
        let cleaner = tokio::spawn(crate::cleaner::run(
            shared.clone(),
            crate::cleaner::CleanerConfig {
                policy: sluice_common::retention::RetentionPolicy {
                    defaults: config.retention.retention(),
                    kinds: shared.registry.retention_overrides().clone(),
                },
                interval: config.retention_interval,
                batch: config.retention_batch as usize,
            },
            signals.soft.clone(),
        ));
        let producer = tokio::spawn(producer::run(
            shared.clone(),
            tracker.clone(),
            wakeups,
            producer::ProducerConfig {
                poll_interval: config.poll_interval,
            },
            signals.soft.clone(),
        ));
        shared.leasing.store(true, Ordering::SeqCst);
        sd_notify::notify("READY=1");
        tracing::info!(worker = %identity, kinds = ?kinds, concurrency = config.concurrency, "worker started; leasing");

        // ---- drain ----
        signals.soft.cancelled().await;
        let started = Instant::now();
        let budget = config.shutdown_timeout;
        // Handlers get the signal a little before the budget ends, so they can stop at a
        // safe point and still leave time to put their jobs back.
        let margin = (budget / 10).min(Duration::from_secs(2));
        let _ = producer.await;
        let in_flight = tracker.len();
        tracing::info!(in_flight, budget = %format_duration(budget), "leasing stopped; waiting for in-flight jobs");
        tracker.close();
        let mut hard = false;
        tokio::select! {
            _ = tracker.wait() => {}
            _ = tokio::time::sleep_until(started + budget - margin) => {}
            _ = signals.hard.cancelled() => hard = true,
        }
        if !tracker.is_empty() {
            let left = tracker.len();
            tracing::warn!(
                jobs = left,
                "drain budget nearly spent; signalling handlers to stop"
            );
            shared.handler_cancel.cancel();
            if !hard {
                tokio::select! {
                    _ = tracker.wait() => {}
                    _ = tokio::time::sleep_until(started + budget - margin / 2) => {}
                    _ = signals.hard.cancelled() => hard = true,
                }
            }
        }
        if !tracker.is_empty() {
            // Handlers that ignored the signal: stop them, and put their jobs back.
            let aborts: Vec<_> = shared
                .lock_running()
                .values()
                .filter_map(|r| r.abort.clone())
                .collect();
            for a in &aborts {
                a.abort();
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
        }
        // Every finished handler has sent its outcome: write them, then stop.
        completer_finish.cancel();
        let flush_deadline = started + budget + Duration::from_millis(500);
        tokio::select! {
            _ = async { let _ = (&mut Box::pin(completer)).await; } => {}
            _ = tokio::time::sleep_until(flush_deadline) => {
                completer_abandon.cancel();
            }
        }
        let released = maintenance::release_all(&shared).await;
        background_stop.cancel();
        let _ = heartbeat.await;
        let _ = rescuer.await;
        let _ = stats.await;
        let _ = cleaner.await;
        flag_watch.abort();
        health_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), health).await;
        pool.close().await;
        let t = &shared.totals;
        tracing::info!(
            completed = t.completed.load(Ordering::Relaxed),
            failed = t.failed.load(Ordering::Relaxed),
            retried = t.retried.load(Ordering::Relaxed),
            interrupted = t.interrupted.load(Ordering::Relaxed),
            released,
            lease_lost = t.lease_lost.load(Ordering::Relaxed),
            drain_ms = started.elapsed().as_millis() as u64,
            "worker stopped"
        );
        if hard {
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        }
    }
}
