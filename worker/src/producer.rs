//! The producer: leases as many jobs as there are free slots (plus, with
//! `SLUICE_WORKER_PREFETCH`, a small local buffer), in one statement, and sleeps until there is reason to believe more are runnable.
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
    collections::VecDeque,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use sluice_common::{
    model::{KindLease, Lease, LeasedJob},
    storage,
};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    executor::spawn_job,
    floors::Floors,
    state::{Running, Shared},
};

/// The producer's settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// Most jobs held leased ahead of free slots (`SLUICE_WORKER_PREFETCH`); 0: none.
    pub prefetch: usize,
}

/// Leases and starts jobs until `stop` fires. Returns once it has stopped leasing (and
/// has put its prefetched, never started jobs back).
///
/// With a prefetch, the producer keeps leased jobs in a local buffer and starts them as
/// slots free, without a round trip. The buffer holds what the worker starts in
/// [`PREFETCH_HORIZON`] at its recent rate, at most `prefetch` (so slow jobs are never
/// buffered, and no worker sits on more than a moment's work); it leases again when the
/// buffer is down to half, for the free slots plus the buffer's room, so a busy worker of
/// quick jobs leases them by the hundred. An idle worker is unaffected: a notification
/// leases what is there, one job included, and starts it at once. Buffered jobs are in
/// the running set from their lease on, so the heartbeat renews them, a cancellation
/// reaches them, and kind concurrency limits count them.
pub async fn run(
    shared: Arc<Shared>,
    tracker: TaskTracker,
    config: ProducerConfig,
    stop: CancellationToken,
) {
    let mut buffer: VecDeque<LeasedJob> = VecDeque::with_capacity(config.prefetch);
    produce(&shared, &tracker, &config, &stop, &mut buffer).await;
    release_buffered(&shared, buffer).await;
}

async fn produce(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    config: &ProducerConfig,
    stop: &CancellationToken,
    buffer: &mut VecDeque<LeasedJob>,
) {
    let mut look = true;
    let mut next_scheduled: Option<Instant> = None;
    let mut error_backoff = Duration::from_millis(100);
    let mut refresh_schedule = true;
    // The last lease came back full (or there was no room to lease): more may be waiting.
    let mut more = false;
    let mut rate = StartRate::new(std::time::Instant::now());
    let mut floors = Floors::new();
    // When a lease without floors is due after a floored one found less than it asked for.
    let mut full_due: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        start_buffered(shared, tracker, buffer, &mut rate);
        let mut came_back_full = false;
        if refresh_schedule {
            // Before the lease, never after it: a row that comes due between this query
            // (which counts only rows not yet due) and the lease is taken by the lease; one
            // due later gets the timer. Asked after the lease, a row coming due in between
            // (a retry with a 10 ms backoff on a loaded machine) would be neither, and wait
            // for the fallback poll. One query per notification of a scheduled job, per
            // timer and per poll, never per lease.
            refresh_schedule = false;
            next_scheduled = find_next_scheduled(shared).await;
            look = true;
        }
        if look {
            let want = wanted(shared, rate.buffer_size(config.prefetch), buffer.len());
            if want > 0 {
                let full_lease = floors.next_is_full(std::time::Instant::now());
                match lease_round(shared, want, &mut floors, full_lease).await {
                    Ok((jobs, full, limit_frees_in)) => {
                        // A floored lease that found less than asked may have missed a row
                        // behind a floor (see crate::floors): look again, without floors,
                        // when the next full lease is due, instead of at the next poll.
                        full_due = if !full_lease && !full {
                            floors.next_full_at().map(Instant::from_std)
                        } else {
                            None
                        };
                        // A rate limit held jobs back: look again when its next slot frees.
                        if let Some(wait) = limit_frees_in {
                            let at = Instant::now() + wait + Duration::from_millis(5);
                            next_scheduled = Some(next_scheduled.map_or(at, |t| t.min(at)));
                        }
                        error_backoff = Duration::from_millis(100);
                        shared.leasing.store(true, Ordering::SeqCst);
                        came_back_full = full;
                        for job in jobs {
                            hold(shared, &job);
                            buffer.push_back(job);
                        }
                        start_buffered(shared, tracker, buffer, &mut rate);
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
                // Every slot busy and the buffer full enough: there may be more runnable
                // jobs; look when a slot frees.
                came_back_full = true;
            }
            more = came_back_full;
        }
        look = false;
        if came_back_full && wanted(shared, rate.buffer_size(config.prefetch), buffer.len()) > 0 {
            look = true;
            continue;
        }
        let poll_at = Instant::now() + jittered(config.poll_interval);
        let wake_at = next_scheduled.map_or(poll_at, |t| t.min(poll_at));
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            // A freed slot starts a buffered job (top of the loop), and leases again if the
            // last lease suggested more are waiting.
            _ = shared.slot_freed.notified(), if more || !buffer.is_empty() => { look = more; }
            _ = shared.wake.notified() => {
                let seen = shared.take_wake();
                look |= seen.look;
                refresh_schedule |= seen.schedule;
            }
            _ = tokio::time::sleep_until(full_due.unwrap_or(wake_at)), if full_due.is_some_and(|t| t < wake_at) => {
                full_due = None;
                look = true;
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

/// How many jobs to lease now: one per free slot (not taken by a buffered job), plus the
/// buffer's room once it is down to half (so leases come in batches, not one per slot).
fn wanted(shared: &Shared, prefetch: usize, buffered: usize) -> usize {
    let free = shared.slots.available_permits().saturating_sub(buffered);
    let room = if buffered <= prefetch / 2 {
        prefetch - buffered
    } else {
        0
    };
    if free == 0 && room == 0 {
        0
    } else {
        free + room
    }
}

/// Enters a leased job in the running set (heartbeated, cancellable, counted against its
/// kind's limit) before it has a slot.
fn hold(shared: &Shared, job: &LeasedJob) {
    let lease_timeout = shared
        .registry
        .get(&job.kind)
        .map_or(Duration::from_secs(300), |k| k.lease_timeout);
    shared.lock_running().insert(
        job.id,
        Running {
            lease: Lease {
                job_id: job.id,
                token: job.token,
            },
            kind: job.kind.clone(),
            lease_timeout,
            renewed_at: std::time::Instant::now(),
            cancel: shared.handler_cancel.child_token(),
            abort: None,
            revoked: CancellationToken::new(),
            finished: false,
        },
    );
}

/// Starts buffered jobs, oldest lease first, while slots are free.
fn start_buffered(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    buffer: &mut VecDeque<LeasedJob>,
    rate: &mut StartRate,
) {
    let mut started = 0;
    while !buffer.is_empty() {
        // Only the producer takes permits, so a free one stays free until used here.
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            break;
        };
        if let Some(job) = buffer.pop_front() {
            spawn_job(shared, tracker, job, permit);
            started += 1;
        }
    }
    rate.note(started, std::time::Instant::now());
}

/// How far ahead the buffer looks: it holds at most what this worker starts in this
/// long, at the rate it has been starting jobs. Short enough that a buffered job waits
/// for a slot about as long as a lease round trip or two, and a worker never sits on work
/// another could be running; long enough that a worker starting thousands of jobs a
/// second leases them by the hundred.
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(50);

/// Jobs started per second, smoothed: what sizes the buffer. A worker of slow jobs (a
/// few a second) therefore buffers nothing, whatever `SLUICE_WORKER_PREFETCH` allows,
/// and one of quick jobs buffers up to it. It follows a rising rate within a few tenths
/// of a second (a backlog of quick jobs gets its buffer while it is still there) and a
/// falling one over about a second; a single burst, such as the slots filling at start,
/// moves it only a little.
#[derive(Debug)]
struct StartRate {
    /// The smoothed rate, jobs/s.
    per_sec: f64,
    /// Starts not yet folded into `per_sec`.
    pending: u64,
    /// When `per_sec` was last updated.
    since: std::time::Instant,
}

impl StartRate {
    /// How often starts are folded in (more often would make the rate jumpy).
    const FOLD_EVERY: Duration = Duration::from_millis(100);
    /// The smoothing time constant while the rate rises.
    const RISING: Duration = Duration::from_millis(200);
    /// The smoothing time constant while it falls.
    const FALLING: Duration = Duration::from_secs(1);

    fn new(now: std::time::Instant) -> StartRate {
        StartRate {
            per_sec: 0.0,
            pending: 0,
            since: now,
        }
    }

    /// Counts `started` jobs at `now`.
    fn note(&mut self, started: u64, now: std::time::Instant) {
        self.pending += started;
        let dt = now.saturating_duration_since(self.since);
        if dt < Self::FOLD_EVERY {
            return;
        }
        let seen = self.pending as f64 / dt.as_secs_f64();
        let tau = if seen > self.per_sec {
            Self::RISING
        } else {
            Self::FALLING
        };
        let weight = 1.0 - (-dt.as_secs_f64() / tau.as_secs_f64()).exp();
        self.per_sec += weight * (seen - self.per_sec);
        self.pending = 0;
        self.since = now;
    }

    /// The buffer's size now: the jobs started within [`PREFETCH_HORIZON`], at most `cap`.
    fn buffer_size(&self, cap: usize) -> usize {
        ((self.per_sec * PREFETCH_HORIZON.as_secs_f64()) as usize).min(cap)
    }
}

/// Puts the buffered (never started) jobs back at once, their attempt restored
/// (`interrupt_jobs`): the worker is draining and will not run them. If the database
/// does not answer, they stay in the running set and the drain's last step
/// ([`crate::maintenance::release_all`]) tries again.
async fn release_buffered(shared: &Shared, buffer: VecDeque<LeasedJob>) {
    if buffer.is_empty() {
        return;
    }
    let leases: Vec<Lease> = buffer
        .iter()
        .map(|j| Lease {
            job_id: j.id,
            token: j.token,
        })
        .collect();
    let reason = format!(
        "interrupted: worker {} was shutting down before starting the job",
        shared.identity
    );
    match crate::maintenance::interrupt_leases(shared, &leases, &reason).await {
        Ok(n) => tracing::info!(jobs = n, "put prefetched jobs back"),
        Err(err) => {
            tracing::warn!(error = %err, jobs = leases.len(), "could not put prefetched jobs back yet; retrying at the end of the drain");
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
///
/// Leases of kinds without a global limit start at each kind's claim floor, except in a
/// `full_lease` (see [`crate::floors`]).
async fn lease_round(
    shared: &Shared,
    free: usize,
    floors: &mut Floors,
    full_lease: bool,
) -> Result<(Vec<LeasedJob>, bool, Option<Duration>), sluice_common::Error> {
    // Time spent in the floored statements, which is what a full one costs more.
    let mut spent = Duration::ZERO;
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
            // This worker alone runs the kind's whole global allowance: no slot can be
            // free anywhere, so asking would be a statement per round for nothing (the
            // tax a limited kind would otherwise put on every other kind's leases).
            let mine = running.get(name).copied().unwrap_or(0);
            let all_ours = kind
                .global_concurrency
                .is_some_and(|limit| u64::from(mine) >= u64::from(limit));
            if room != Some(0) && !all_ours {
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
        let from = floors.for_kinds(unlimited.iter().map(|k| k.kind.as_str()), full_lease);
        let started = std::time::Instant::now();
        let got = storage::lease_jobs_from(
            shared.client.pool(),
            &shared.identity,
            &unlimited,
            &from,
            left,
        )
        .await?;
        shared.metrics.lease_batch.observe(got.len() as f64);
        spent += started.elapsed();
        floors.note(&got);
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
        let from = floors.for_kinds([lease.kind.as_str()], full_lease);
        let started = std::time::Instant::now();
        let got = storage::lease_jobs_from(
            shared.client.pool(),
            &shared.identity,
            std::slice::from_ref(&lease),
            &from,
            want,
        )
        .await?;
        shared.metrics.lease_batch.observe(got.len() as f64);
        spent += started.elapsed();
        floors.note(&got);
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
    if full_lease {
        floors.full_lease_done(spent, std::time::Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_of_slow_jobs_buffers_nothing_and_one_of_quick_jobs_up_to_the_cap() {
        let t0 = std::time::Instant::now();
        let mut slow = StartRate::new(t0);
        // Two starts a second for ten seconds.
        for i in 1..=20 {
            slow.note(1, t0 + Duration::from_millis(500 * i));
        }
        assert_eq!(slow.buffer_size(256), 0);

        let mut quick = StartRate::new(t0);
        // 5,000 starts a second for one second.
        for i in 1..=10 {
            quick.note(500, t0 + Duration::from_millis(100 * i));
        }
        // 5000/s × 50 ms = 250, approached within 1 - e^-5 after five time constants.
        let size = quick.buffer_size(1000);
        assert!((240..=250).contains(&size), "{size}");
        assert_eq!(quick.buffer_size(64), 64);
        assert_eq!(quick.buffer_size(0), 0);

        // A burst of 16 (slots filling) in an otherwise idle worker: a job or two.
        let mut burst = StartRate::new(t0);
        burst.note(16, t0 + Duration::from_millis(100));
        assert!(burst.buffer_size(256) <= 4, "{}", burst.buffer_size(256));

        // Idle for a while: the rate, and the buffer, fall back to nothing.
        quick.note(0, t0 + Duration::from_secs(10));
        assert_eq!(quick.buffer_size(1000), 0);
    }
}
