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
    health, listener, maintenance,
    metrics::WorkerMetrics,
    producer,
    registry::Registry,
    sd_notify,
    state::{Shared, Totals},
    supervisor::Supervisor,
};

/// A worker ready to run: configuration checked, metrics port bound.
#[derive(Debug)]
pub struct Worker {
    config: Config,
    registry: Registry,
    metrics_listener: TcpListener,
    /// Built (without connecting) at start-up, so test kinds that need it can be
    /// registered before the handlers file configures them.
    pool: sqlx::PgPool,
}

/// A configuration problem: the binary prints it and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Worker {
    /// Builds the registry from the built-ins (and the test kinds, if enabled), the
    /// handlers file and the kinds filter, and binds the metrics listener.
    pub async fn build(config: Config) -> Result<Worker, ConfigError> {
        config.validate().map_err(ConfigError)?;
        let max_conn = (config.concurrency / 8).clamp(4, 16) + 2;
        let pool = db::connect_lazy(&config.db, "sluice-worker", max_conn)
            .map_err(|e| ConfigError(format!("DATABASE_URL: {e}")))?;
        let mut registry = Registry::builtins();
        if config.test_kinds {
            registry.add_test_kinds(&pool);
        }
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
            pool,
        })
    }

    /// The address `/metrics` and `/health/*` are served on.
    pub fn metrics_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Runs until the drain completes. Exit code 0 after a graceful drain (even one that
    /// had to put jobs back), 130 after a second signal, 1 if a service failed or
    /// outcomes had to be abandoned (the database did not come back within the budget).
    pub async fn run_until_stopped(self, signals: Signals, draining: Arc<AtomicBool>) -> ExitCode {
        let Worker {
            config,
            registry,
            metrics_listener,
            pool,
        } = self;
        let metrics = WorkerMetrics::new();
        let identity = sluice_common::shutdown::worker_identity();
        // Room for every slot's outcome and, with a prefetch, for the buffer's worth more:
        // while one completion statement is in flight, slots keep turning over through the
        // buffer, and their outcomes wait here to form the next (bigger) batch. Executors
        // only wait here when the completer cannot keep up (or the database is down).
        let (tx, rx) = mpsc::channel((config.concurrency + config.prefetch) as usize);
        let shared = Arc::new(Shared {
            client: JobClient::new(pool.clone()),
            registry,
            identity: identity.clone(),
            metrics,
            running: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(config.concurrency as usize)),
            slot_freed: Notify::new(),
            outcomes: tx,
            wake: Notify::new(),
            check_leases: Notify::new(),
            pending_wake: Mutex::default(),
            drain: CancellationToken::new(),
            broken: AtomicBool::new(false),
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
                shared.drain.cancel();
            })
        };
        let drain = shared.drain.clone();

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
        if !db::wait_for_database(&pool, &config.db, &signals.soft).await {
            tracing::info!("stopped before the database was reachable");
            health_stop.cancel();
            return ExitCode::SUCCESS;
        }
        let kinds: Vec<&str> = shared.registry.names().collect();
        if let Err(err) = storage::register_kinds(&pool, &kinds).await {
            tracing::warn!(error = %err, "could not register kinds; continuing");
        }
        // The limits must be in place before this worker leases: a limited kind is only
        // leased by the statement that enforces them, and that statement reads them (and
        // the slot rows) from the database.
        let limits = shared.registry.limits();
        let mut delay = Duration::from_millis(100);
        loop {
            let registered = match pool.acquire().await {
                Ok(mut conn) => storage::register_kind_limits(&mut conn, &limits).await,
                Err(e) => Err(e.into()),
            };
            match registered {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "could not record the kinds' limits; retrying");
                    tokio::select! {
                        _ = signals.soft.cancelled() => { health_stop.cancel(); return ExitCode::SUCCESS; }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let mut wakeups = Wakeups::new(
            pool.clone(),
            &[storage::JOBS_CHANNEL, storage::CANCEL_CHANNEL],
        );
        let mut delay = Duration::from_millis(100);
        while let Err(err) = wakeups.start().await {
            tracing::warn!(error = %err, "LISTEN failed; retrying");
            tokio::select! {
                _ = signals.soft.cancelled() => { health_stop.cancel(); return ExitCode::SUCCESS; }
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }

        let supervisor = Supervisor::new(shared.clone());
        let tracker = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let completer_finish = CancellationToken::new();
        let completer_abandon = CancellationToken::new();
        let completer = supervisor.spawn(
            "completer",
            completer_finish.clone(),
            completer::run(
                shared.clone(),
                rx,
                completer_finish.clone(),
                completer_abandon.clone(),
            ),
        );
        let listener = supervisor.spawn(
            "listener",
            background_stop.clone(),
            listener::run(shared.clone(), wakeups, background_stop.clone()),
        );
        let heartbeat = supervisor.spawn(
            "heartbeat",
            background_stop.clone(),
            maintenance::heartbeat(shared.clone(), background_stop.clone()),
        );
        let rescuer = supervisor.spawn(
            "rescuer",
            drain.clone(),
            maintenance::rescuer(shared.clone(), config.rescue_interval, drain.clone()),
        );
        let stats = supervisor.spawn(
            "stats",
            drain.clone(),
            crate::stats::run(shared.clone(), config.stats_interval, drain.clone()),
        );
        let cleaner = supervisor.spawn(
            "cleaner",
            drain.clone(),
            crate::cleaner::run(
                shared.clone(),
                crate::cleaner::CleanerConfig {
                    policy: sluice_common::retention::RetentionPolicy {
                        defaults: config.retention.retention(),
                        kinds: shared.registry.retention_overrides().clone(),
                    },
                    interval: config.retention_interval,
                    batch: config.retention_batch as usize,
                },
                drain.clone(),
            ),
        );
        let periodic = supervisor.spawn(
            "periodic",
            drain.clone(),
            crate::periodic::run(
                shared.clone(),
                shared.registry.periodic().to_vec(),
                drain.clone(),
            ),
        );
        let producer = supervisor.spawn(
            "producer",
            drain.clone(),
            producer::run(
                shared.clone(),
                tracker.clone(),
                producer::ProducerConfig {
                    poll_interval: config.poll_interval,
                    prefetch: config.prefetch as usize,
                },
                drain.clone(),
            ),
        );
        if !shared.broken.load(Ordering::SeqCst) {
            shared.leasing.store(true, Ordering::SeqCst);
        }
        sd_notify::notify("READY=1");
        tracing::info!(worker = %identity, kinds = %kinds.join(","), concurrency = config.concurrency, "worker started; leasing");

        // ---- drain ----
        drain.cancelled().await;
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
            if !hard {
                let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
            }
        }
        // Every finished handler has sent its outcome (or is blocked sending it, if the
        // completer is stuck): write them, retrying until the budget, then stop.
        completer_finish.cancel();
        let flush_deadline = started + budget + Duration::from_millis(500);
        if hard {
            completer_abandon.cancel();
        }
        let mut completer = completer;
        let finished = tokio::select! {
            f = &mut completer => f,
            _ = tokio::time::sleep_until(flush_deadline) => {
                completer_abandon.cancel();
                (&mut completer).await
            }
            _ = signals.hard.cancelled(), if !hard => {
                hard = true;
                completer_abandon.cancel();
                (&mut completer).await
            }
        };
        let abandoned = match finished {
            Ok(Some(f)) => f.abandoned,
            _ => Vec::new(),
        };
        // After a second signal this gets a second at most: "stop now" means now.
        let release_limit = if hard {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let released = tokio::time::timeout(release_limit, maintenance::release_all(&shared))
            .await
            .unwrap_or_else(|_| {
                tracing::error!(
                    "could not put unfinished jobs back in time; their leases will expire"
                );
                0
            });
        background_stop.cancel();
        // A service stuck on a dead database connection must not hold up the exit.
        let _ = tokio::time::timeout(release_limit, async {
            let _ = heartbeat.await;
            let _ = listener.await;
            let _ = rescuer.await;
            let _ = stats.await;
            let _ = cleaner.await;
            let _ = periodic.await;
        })
        .await;
        flag_watch.abort();
        health_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), health).await;
        if !hard {
            pool.close().await;
        }
        let t = &shared.totals;
        let broken = shared.broken.load(Ordering::SeqCst);
        tracing::info!(
            completed = t.completed.load(Ordering::Relaxed),
            failed = t.failed.load(Ordering::Relaxed),
            retried = t.retried.load(Ordering::Relaxed),
            interrupted = t.interrupted.load(Ordering::Relaxed),
            released,
            lease_lost = t.lease_lost.load(Ordering::Relaxed),
            abandoned = abandoned.len(),
            service_failed = broken,
            drain_ms = started.elapsed().as_millis() as u64,
            "worker stopped"
        );
        if hard {
            ExitCode::from(130)
        } else if broken || !abandoned.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}
