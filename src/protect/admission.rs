//! Load shedding: at most `max_in_flight` requests wait on the backends at
//! once. One more is refused at once (503 `unavailable`, `Retry-After`)
//! rather than queued: a queue without bound turns a burst into timeouts
//! for everyone and keeps memory growing, while a quick 503 tells the app
//! to come back shortly.
//!
//! A [`Permit`] is held for the backend part of a request only; the
//! in-memory fast paths (sold out, not started, ended) never take one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests in flight; shed")]
pub struct Shed;

pub struct Admission {
    slots: Arc<Semaphore>,
    max: usize,
    /// Requests refused because every slot was taken.
    shed: AtomicU64,
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    pub fn new(max_in_flight: usize) -> Self {
        let max = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self { slots: Arc::new(Semaphore::new(max)), max, shed: AtomicU64::new(0) }
    }

    /// A slot now, or [`Shed`]; never waits.
    pub fn enter(&self) -> Result<Permit, Shed> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(Permit(p)),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(Shed)
            }
        }
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_over_the_bound_and_frees_on_drop() {
        let a = Admission::new(2);
        let p1 = a.enter().unwrap();
        let _p2 = a.enter().unwrap();
        assert_eq!(a.in_flight(), 2);
        assert_eq!(a.enter().unwrap_err(), Shed);
        assert_eq!(a.shed(), 1);
        drop(p1);
        assert_eq!(a.in_flight(), 1);
        assert!(a.enter().is_ok());
    }
}
