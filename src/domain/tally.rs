//! How a claim ended, and the per-campaign count of it that lives beside
//! the campaign's cached terms: plain atomics, no I/O. Here, not in
//! `metrics`, because `Campaign` holds a tally and `metrics` reads
//! campaigns (the module graph stays acyclic: `scripts/module-deps`).

use std::sync::atomic::{AtomicU64, Ordering};

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
