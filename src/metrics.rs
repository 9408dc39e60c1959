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
