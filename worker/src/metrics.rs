//! The worker's Prometheus metrics (SPEC.md §7). Names are binding: dashboards, alerts and
//! the rollout test read them.

use prometheus::{GaugeVec, IntGaugeVec};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric the worker exports, registered on one registry.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    pub completed: IntCounterVec,
    pub failed: IntCounterVec,
    pub retried: IntCounterVec,
    pub interrupted: IntCounterVec,
    pub rescued: IntCounterVec,
    /// Answers discarded because the lease had been lost (released, rescued, cancelled).
    pub lease_lost: IntCounterVec,
    pub run_seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub queue_depth: IntGaugeVec,
    pub oldest_queued_age: GaugeVec,
    pub shutting_down: IntGauge,
    /// Jobs per lease statement: shows whether batching is working.
    pub lease_batch: Histogram,
    /// Finished jobs this worker's cleaner deleted (retention), by kind and state: shows
    /// the cleaner runs, and at what rate the table sheds rows.
    pub deleted: IntCounterVec,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let registry = sluice_common::metrics::new_registry("sluice-worker");
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["kind"])
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let completed = counter(
            "sluice_jobs_completed_total",
            "Jobs completed by this worker, by kind.",
        );
        let failed = counter(
            "sluice_jobs_failed_total",
            "Jobs that ended failed (out of attempts or permanent error), by kind.",
        );
        let retried = counter(
            "sluice_jobs_retried_total",
            "Failed attempts scheduled for a retry, by kind.",
        );
        let interrupted = counter(
            "sluice_jobs_interrupted_total",
            "Jobs put back to queued without using an attempt (shutdown), by kind.",
        );
        let rescued = counter(
            "sluice_jobs_rescued_total",
            "Expired leases (of any worker) taken back by this worker's rescuer, by kind.",
        );
        let lease_lost = counter(
            "sluice_jobs_lease_lost_total",
            "Answers discarded because the job's lease was no longer held, by kind.",
        );
        let run_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_job_run_seconds",
                "Handler run time per attempt, by kind.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
            &["kind"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(run_seconds.clone()))
            .expect("registered once");
        let in_flight = IntGauge::new("sluice_jobs_in_flight", "Jobs running in this worker now.")
            .expect("static");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("registered once");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "sluice_queue_depth",
                "Jobs in the database by kind and state (refreshed periodically).",
            ),
            &["kind", "state"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("registered once");
        let oldest_queued_age = GaugeVec::new(
            Opts::new(
                "sluice_oldest_queued_job_age_seconds",
                "How long the oldest runnable queued job has waited, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(oldest_queued_age.clone()))
            .expect("registered once");
        let shutting_down = sluice_common::metrics::shutting_down_gauge(&registry);
        let lease_batch = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_lease_batch_size",
                "Jobs leased per lease statement.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(lease_batch.clone()))
            .expect("registered once");
        let deleted = IntCounterVec::new(
            Opts::new(
                "sluice_jobs_deleted_total",
                "Finished jobs deleted by this worker's cleaner (retention), by kind and state.",
            ),
            &["kind", "state"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(deleted.clone()))
            .expect("registered once");
        WorkerMetrics {
            registry,
            deleted,
            completed,
            failed,
            retried,
            interrupted,
            rescued,
            lease_lost,
            run_seconds,
            in_flight,
            queue_depth,
            oldest_queued_age,
            shutting_down,
            lease_batch,
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
