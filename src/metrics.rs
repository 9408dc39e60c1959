//! Counters of the claim pipeline (outbox -> RabbitMQ -> MySQL), shared by
//! the relay, the persist worker and whoever reports them. Plain atomics:
//! the Prometheus endpoint (a later issue) reads the same values.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Claim records published to RabbitMQ and confirmed by it.
    pub relayed: AtomicU64,
    /// Messages (batches) confirmed by RabbitMQ.
    pub published_batches: AtomicU64,
    /// Entries taken over from a dead relay (XAUTOCLAIM).
    pub reclaimed: AtomicU64,
    /// `replicated` mode: outbox entries the relay read but held back
    /// because no replica acknowledged them (counted once per pass that
    /// held them; they are shipped once a replica has them).
    pub unreplicated: AtomicU64,
    /// Entries in all outbox streams (not yet confirmed by RabbitMQ), as of
    /// the last reclaim pass (every second).
    pub outbox_len: AtomicU64,
    /// Age of the oldest outbox entry seen in the last relay pass, ms.
    pub outbox_age_ms: AtomicU64,
    /// Rows written (or found already written) by the persist worker.
    pub persisted: AtomicU64,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Grant-to-commit lag of the newest persisted batch: max over its rows, ms.
    pub persist_lag_ms: AtomicU64,
    /// Backend errors seen by the relay and the worker (each retried).
    pub errors: AtomicU64,
}

impl PipelineMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

/// Exponential backoff for reconnect loops: 100 ms doubling to 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: std::time::Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: std::time::Duration::from_millis(100) }
    }
}

impl Backoff {
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(5);

    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What a reconnect loop does after a failed session: count the error, log
/// it, and wait the next backoff delay. Returns false when `shutdown` came
/// during the wait (stop looping).
pub async fn pause_after_failure(
    what: &str,
    error: &(dyn std::fmt::Display + Sync),
    backoff: &mut Backoff,
    errors: &AtomicU64,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    PipelineMetrics::add(errors, 1);
    let delay = backoff.next_delay();
    tracing::warn!(error = %error, retry_in = ?delay, "{what} interrupted");
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
