//! The worker's Prometheus metrics (SPEC.md §7). Names are binding: dashboards, alerts and
//! the rollout test read them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, IntGaugeVec};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use sluice_common::JobState;

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
    /// Every kind the gauges have carried: their series stay (at 0) when a kind's jobs are
    /// all gone, because a series that vanishes reads as "no data", not "empty queue"
    /// (alerts and KEDA then see nothing instead of 0).
    known_kinds: Arc<Mutex<BTreeSet<String>>>,
    /// Finished jobs this worker's cleaner deleted (retention), by kind and state: shows
    /// the cleaner runs, and at what rate the table sheds rows.
    pub deleted: IntCounterVec,
    /// Periodic ticks this worker handed to the database, by periodic job and outcome:
    /// `enqueued` (this worker created the tick's job) or `skipped` (another worker had).
    pub periodic_ticks: IntCounterVec,
    /// Runnable jobs the last lease round of a limited kind could not start because of
    /// the limit, by kind and limit (`global_concurrency`, `rate_limit`).
    pub held_back: IntGaugeVec,
    /// Jobs that asked to run again later without using an attempt, by kind.
    pub snoozed: IntCounterVec,
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
        let periodic_ticks = IntCounterVec::new(
            Opts::new(
                "sluice_periodic_ticks_total",
                "Periodic ticks handled by this worker, by periodic job and outcome (enqueued: this worker created the job; skipped: another worker already had).",
            ),
            &["periodic", "outcome"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(periodic_ticks.clone()))
            .expect("registered once");
        let held_back = IntGaugeVec::new(
            Opts::new(
                "sluice_jobs_held_back",
                "Runnable jobs this worker's last lease round of a limited kind could not start because of the limit, by kind and limit.",
            ),
            &["kind", "limit"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(held_back.clone()))
            .expect("registered once");
        let snoozed = counter(
            "sluice_jobs_snoozed_total",
            "Jobs whose handler asked to run again later without using an attempt, by kind.",
        );
        WorkerMetrics {
            registry,
            deleted,
            periodic_ticks,
            held_back,
            snoozed,
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
            known_kinds: Arc::default(),
        }
    }

    /// Sets `sluice_queue_depth` from fresh `(kind, state, count)` rows: one series per
    /// kind × state for every kind in `kinds` (this worker's), in `counts`, or exported
    /// before, 0 where `counts` has no row. Never resets, so no series disappears.
    pub fn set_queue_depth<'a>(
        &self,
        kinds: impl IntoIterator<Item = &'a str>,
        counts: impl IntoIterator<Item = (&'a str, JobState, i64)>,
    ) {
        let mut by_key: HashMap<(&str, JobState), i64> = HashMap::new();
        for (kind, state, n) in counts {
            *by_key.entry((kind, state)).or_default() += n;
        }
        let known = self.remember_kinds(kinds.into_iter().chain(by_key.keys().map(|k| k.0)));
        for kind in &known {
            for state in JobState::ALL {
                let n = by_key.get(&(kind.as_str(), state)).copied().unwrap_or(0);
                self.queue_depth
                    .with_label_values(&[kind.as_str(), state.as_str()])
                    .set(n);
            }
        }
    }

    /// Sets `sluice_oldest_queued_job_age_seconds` from `(kind, age)` pairs, 0 for every
    /// other known kind (nothing runnable is waiting), like [`Self::set_queue_depth`].
    pub fn set_oldest_queued_age<'a>(
        &self,
        kinds: impl IntoIterator<Item = &'a str>,
        ages: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let ages: HashMap<&str, f64> = ages.into_iter().collect();
        let known = self.remember_kinds(kinds.into_iter().chain(ages.keys().copied()));
        for kind in &known {
            let age = ages.get(kind.as_str()).copied().unwrap_or(0.0);
            self.oldest_queued_age
                .with_label_values(&[kind.as_str()])
                .set(age);
        }
    }

    /// Adds `kinds` to the known set and returns a copy of it.
    fn remember_kinds<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut known = self
            .known_kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for kind in kinds {
            if !known.contains(kind) {
                known.insert(kind.to_string());
            }
        }
        known.iter().cloned().collect()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(m: &WorkerMetrics, kind: &str, state: &str) -> Option<i64> {
        let text = sluice_common::metrics::encode(&m.registry);
        let want = format!("sluice_queue_depth{{kind=\"{kind}\",state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .map(|v| v.parse().expect("integer gauge"))
    }

    #[test]
    fn a_queue_depth_series_goes_to_zero_instead_of_disappearing() {
        let m = WorkerMetrics::new();
        m.set_queue_depth(["noop"], [("email", JobState::Queued, 3)]);
        assert_eq!(depth(&m, "email", "queued"), Some(3));
        assert_eq!(depth(&m, "email", "processing"), Some(0));
        assert_eq!(
            depth(&m, "noop", "queued"),
            Some(0),
            "registered kinds are exported"
        );
        // The email jobs are gone: the series stays, at 0.
        m.set_queue_depth(["noop"], [("noop", JobState::Processing, 1)]);
        assert_eq!(depth(&m, "email", "queued"), Some(0));
        assert_eq!(depth(&m, "noop", "processing"), Some(1));
    }

    #[test]
    fn the_oldest_queued_age_of_a_drained_kind_reads_zero() {
        let m = WorkerMetrics::new();
        m.set_oldest_queued_age(["noop"], [("noop", 12.5)]);
        m.set_oldest_queued_age(["noop"], []);
        let text = sluice_common::metrics::encode(&m.registry);
        assert!(
            text.contains("sluice_oldest_queued_job_age_seconds{kind=\"noop\"} 0\n"),
            "{text}"
        );
    }
}
