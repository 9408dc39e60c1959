//! Structured logs through `tracing`. `RUST_LOG` filters (default `info`);
//! `FLASHGRAB_LOG_FORMAT=json` switches to one JSON object per line for log
//! shippers. [`LogEvery`] throttles a line that repeats (a node down, a
//! queue refusing) to one a second with the count of those skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
