//! Rate limits (governor, GCRA): per user, per client address, and a global
//! claim rate per instance.
//!
//! Memory: a keyed limiter holds one 8-byte state per key it has seen
//! (plus the key). With millions of distinct users or addresses that must
//! not grow without bound, so:
//! - [`Limiters::housekeeping`] (every second, from `serve`) drops the keys
//!   whose state is back to "fresh" (`retain_recent`: idle for longer than
//!   it takes to refill the burst), which loses nothing;
//! - if more than `max_keys` keys are still live, or if a request finds the
//!   map over `max_keys` between two sweeps (checked every
//!   [`LEN_CHECK_EVERY`] checks), the limiter starts afresh. That forgets
//!   who was throttled (a flood of that many distinct keys is an attack on
//!   the limiter itself), but memory stays at about `max_keys` entries.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{ProtectSettings, Rate};
use crate::domain::UserId;

/// A request is checked against the map size once every this many checks.
pub const LEN_CHECK_EVERY: u64 = 1024;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;
type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// A refusal: the caller may try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)).max(1)
    }
}

fn quota(r: Rate) -> Quota {
    let per_sec = NonZeroU32::new(r.per_sec.max(1)).expect("max(1) is non-zero");
    let burst = NonZeroU32::new(r.burst.max(1)).expect("max(1) is non-zero");
    Quota::per_second(per_sec).allow_burst(burst)
}

/// A keyed limiter whose memory is bounded (see the module note).
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    quota: Quota,
    clock: DefaultClock,
    /// Swapped for a fresh limiter when it holds too many keys.
    current: RwLock<Keyed<K>>,
    max_keys: usize,
    checks: AtomicU64,
    /// Requests refused by this limiter.
    refused: AtomicU64,
    /// Times the limiter started afresh because it held too many keys.
    resets: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        let quota = quota(rate);
        let clock = DefaultClock::default();
        Self {
            quota,
            current: RwLock::new(RateLimiter::dashmap_with_clock(quota, clock.clone())),
            clock,
            max_keys,
            checks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        }
    }

    /// Takes one cell for `key`, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        let over = {
            let limiter = self.current.read().unwrap_or_else(|e| e.into_inner());
            match limiter.check_key(key) {
                Ok(()) => Ok(n % LEN_CHECK_EVERY == LEN_CHECK_EVERY - 1 && limiter.len() > self.max_keys),
                Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
            }
        };
        match over {
            Ok(true) => {
                self.reset();
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(wait) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(RateLimited { retry_after: wait })
            }
        }
    }

    /// Drops the keys that are as good as new; starts afresh if more than
    /// `max_keys` are still live.
    pub fn housekeeping(&self) {
        let over = {
            let limiter = self.current.read().unwrap_or_else(|e| e.into_inner());
            limiter.retain_recent();
            limiter.shrink_to_fit();
            limiter.len() > self.max_keys
        };
        if over {
            self.reset();
        }
    }

    fn reset(&self) {
        let fresh = RateLimiter::dashmap_with_clock(self.quota, self.clock.clone());
        let old = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *current, fresh)
        };
        self.resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(max_keys = self.max_keys, "rate limiter held too many keys; started afresh");
        // Freed outside the lock: dropping a large map takes a while.
        drop(old);
    }

    /// Keys held now (approximate while requests run).
    pub fn len(&self) -> usize {
        self.current.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }
}

/// One limit for the whole instance.
pub struct GlobalLimiter {
    limiter: Direct,
    clock: DefaultClock,
    refused: AtomicU64,
}

impl GlobalLimiter {
    pub fn new(rate: Rate) -> Self {
        let clock = DefaultClock::default();
        Self { limiter: RateLimiter::direct_with_clock(quota(rate), clock.clone()), clock, refused: AtomicU64::new(0) }
    }

    pub fn check(&self) -> Result<(), RateLimited> {
        self.limiter.check().map_err(|not_until| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            RateLimited { retry_after: not_until.wait_time_from(self.clock.now()) }
        })
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The limiters of one instance; a limit that is switched off is `None`.
pub struct Limiters {
    pub users: Option<KeyedLimiter<UserId>>,
    pub ips: Option<KeyedLimiter<IpAddr>>,
    pub claims: Option<GlobalLimiter>,
}

impl Limiters {
    pub fn new(s: &ProtectSettings) -> Self {
        Self {
            users: s.user_rate.map(|r| KeyedLimiter::new(r, s.rate_max_keys)),
            ips: s.ip_rate.map(|r| KeyedLimiter::new(r, s.rate_max_keys)),
            claims: s.claim_rate.map(GlobalLimiter::new),
        }
    }

    /// No limit at all (tests of other things, benchmarks of the bare path).
    pub fn off() -> Self {
        Self { users: None, ips: None, claims: None }
    }

    pub fn check_user(&self, user: &UserId) -> Result<(), RateLimited> {
        self.users.as_ref().map_or(Ok(()), |l| l.check(user))
    }

    pub fn check_ip(&self, ip: &IpAddr) -> Result<(), RateLimited> {
        self.ips.as_ref().map_or(Ok(()), |l| l.check(ip))
    }

    pub fn check_claim(&self) -> Result<(), RateLimited> {
        self.claims.as_ref().map_or(Ok(()), GlobalLimiter::check)
    }

    pub fn housekeeping(&self) {
        if let Some(l) = &self.users {
            l.housekeeping();
        }
        if let Some(l) = &self.ips {
            l.housekeeping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let l = KeyedLimiter::new(Rate { per_sec: 1, burst: 3 }, 1000);
        for _ in 0..3 {
            assert!(l.check(&"a").is_ok());
        }
        let refused = l.check(&"a").unwrap_err();
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1));
        assert_eq!(refused.retry_after_secs(), 1);
        // Other keys are not affected.
        assert!(l.check(&"b").is_ok());
        assert_eq!(l.refused(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let s = |ms| RateLimited { retry_after: Duration::from_millis(ms) }.retry_after_secs();
        assert_eq!(s(0), 1);
        assert_eq!(s(1), 1);
        assert_eq!(s(1000), 1);
        assert_eq!(s(1001), 2);
        assert_eq!(s(2500), 3);
    }

    #[test]
    fn memory_stays_bounded_with_a_million_distinct_keys() {
        let max = 10_000;
        let l = KeyedLimiter::new(Rate { per_sec: 1000, burst: 1 }, max);
        for k in 0..1_000_000u64 {
            assert!(l.check(&k).is_ok(), "every key is new");
            if k % 997 == 0 {
                assert!(l.len() <= max + LEN_CHECK_EVERY as usize, "bounded at key {k}: {}", l.len());
            }
        }
        assert!(l.resets() > 0);
    }

    #[test]
    fn housekeeping_evicts_idle_keys_only() {
        let l = KeyedLimiter::new(Rate { per_sec: 1000, burst: 1 }, 1000);
        for k in 0..100u32 {
            l.check(&k).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let hot = 7u32;
        l.check(&hot).unwrap_or(());
        l.housekeeping();
        assert!(l.len() <= 1, "idle keys are gone: {}", l.len());
        assert_eq!(l.resets(), 0, "eviction is not a reset");
    }

    #[test]
    fn global_limit() {
        let g = GlobalLimiter::new(Rate { per_sec: 1, burst: 2 });
        assert!(g.check().is_ok());
        assert!(g.check().is_ok());
        assert!(g.check().is_err());
        assert_eq!(g.refused(), 1);
        let off = Limiters::off();
        for _ in 0..1000 {
            off.check_claim().unwrap();
        }
    }
}
