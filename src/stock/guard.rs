//! Every Redis call of the store goes through [`StockStore::bounded`]: the
//! breaker of the master owning the call's key (see `breaker`),
//! the timeout, and the outcome reported to both the breaker and the
//! connection's trouble tracking (`reconnect`).
//!
//! The slot -> master table of the breakers is the cluster's own
//! `CLUSTER SLOTS`, read at connect and again in the background, never on
//! the call's path: after an outage error or a refusal (a failover may have
//! moved the slots), and every [`REFRESH_EVERY`] otherwise; at most one
//! read at a time and one per [`REFRESH_MIN_GAP`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::breaker::Breakers;
use super::keys::key_slot;
use super::{Result, SlotMap, StockError, StockStore, is_outage};

/// The table is read again at least this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// And at most this often, however many errors ask for it.
pub const REFRESH_MIN_GAP: Duration = Duration::from_secs(1);

/// The breakers of one store (all its clones) and the state of their
/// table's refresh.
pub(crate) struct Guard {
    pub(crate) breakers: Breakers,
    /// Reference point of `last_refresh_ms`.
    epoch: Instant,
    /// When the last refresh started, ms since `epoch` (0: never).
    last_refresh_ms: AtomicU64,
    /// A refresh is running.
    refreshing: AtomicBool,
}

impl Guard {
    pub(crate) fn new(breakers: Breakers) -> Self {
        Self { breakers, epoch: Instant::now(), last_refresh_ms: AtomicU64::new(0), refreshing: AtomicBool::new(false) }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a refresh is due (`urgent`: an error asked for it). Claims
    /// the refresh when it is.
    fn claim_refresh(&self, urgent: bool) -> bool {
        let now = self.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        let gap = if urgent { REFRESH_MIN_GAP } else { REFRESH_EVERY };
        if last != 0 && now.saturating_sub(last) < gap.as_millis() as u64 {
            return false;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.last_refresh_ms.store(now, Ordering::Relaxed);
        true
    }
}

impl StockStore {
    /// Every call of the store goes through here. `key`: a key of the call
    /// (any: they share one slot), whose master's breaker guards it; `None`
    /// for calls without a key, which no breaker guards. Refused at once
    /// while that breaker is open, bounded by the timeout, and its outcome
    /// reported to the breaker.
    pub(crate) async fn bounded<T>(
        &self,
        key: Option<&str>,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let ticket = match key {
            Some(k) => match self.guard.breakers.for_slot(key_slot(k.as_bytes())).admit() {
                Ok(t) => Some(t),
                Err(_) => {
                    self.conn.trouble();
                    self.refresh_breaker_table(true);
                    return Err(StockError::BreakerOpen);
                }
            },
            None => None,
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => {
                if let Some(t) = ticket {
                    let breaker = t.breaker().clone();
                    if t.success() {
                        self.guard.breakers.recovered(&breaker);
                    }
                }
                self.conn.success();
                self.refresh_breaker_table(false);
                Ok(v)
            }
            Ok(Err(e)) => {
                if is_outage(&e) {
                    if let Some(t) = ticket {
                        t.failure();
                    }
                    self.conn.trouble();
                    self.refresh_breaker_table(true);
                } else if let Some(t) = ticket {
                    let breaker = t.breaker().clone();
                    if t.answered() {
                        self.guard.breakers.recovered(&breaker);
                    }
                }
                Err(e.into())
            }
            Err(_) => {
                if let Some(t) = ticket {
                    t.failure();
                }
                self.conn.trouble();
                self.refresh_breaker_table(true);
                Err(StockError::Timeout(self.timeout))
            }
        }
    }

    /// Reads the slot map in the background and regroups the breakers by
    /// it, when due (see the module note).
    fn refresh_breaker_table(&self, urgent: bool) {
        if !self.guard.claim_refresh(urgent) {
            return;
        }
        let (guard, conn, timeout) = (self.guard.clone(), self.conn.clone(), self.timeout);
        tokio::spawn(async move {
            let mut c = conn.get();
            let read = tokio::time::timeout(timeout, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c)).await;
            match read.map(|r| r.map(|v: redis::Value| SlotMap::parse(&v))) {
                Ok(Ok(Ok(map))) => guard.breakers.update(&map),
                Ok(Ok(Err(e))) => tracing::debug!(error = %e, "cannot parse the slot map for the breakers"),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the slot map for the breakers"),
                Err(_) => tracing::debug!("reading the slot map for the breakers timed out"),
            }
            guard.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads the slot map now (at connect): the breakers are per master
    /// from the first call on. A failure leaves one breaker for all slots
    /// until a background refresh succeeds.
    pub(crate) async fn load_breaker_table(&self) {
        match self.slot_map().await {
            Ok(map) => self.guard.breakers.update(&map),
            Err(e) => tracing::warn!(error = %e, "cannot read the slot map: one breaker for every master until it can"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_are_spaced() {
        let g = Guard::new(Breakers::new(1, Duration::from_secs(1)));
        assert!(g.claim_refresh(false), "the first one is due");
        assert!(!g.claim_refresh(true), "one at a time");
        g.refreshing.store(false, Ordering::Release);
        assert!(!g.claim_refresh(true), "not twice within the minimum gap");
        assert!(!g.claim_refresh(false));
    }
}
