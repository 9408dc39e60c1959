//! Supervision of the long-running loops (outbox relay, persist worker,
//! event publisher): run a session until it fails, count and log the
//! failure (at most once a second), wait a jittered, growing delay,
//! reconnect; stop when told to. Written once here so the three loops
//! cannot drift apart in how they retry.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::telemetry::LogEvery;

/// A loop made of sessions (one connection each) that [`supervise`] runs.
pub trait Supervised: Sync {
    type Error: std::fmt::Display + Sync;

    /// One session: until a clean stop (`Ok`), `shutdown`, or an error. It
    /// gets the backoff to reset when it makes progress (a session that
    /// connects and fails at once keeps backing off).
    fn session<'a>(
        &'a self,
        shutdown: &'a CancellationToken,
        backoff: &'a mut Backoff,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a;
}

/// Runs `s`'s sessions until one returns `Ok` (a clean stop) or `shutdown`
/// is cancelled; after each failed one, [`pause_after_failure`]. A session
/// that lasted [`Backoff::STABLE`] before failing starts the backoff again
/// from its first step.
pub async fn supervise<S: Supervised>(what: &str, errors: &AtomicU64, shutdown: &CancellationToken, s: &S) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match s.session(shutdown, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                backoff.after_session(started.elapsed());
                if !pause_after_failure(what, &e, &mut backoff, errors, shutdown).await {
                    break;
                }
            }
        }
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
    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    /// Fails `fail` times, then stops cleanly (or cancels `stop` first).
    struct Flaky {
        fail: u32,
        runs: std::sync::atomic::AtomicU32,
        stop: Option<CancellationToken>,
    }

    impl Supervised for Flaky {
        type Error = &'static str;
        async fn session(&self, _: &CancellationToken, _: &mut Backoff) -> Result<(), &'static str> {
            let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(stop) = &self.stop {
                stop.cancel();
            }
            if run <= self.fail { Err("refused") } else { Ok(()) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_session_is_retried_until_it_stops_cleanly() {
        let errors = AtomicU64::new(0);
        let flaky = Flaky { fail: 3, runs: 0.into(), stop: None };
        supervise("test loop", &errors, &CancellationToken::new(), &flaky).await;
        assert_eq!(flaky.runs.into_inner(), 4);
        assert_eq!(errors.into_inner(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_between_sessions() {
        let errors = AtomicU64::new(0);
        let shutdown = CancellationToken::new();
        let flaky = Flaky { fail: 100, runs: 0.into(), stop: Some(shutdown.clone()) };
        supervise("test loop", &errors, &shutdown, &flaky).await;
        assert_eq!(flaky.runs.into_inner(), 1);
        assert_eq!(errors.into_inner(), 1);
    }
}
