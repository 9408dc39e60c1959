//! The figures of one process and their Prometheus exposition.
//!
//! The counters are plain atomics kept where the work is counted (the
//! front end's in `http`, the claim pipeline's in `pipeline`, the limits',
//! breakers' and connections' in their own parts); prometheus-client reads
//! them through collectors registered in a [`Registry`] per instance (no
//! global recorder: every instance, and every test instance in one process,
//! has its own) and writes the Prometheus text format (0.0.4) at scrape
//! time. What is exported:
//!
//! - `flashgrab_http_requests_total{route,status}`: every response, by
//!   route template (`/v1/campaigns/{id}/claim`; `unmatched` for unknown
//!   paths, so junk URLs cannot blow up the label set);
//! - `flashgrab_claims_total{outcome}` and the
//!   `flashgrab_claim_duration_seconds{outcome}` histogram: claims that
//!   reached the claim handler (a per-user 429 is refused before it);
//! - `flashgrab_rate_limited_total{limiter}`, `flashgrab_rate_limiter_keys`,
//!   `flashgrab_shed_total`, `flashgrab_in_flight_requests`, the breakers'
//!   state and counters, the connections;
//! - the claim pipeline: outbox relay and persist worker figures.
//!
//! The reconnect backoff and the log throttle below are not metrics; they
//! are here for the relay, worker and startup loops that count their errors.

pub mod http;
pub mod pipeline;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

pub use http::{ClaimLabel, ClaimTally, HttpMetrics};
pub use pipeline::PipelineMetrics;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry of a serving instance: its front end and its pipeline.
pub fn instance_registry(front: http::FrontCollector, pipeline: Arc<PipelineMetrics>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(front));
    registry.register_collector(Box::new(pipeline::PipelineCollector(pipeline)));
    registry
}

/// The registry of `flashgrab persist` on its own: the pipeline only.
pub fn pipeline_registry(pipeline: Arc<PipelineMetrics>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(pipeline::PipelineCollector(pipeline)));
    registry
}

/// The exposition of `registries`, one after the other (their families
/// must not overlap).
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for r in registries {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
    }
    out
}

/// One unlabelled counter; `name` without `_total` (the encoder adds it).
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One unlabelled gauge.
fn gauge<N: EncodeGaugeValue>(enc: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
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
