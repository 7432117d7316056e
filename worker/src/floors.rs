//! Claim floors: where each kind's next lease may start reading the claim index, and
//! when a lease reads every kind's whole claim order instead.
//!
//! Why ([`storage::ClaimFloor`] has the long version): while a session holds the vacuum
//! horizon back, the entries of every job leased since stay in `jobs_claim_idx`, and a
//! lease that walks the index from its start visits the heap for each of them. After the
//! producer leased a kind's rows up to some `(priority, run_at)`, nothing before that
//! point is left to lease, except rows that arrived there later:
//!
//! - an enqueue that committed more than [`FLOOR_MARGIN`] after its `run_at` (its
//!   transaction's start) — the margin covers the ordinary ones;
//! - a lease another worker rolled back (its rows were skipped as locked);
//! - a rescued lease or a job put back by a draining worker (its old `run_at`);
//! - an operator's `UPDATE ... SET state = 'queued'` that left `run_at` alone.
//!
//! A lease without floors finds those. The producer runs one whenever
//! [`Floors::next_is_full`] says so: every [`FULL_LEASE_EVERY`] while they are cheap (so
//! on a healthy database such a row waits at most that long extra), and when they are
//! slow only as often as keeps the time spent in them under one part in
//! [`FULL_LEASE_SHARE`] (never less often than [`FULL_LEASE_MOST_EVERY`]). With the
//! vacuum horizon held for minutes and a lease without floors taking 100 ms, that is one
//! every two seconds, while every other lease stays as cheap as on a healthy table.
//! Higher priorities than a floor's are always read in full, so a new urgent job never
//! waits for a full lease.
//!
//! [`storage::ClaimFloor`]: sluice_common::storage::ClaimFloor

use std::{
    cmp::Reverse,
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sluice_common::{model::LeasedJob, storage::ClaimFloor};

/// How far behind the last leased row's `run_at` a floor sits, for enqueues that commit
/// a little after their `run_at` was stamped (the cleaner's retention floors use it too,
/// for completions and their `finished_at`). Under a held vacuum horizon a floored lease
/// reads the entries of the jobs leased in this window (at 10k jobs/s, 10k entries).
pub const FLOOR_MARGIN: Duration = Duration::from_secs(1);

/// Time between two leases without floors while they are cheap.
pub const FULL_LEASE_EVERY: Duration = Duration::from_millis(100);

/// Most time between two leases without floors, however slow they are.
pub const FULL_LEASE_MOST_EVERY: Duration = Duration::from_secs(30);

/// A lease without floors that took `d` is followed by the next one no sooner than
/// `d × FULL_LEASE_SHARE` later.
pub const FULL_LEASE_SHARE: u32 = 20;

/// The producer's floors, one per kind it leased, and the clock of full leases.
#[derive(Debug, Default)]
pub struct Floors {
    /// The floor of each kind, from the last row of it a lease returned.
    by_kind: HashMap<String, ClaimFloor>,
    /// When the next lease must read the whole claim order; `None`: now (start).
    next_full: Option<Instant>,
}

impl Floors {
    pub fn new() -> Floors {
        Floors::default()
    }

    /// Whether the lease about to run should read without floors.
    pub fn next_is_full(&self, now: Instant) -> bool {
        self.next_full.is_none_or(|t| now >= t)
    }

    /// When the next full lease is due (`None`: at once).
    pub fn next_full_at(&self) -> Option<Instant> {
        self.next_full
    }

    /// The floors to pass for `kinds` (`None` everywhere for a full lease).
    pub fn for_kinds<'a>(
        &self,
        kinds: impl IntoIterator<Item = &'a str>,
        full: bool,
    ) -> Vec<Option<ClaimFloor>> {
        kinds
            .into_iter()
            .map(|k| {
                if full {
                    None
                } else {
                    self.by_kind.get(k).copied()
                }
            })
            .collect()
    }

    /// Records what a lease returned: each kind's last row in claim order (lowest
    /// priority, then latest `run_at`; the statement's `RETURNING` order is not claim
    /// order) becomes its floor, less [`FLOOR_MARGIN`]. A kind that returned nothing keeps
    /// its floor.
    pub fn note(&mut self, jobs: &[LeasedJob]) {
        let mut last: HashMap<&str, (i16, DateTime<Utc>)> = HashMap::new();
        for job in jobs {
            let key = (job.priority, job.run_at);
            last.entry(job.kind.as_str())
                .and_modify(|k| {
                    if (Reverse(key.0), key.1) > (Reverse(k.0), k.1) {
                        *k = key;
                    }
                })
                .or_insert(key);
        }
        for (kind, (priority, run_at)) in last {
            let floor = ClaimFloor {
                priority,
                run_at: run_at - FLOOR_MARGIN,
            };
            self.by_kind.insert(kind.to_string(), floor);
        }
    }

    /// Schedules the next full lease after one that took `took`, ending `now`.
    pub fn full_lease_done(&mut self, took: Duration, now: Instant) {
        let wait = took
            .saturating_mul(FULL_LEASE_SHARE)
            .clamp(FULL_LEASE_EVERY, FULL_LEASE_MOST_EVERY);
        self.next_full = Some(now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(kind: &str, priority: i16, secs: i64) -> LeasedJob {
        let at = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        LeasedJob {
            id: secs,
            kind: kind.to_string(),
            payload: serde_json::json!({}),
            priority,
            attempts: 1,
            max_attempts: 3,
            token: 1,
            lease_expires_at: at,
            run_at: at,
            created_at: at,
            traceparent: None,
        }
    }

    #[test]
    fn a_floor_is_the_last_row_in_claim_order_less_the_margin() {
        let mut f = Floors::new();
        // Returned out of claim order, with a higher priority row that sorts first.
        f.note(&[job("a", 0, 20), job("a", 3, 30), job("a", 0, 10)]);
        let floors = f.for_kinds(["a", "b"], false);
        assert_eq!(floors[0].unwrap().priority, 0);
        assert_eq!(
            floors[0].unwrap().run_at,
            Utc.timestamp_opt(1_700_000_019, 0).unwrap(),
        );
        assert_eq!(floors[1], None, "a kind never leased has no floor");
        assert_eq!(
            f.for_kinds(["a"], true),
            vec![None],
            "a full lease has none"
        );
        f.note(&[]);
        assert_eq!(
            f.for_kinds(["a"], false)[0].unwrap().priority,
            0,
            "a kind that returned nothing keeps its floor"
        );
    }

    #[test]
    fn the_first_lease_is_full_then_one_every_interval_while_cheap() {
        let mut f = Floors::new();
        let t0 = Instant::now();
        assert!(f.next_is_full(t0));
        f.full_lease_done(Duration::from_millis(2), t0);
        assert!(!f.next_is_full(t0 + Duration::from_millis(50)));
        assert!(f.next_is_full(t0 + FULL_LEASE_EVERY));
    }

    #[test]
    fn a_slow_full_lease_is_repeated_only_after_twenty_times_its_duration() {
        let mut f = Floors::new();
        let t0 = Instant::now();
        f.full_lease_done(Duration::from_millis(100), t0);
        assert!(!f.next_is_full(t0 + Duration::from_millis(1_999)));
        assert!(f.next_is_full(t0 + Duration::from_millis(2_000)));
        f.full_lease_done(Duration::from_secs(10), t0);
        assert!(f.next_is_full(t0 + FULL_LEASE_MOST_EVERY));
    }
}
