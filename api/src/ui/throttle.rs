//! Failed UI sign-ins are limited per client address, so a token cannot be guessed at the
//! speed of the API.
//!
//! Each address has a bucket of [`FAILURES_ALLOWED`] failed attempts that refills one
//! attempt every [`REFILL_EVERY`]: ten wrong tokens in a row, then one more every six
//! seconds (at most ten a minute, sustained). While a bucket is empty, sign-in answers 429
//! with `Retry-After` before looking at the token, so a correct token does not help
//! either. A successful sign-in leaves the bucket as it is.
//!
//! The address is the TCP peer ([`crate::server`] records it on every request); proxy
//! headers such as `X-Forwarded-For` are not trusted, since a client can write them. Behind a
//! load balancer all clients share its address and so share one bucket: an attacker can then
//! delay UI sign-ins for everyone (not the API or `sluicectl`, which never use this), which
//! is the price of not letting anyone pick their own key. Requests without a recorded peer
//! (in-process tests) share one bucket too.
//!
//! The table is in memory and per process (each API replica counts its own), and holds
//! at most [`MAX_ADDRESSES`] addresses: when full, buckets that have refilled completely
//! (nothing to remember) are dropped first, then the fullest.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failed attempts an address may make in a burst.
pub const FAILURES_ALLOWED: f64 = 10.0;
/// One more failed attempt is allowed after each of these.
pub const REFILL_EVERY: Duration = Duration::from_secs(6);
/// Addresses remembered at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// One address's allowance.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failed attempts still allowed, as of `at`.
    left: f64,
    /// When `left` was computed.
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> Bucket {
        let refilled =
            now.saturating_duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        Bucket {
            left: (self.left + refilled).min(FAILURES_ALLOWED),
            at: now,
        }
    }
}

/// The per-address buckets of one API process.
#[derive(Debug, Default)]
pub struct SignInThrottle {
    /// `None` is the bucket of requests without a recorded peer.
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

impl SignInThrottle {
    /// `Err(wait)` while `addr` has no failed attempt left: how long until it has one.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(&addr).map(|b| b.now(now)) {
            Some(b) if b.left < 1.0 => Err(REFILL_EVERY.mul_f64(1.0 - b.left)),
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt of `addr`.
    pub fn failed(&self, addr: Option<IpAddr>) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&addr) {
            buckets.retain(|_, b| b.now(now).left < FAILURES_ALLOWED);
            if buckets.len() >= MAX_ADDRESSES {
                if let Some(fullest) = buckets
                    .iter()
                    .max_by(|a, b| a.1.now(now).left.total_cmp(&b.1.now(now).left))
                    .map(|(k, _)| *k)
                {
                    buckets.remove(&fullest);
                }
            }
        }
        let b = buckets.get(&addr).map(|b| b.now(now)).unwrap_or(Bucket {
            left: FAILURES_ALLOWED,
            at: now,
        });
        buckets.insert(
            addr,
            Bucket {
                left: (b.left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_empty_an_address_and_leave_the_others_alone() {
        let t = SignInThrottle::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..10 {
            assert!(t.check(a).is_ok());
            t.failed(a);
        }
        let wait = t.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= REFILL_EVERY, "{wait:?}");
        assert!(t.check(b).is_ok());
        assert!(t.check(None).is_ok());
    }

    #[test]
    fn a_bucket_refills_with_time() {
        let past = Instant::now() - REFILL_EVERY * 2;
        let b = Bucket {
            left: 0.0,
            at: past,
        }
        .now(Instant::now());
        assert!(b.left >= 2.0 && b.left < 2.5, "{}", b.left);
        let full = Bucket {
            left: 9.5,
            at: past,
        }
        .now(Instant::now());
        assert_eq!(full.left, FAILURES_ALLOWED);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = SignInThrottle::default();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            t.failed(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert!(t.buckets.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
