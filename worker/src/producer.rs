//! The producer: leases exactly as many jobs as there are free slots, in one statement,
//! and sleeps until there is reason to believe more are runnable.
//!
//! Reasons to look again: a notification for one of our kinds passed on by the
//! [`crate::listener`] (enqueue, retry, release, resume, an operator's UPDATE, a LISTEN
//! reconnect), a slot freeing up after a lease came back full, the time of the next
//! scheduled job, and a slow fallback poll. An idle worker therefore costs the database
//! almost nothing.
//!
//! The time of the next scheduled job is always asked of the database as a delay
//! (`run_at - now()` computed there), never as an absolute time compared with this
//! machine's clock: a worker whose clock is a few seconds off still starts a scheduled
//! job on time.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use sluice_common::{
    model::{KindLease, LeasedJob},
    storage,
};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{executor::spawn_job, state::Shared};

/// The producer's settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
}

/// Leases and starts jobs until `stop` fires. Returns once it has stopped leasing.
pub async fn run(
    shared: Arc<Shared>,
    tracker: TaskTracker,
    config: ProducerConfig,
    stop: CancellationToken,
) {
    let mut look = true;
    let mut next_scheduled: Option<Instant> = None;
    let mut error_backoff = Duration::from_millis(100);
    let mut refresh_schedule = true;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut came_back_full = false;
        if refresh_schedule {
            // Before the lease, never after it: a row that comes due between this query
            // (which counts only rows not yet due) and the lease is taken by the lease; one
            // due later gets the timer. Asked after the lease, a row coming due in between
            // (a retry with a 10 ms backoff on a loaded machine) would be neither, and wait
            // for the fallback poll. One query per notification of a scheduled job, per
            // timer and per poll, never per lease.
            refresh_schedule = false;
            next_scheduled = find_next_scheduled(&shared).await;
            look = true;
        }
        if look {
            let free = shared.slots.available_permits();
            if free > 0 {
                match lease_round(&shared, free).await {
                    Ok((jobs, full, limit_frees_in)) => {
                        // A rate limit held jobs back: look again when its next slot frees.
                        if let Some(wait) = limit_frees_in {
                            let at = Instant::now() + wait + Duration::from_millis(5);
                            next_scheduled = Some(next_scheduled.map_or(at, |t| t.min(at)));
                        }
                        error_backoff = Duration::from_millis(100);
                        shared.leasing.store(true, Ordering::SeqCst);
                        came_back_full = full;
                        for job in jobs {
                            // Only the producer takes permits, so these are there.
                            match shared.slots.clone().try_acquire_owned() {
                                Ok(permit) => spawn_job(&shared, &tracker, job, permit),
                                Err(_) => tracing::error!(
                                    job.id = job.id,
                                    "no free slot for a leased job"
                                ),
                            }
                        }
                    }
                    Err(err) => {
                        shared.leasing.store(false, Ordering::SeqCst);
                        tracing::warn!(error = %err, retry_in_ms = error_backoff.as_millis() as u64, "lease failed; backing off");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(error_backoff) => {}
                        }
                        error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            } else {
                // Every slot busy: there may be more runnable jobs; look when one frees.
                came_back_full = true;
            }
        }
        look = false;
        if came_back_full && shared.slots.available_permits() > 0 {
            look = true;
            continue;
        }
        let poll_at = Instant::now() + jittered(config.poll_interval);
        let wake_at = next_scheduled.map_or(poll_at, |t| t.min(poll_at));
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = shared.slot_freed.notified(), if came_back_full => { look = true; }
            _ = shared.wake.notified() => {
                let seen = shared.take_wake();
                look |= seen.look;
                refresh_schedule |= seen.schedule;
            }
            _ = tokio::time::sleep_until(wake_at) => {
                look = true;
                refresh_schedule = true;
                if next_scheduled.is_some_and(|t| t <= Instant::now()) {
                    next_scheduled = None;
                }
            }
        }
    }
}

/// ±10% so that many workers started together do not poll in lockstep.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

/// One lease statement for the kinds without a concurrency limit, plus one per limited
/// kind that has room (a per-process `concurrency`, or a `global_concurrency` /
/// `rate_limit` across workers, which [`storage::lease_limited_jobs`] enforces). Returns
/// the jobs, whether any statement came back full (so more may be waiting), and, when a
/// rate limit held jobs back, how long until it frees a slot.
async fn lease_round(
    shared: &Shared,
    free: usize,
) -> Result<(Vec<LeasedJob>, bool, Option<Duration>), sluice_common::Error> {
    let running = shared.running_by_kind();
    let mut unlimited = Vec::new();
    let mut limited = Vec::new();
    let mut global = Vec::new();
    for name in shared.registry.names() {
        let Some(kind) = shared.registry.get(name) else {
            continue;
        };
        let lease = KindLease {
            kind: name.to_string(),
            lease_timeout: kind.lease_timeout,
        };
        let room = kind
            .concurrency
            .map(|limit| limit.saturating_sub(running.get(name).copied().unwrap_or(0)) as usize);
        if kind.global_concurrency.is_some() || kind.rate_limit.is_some() {
            if room != Some(0) {
                global.push((lease, room.unwrap_or(usize::MAX)));
            }
            continue;
        }
        match kind.concurrency {
            None => unlimited.push(lease),
            Some(limit) => {
                let room = limit.saturating_sub(running.get(name).copied().unwrap_or(0)) as usize;
                if room > 0 {
                    limited.push((lease, room));
                }
            }
        }
    }
    let mut jobs = Vec::new();
    let mut full = false;
    let mut left = free;
    if !unlimited.is_empty() {
        let got =
            storage::lease_jobs(shared.client.pool(), &shared.identity, &unlimited, left).await?;
        shared.metrics.lease_batch.observe(got.len() as f64);
        full |= got.len() == left;
        left -= got.len();
        jobs.extend(got);
    }
    for (lease, room) in limited {
        if left == 0 {
            full = true;
            break;
        }
        let want = room.min(left);
        let got = storage::lease_jobs(
            shared.client.pool(),
            &shared.identity,
            std::slice::from_ref(&lease),
            want,
        )
        .await?;
        shared.metrics.lease_batch.observe(got.len() as f64);
        full |= got.len() == want;
        left -= got.len();
        jobs.extend(got);
    }
    let mut frees_in: Option<Duration> = None;
    for (lease, room) in global {
        if left == 0 {
            full = true;
            break;
        }
        let want = room.min(left);
        let got = storage::lease_limited_jobs(shared.client.pool(), &shared.identity, &lease, want)
            .await?;
        shared.metrics.lease_batch.observe(got.jobs.len() as f64);
        for limit in ["global_concurrency", "rate_limit"] {
            let held = if got.held_by == Some(limit) {
                got.held_back
            } else {
                0
            };
            shared
                .metrics
                .held_back
                .with_label_values(&[&lease.kind, limit])
                .set(i64::from(held));
        }
        // Full only when the limits let everything asked for through: jobs held back by a
        // global limit wait for a slot (this worker's own jobs finishing, the rate
        // timer, a notification, the poll), not for a tight re-lease loop.
        full |= got.jobs.len() == want;
        if let Some(d) = got.next_slot_in {
            frees_in = Some(frees_in.map_or(d, |f| f.min(d)));
        }
        left -= got.jobs.len();
        jobs.extend(got.jobs);
    }
    Ok((jobs, full, frees_in))
}

/// When the next scheduled (future) job of our kinds becomes runnable, as an Instant on
/// this machine's monotonic clock, from a delay the database measured on its own clock.
async fn find_next_scheduled(shared: &Shared) -> Option<Instant> {
    let kinds: Vec<&str> = shared.registry.names().collect();
    match storage::find_next_run_delay(shared.client.pool(), &kinds).await {
        // A little late rather than early: `run_at <= now()` must hold when we look.
        Ok(Some(wait)) => Some(Instant::now() + wait + Duration::from_millis(5)),
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(error = %err, "could not read the next scheduled time");
            None
        }
    }
}
