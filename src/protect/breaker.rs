//! A circuit breaker in front of the Redis Cluster.
//!
//! Closed: calls go through; `threshold` consecutive outage errors (I/O,
//! timeouts, cluster down) open it. Open: every call fails at once for
//! `open_for`, so a dead cluster costs a claim microseconds instead of a
//! full timeout, and the cluster is not hammered while it comes back.
//! Half-open: after `open_for` exactly one call (the probe) goes through;
//! its success closes the breaker, its failure (or its being dropped
//! unfinished) opens it for another `open_for`. So it closes by itself once
//! Redis answers again, with no operator and no background task.
//!
//! Lock-free: three atomics, read on every Redis call.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The state as exported to metrics: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open")]
pub struct Open;

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    /// Reference point of `open_until_ms`.
    epoch: Instant,
    /// Consecutive outage errors seen while closed.
    failures: AtomicU32,
    /// 0 while closed; else ms since `epoch` until which calls fail fast.
    open_until_ms: AtomicU64,
    /// A half-open probe is in flight.
    probing: AtomicBool,
    /// Times the breaker opened from closed.
    opened: AtomicU64,
    /// Calls refused while open.
    rejected: AtomicU64,
}

/// Permission for one call; report how it went with [`Ticket::success`] or
/// [`Ticket::failure`]. A probe ticket dropped without a report counts as a
/// failure (the call was cancelled: nothing says Redis is back).
#[derive(Debug)]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "open until" is never 0, the closed marker.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// May a call go to Redis now?
    pub fn admit(&self) -> Result<Ticket<'_>, Open> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Ticket { breaker: self, probe: false, reported: false });
        }
        if self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel) {
            return Ok(Ticket { breaker: self, probe: true, reported: false });
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Open)
    }

    fn open(&self) {
        let until = self.now_ms() + self.open_for.as_millis() as u64;
        self.open_until_ms.store(until, Ordering::Release);
    }

    fn succeeded(&self, probe: bool) {
        self.failures.store(0, Ordering::Relaxed);
        if probe {
            self.open_until_ms.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::info!("redis answers again: circuit breaker closed");
        }
    }

    fn failed(&self, probe: bool) {
        if probe {
            self.open();
            self.probing.store(false, Ordering::Release);
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold
            && self.open_until_ms.compare_exchange(0, u64::MAX, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.open();
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(failures = n, open_for = ?self.open_for, "redis unreachable: circuit breaker open");
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.open_until_ms.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if self.probing.load(Ordering::Acquire) || self.now_ms() >= until => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl Ticket<'_> {
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.succeeded(self.probe);
    }

    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.failed(self.probe);
    }

    /// The call ended in an error that says nothing about reachability (a
    /// script error, a bad reply): a probe that got an answer at all proves
    /// Redis is back.
    pub fn answered(self) {
        self.success();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.failed(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Breaker) {
        b.admit().unwrap().failure();
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, Duration::from_secs(60));
        fail(&b);
        fail(&b);
        b.admit().unwrap().success();
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit().unwrap_err(), Open);
        assert_eq!((b.opened(), b.rejected()), (1, 1));
    }

    #[test]
    fn one_probe_after_the_pause_then_closes_or_reopens() {
        let b = Breaker::new(1, Duration::from_millis(30));
        fail(&b);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().expect("the probe goes through");
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        b.admit().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
        assert_eq!(b.opened(), 1, "a failed probe is not a new opening");
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure() {
        let b = Breaker::new(1, Duration::from_millis(20));
        fail(&b);
        std::thread::sleep(Duration::from_millis(30));
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(30));
        assert!(b.admit().is_ok(), "a later probe is allowed");
    }
}
