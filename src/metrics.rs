//! Counters of the claim pipeline (outbox -> RabbitMQ -> MySQL), shared by
//! the relay, the persist worker and whoever reports them. Plain atomics:
//! the Prometheus endpoint (a later issue) reads the same values.

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

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
    /// Claim event messages (`<prefix>.events`) nacked, unconfirmed in
    /// time, or not sent; events are best effort and never retried.
    pub events_failed: AtomicU64,
    /// Users' holdings index writes the relay made (one per user per pass;
    /// `stock::holdings`).
    pub indexed: AtomicU64,
    /// Holdings index writes that failed: those grants are shipped anyway
    /// and listed once persisted (`outbox::relay`).
    pub index_failed: AtomicU64,
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

/// Exponential backoff for reconnect loops: 100 ms doubling to 5 s, each
/// delay drawn at random in its upper half ("equal jitter"). Without the
/// jitter every instance retries in lockstep after a broker or Redis
/// restart, and they all hit it in the same millisecond again.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    /// At most one log line per second for the failures of this loop.
    log: LogEvery,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::MIN, log: LogEvery::default() }
    }
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    /// The delay to wait now (in the upper half of the current step);
    /// doubles the next step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        jittered(step)
    }

    /// Back to the first step (after a success). The log throttle keeps
    /// its memory: a loop that flaps is still logged once a second.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// A session that lasted this long before failing was a working one:
    /// the next retry starts from the first step again.
    pub const STABLE: Duration = Duration::from_secs(10);

    /// After a session ended in an error: back to the first step only if it
    /// had lasted [`Backoff::STABLE`]. Connecting is not a success: a
    /// broker that accepts the connection and refuses the first publish
    /// must not be retried every 100 ms forever.
    pub fn after_session(&mut self, lasted: Duration) {
        if lasted >= Self::STABLE {
            self.reset();
        }
    }
}

/// A delay drawn uniformly in `[step / 2, step]`.
pub fn jittered(step: Duration) -> Duration {
    use rand::Rng;
    let half = step / 2;
    half + rand::rng().random_range(Duration::ZERO..=step - half)
}

/// Log throttling for one call site or loop: the first event is logged,
/// then at most one per [`LogEvery::EVERY`]; the ones skipped in between
/// are counted and reported with the next line. A repeated cause (a node
/// down, a queue refusing) is then one line a second, not one per retry or
/// per request.
#[derive(Debug, Default)]
pub struct LogEvery {
    /// Milliseconds since the Unix epoch of the last line logged (0: none).
    last_ms: AtomicU64,
    /// Events skipped since.
    skipped: AtomicU64,
}

impl Clone for LogEvery {
    fn clone(&self) -> Self {
        Self {
            last_ms: AtomicU64::new(self.last_ms.load(Ordering::Relaxed)),
            skipped: AtomicU64::new(self.skipped.load(Ordering::Relaxed)),
        }
    }
}

impl LogEvery {
    pub const EVERY: Duration = Duration::from_secs(1);

    pub const fn new() -> Self {
        Self { last_ms: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// Should this event be logged? `Some(skipped)`: yes, and that many
    /// were skipped since the last line; `None`: no (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .max(1);
        self.allow_at(now)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        if due && self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// What a reconnect loop does after a failed session: count the error, log
/// it (at most once a second, see [`LogEvery`]), and wait the next backoff
/// delay. Returns false when `shutdown` came during the wait (stop looping).
pub async fn pause_after_failure(
    what: &str,
    error: &(dyn std::fmt::Display + Sync),
    backoff: &mut Backoff,
    errors: &AtomicU64,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    PipelineMetrics::add(errors, 1);
    let delay = backoff.next_delay();
    if let Some(skipped) = backoff.log.allow() {
        tracing::warn!(error = %error, retry_in = ?delay, skipped, "{what} interrupted");
    }
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_with_jitter_in_the_upper_half() {
        let mut b = Backoff::default();
        let steps = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for step in steps {
            let d = b.next_delay().as_millis() as u64;
            assert!((step / 2..=step).contains(&d), "{d} ms for the {step} ms step");
        }
        b.reset();
        assert!(b.next_delay() <= Backoff::MIN);
    }

    #[test]
    fn jitter_spreads_the_retries_of_many_instances() {
        let delays: std::collections::HashSet<u128> =
            (0..100).map(|_| Backoff::default().next_delay().as_micros()).collect();
        assert!(delays.len() > 50, "100 instances retried at only {} distinct times", delays.len());
    }

    #[test]
    fn a_repeated_event_is_logged_once_a_second_with_the_skipped_count() {
        let l = LogEvery::new();
        assert_eq!(l.allow_at(10_000), Some(0));
        assert_eq!(l.allow_at(10_001), None);
        assert_eq!(l.allow_at(10_999), None);
        assert_eq!(l.allow_at(11_000), Some(2));
        assert_eq!(l.allow_at(11_500), None);
        assert_eq!(l.allow_at(13_000), Some(1));
    }
}

/// How a claim ended, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimLabel {
    Granted,
    Replayed,
    AlreadyClaimed,
    LimitReached,
    NotStarted,
    Ended,
    SoldOut,
    NotFound,
    RateLimited,
    Unavailable,
    Error,
}

impl ClaimLabel {
    pub const ALL: [ClaimLabel; 11] = [
        ClaimLabel::Granted,
        ClaimLabel::Replayed,
        ClaimLabel::AlreadyClaimed,
        ClaimLabel::LimitReached,
        ClaimLabel::NotStarted,
        ClaimLabel::Ended,
        ClaimLabel::SoldOut,
        ClaimLabel::NotFound,
        ClaimLabel::RateLimited,
        ClaimLabel::Unavailable,
        ClaimLabel::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClaimLabel::Granted => "granted",
            ClaimLabel::Replayed => "replayed",
            ClaimLabel::AlreadyClaimed => "already_claimed",
            ClaimLabel::LimitReached => "limit_reached",
            ClaimLabel::NotStarted => "not_started",
            ClaimLabel::Ended => "ended",
            ClaimLabel::SoldOut => "sold_out",
            ClaimLabel::NotFound => "campaign_not_found",
            ClaimLabel::RateLimited => "rate_limited",
            ClaimLabel::Unavailable => "unavailable",
            ClaimLabel::Error => "error",
        }
    }
}

/// Claims of one campaign on this instance, by outcome: the `campaign`
/// label of `flashgrab_claims_total`. Lives in the campaign's cached terms
/// (carried over when the cache refreshes them), so the claim path counts
/// with one relaxed atomic add on what it already holds: no map lookup,
/// no lock, no allocation per claim. Rendered at scrape time for the live
/// campaigns only (a bounded label set).
#[derive(Debug, Default)]
pub struct ClaimTally {
    by_outcome: [AtomicU64; ClaimLabel::ALL.len()],
}

impl ClaimTally {
    pub fn count(&self, label: ClaimLabel) {
        self.by_outcome[label as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, label: ClaimLabel) -> u64 {
        self.by_outcome[label as usize].load(Ordering::Relaxed)
    }

    /// Claims of every outcome.
    pub fn total(&self) -> u64 {
        self.by_outcome.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// Every tally equals every other: it is a counter beside the terms, not
/// part of them (a campaign read twice is the same campaign).
impl PartialEq for ClaimTally {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ClaimTally {}
