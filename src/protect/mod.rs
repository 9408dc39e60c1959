//! Protecting the backends from the front door.
//!
//! During a drop far more requests arrive than there are coupons. What keeps
//! the instance fast and Redis healthy, cheapest check first:
//!
//! 1. [`limits`]: governor rate limits per client address (before auth),
//!    per user (after the JWT is verified) and, for claims that would reach
//!    Redis, per instance. A refusal is 429 `rate_limited` with
//!    `Retry-After`. Keyed limiters evict idle keys and never hold more than
//!    a configured number of keys.
//! 2. [`admission`]: a bound on requests waiting on the backends at once.
//!    Over it the answer is 503 `unavailable` at once: a queue without bound
//!    only turns overload into timeouts for everyone.
//!
//! Behind these, the store's circuit breakers (`stock::breaker`) fail the
//! calls of an unreachable master fast; they live with the store they
//! guard.
//!
//! Everything here is in memory and per instance; nothing is shared between
//! instances (each protects its own share of the backends).

pub mod admission;
pub mod limits;

pub use admission::{Admission, Permit};
pub use limits::{KeyedLimiter, Limiters, RateLimited};

use crate::config::ProtectSettings;

/// The limits of one instance, shared by the HTTP layer (per address, per
/// user, admission of the non-claim endpoints) and the claim service (the
/// claim rate and admission behind the fast paths).
pub struct Protection {
    pub limits: Limiters,
    pub admission: Admission,
}

impl Protection {
    pub fn new(s: &ProtectSettings) -> Self {
        Self { limits: Limiters::new(s), admission: Admission::new(s.max_in_flight) }
    }

    /// No rate limit and a very large admission bound: what a service built
    /// without settings (benches, tools) gets.
    pub fn unlimited() -> Self {
        Self { limits: Limiters::off(), admission: Admission::new(1 << 20) }
    }

    /// Evicts idle rate-limiter keys every second until `shutdown`.
    pub async fn run_housekeeping(self: std::sync::Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.limits.housekeeping(),
            }
        }
    }
}
