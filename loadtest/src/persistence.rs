//! Persistence lag: the stats endpoint polled during the run and after it.
//!
//! `claimed` counts grants in Redis, `persisted` rows in MySQL; the pipeline
//! between them (outbox, relay, RabbitMQ, persist worker) makes `persisted`
//! trail `claimed`. The poller samples both every `every` while the load
//! runs, then every 100 ms after it until they are equal or `timeout`
//! passed. Samples are bounded ([`MAX_SAMPLES`]); a failed poll is skipped
//! (the last error is kept for the report).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::api::{self, Stats};
use crate::client::Http;

/// Enough for an hour at 2 polls a second.
const MAX_SAMPLES: usize = 8_000;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StatsSample {
    /// Seconds since the load started.
    pub t_s: f64,
    pub claimed: u64,
    pub persisted: u64,
    pub remaining: u64,
}

pub struct Polled {
    pub samples: Vec<StatsSample>,
    /// Seconds after the load ended until `persisted >= claimed`.
    pub converged_after_s: Option<f64>,
    /// The last stats read.
    pub last: Option<Stats>,
    pub last_error: Option<String>,
}

pub struct PollTarget {
    pub http: Http,
    pub base: String,
    pub admin_token: String,
    pub campaign: String,
}

/// Polls until the load is over (`done` turns true) and the pipeline caught
/// up, or `timeout` after the load.
pub async fn poll(
    t: PollTarget,
    start: Instant,
    every: Duration,
    timeout: Duration,
    mut done: watch::Receiver<bool>,
) -> Polled {
    let mut out = Polled { samples: Vec::new(), converged_after_s: None, last: None, last_error: None };
    let mut done_at: Option<Instant> = None;
    loop {
        match api::fetch_stats(&t.http, &t.base, &t.admin_token, &t.campaign).await {
            Ok(s) => {
                if out.samples.len() < MAX_SAMPLES {
                    out.samples.push(StatsSample {
                        t_s: start.elapsed().as_secs_f64(),
                        claimed: s.claimed,
                        persisted: s.persisted,
                        remaining: s.remaining,
                    });
                }
                let caught_up = s.persisted >= s.claimed;
                out.last = Some(s);
                if let Some(at) = done_at
                    && caught_up
                {
                    out.converged_after_s = Some(at.elapsed().as_secs_f64());
                    return out;
                }
            }
            Err(e) => out.last_error = Some(format!("{e:#}")),
        }
        if done_at.is_none() && *done.borrow() {
            // Read once more now that no request is in flight.
            done_at = Some(Instant::now());
            continue;
        }
        if let Some(at) = done_at {
            if at.elapsed() >= timeout {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            // On a fixed grid from the start (not `every` after the last
            // answer): the per-second series reads one poll per second.
            let next = start + every.mul_f64((start.elapsed().as_secs_f64() / every.as_secs_f64()).floor() + 1.0);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = done.changed() => {}
            }
        }
    }
}

/// Persistence lag at each sample: `[t_s, backlog rows, lag seconds]`. The
/// lag is how long the oldest claim not yet persisted has waited: claim
/// number `persisted + 1` was made when `claimed` passed `persisted`, a time
/// interpolated linearly between the two polls around it (0 when nothing
/// waits). Its resolution is bounded by the poll interval only where the
/// claim rate changes between polls.
pub fn lag_series(samples: &[StatsSample]) -> Vec<[f64; 3]> {
    let mut i = 0usize;
    samples
        .iter()
        .map(|s| {
            let backlog = s.claimed.saturating_sub(s.persisted);
            if backlog == 0 {
                return [s.t_s, 0.0, 0.0];
            }
            // The first sample whose `claimed` exceeds this `persisted`;
            // `persisted` only grows, so the search goes on from the last one.
            while i < samples.len() && samples[i].claimed <= s.persisted {
                i += 1;
            }
            let made = match (i.checked_sub(1).map(|k| &samples[k]), samples.get(i)) {
                (Some(a), Some(b)) if b.claimed > a.claimed => {
                    let share = (s.persisted.saturating_sub(a.claimed)) as f64 / (b.claimed - a.claimed) as f64;
                    a.t_s + share * (b.t_s - a.t_s)
                }
                (_, Some(b)) => b.t_s,
                (_, None) => s.t_s,
            };
            [s.t_s, backlog as f64, (s.t_s - made).max(0.0)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: f64, claimed: u64, persisted: u64) -> StatsSample {
        StatsSample { t_s, claimed, persisted, remaining: 0 }
    }

    #[test]
    fn lag_is_the_wait_of_the_oldest_unpersisted_claim() {
        let samples = [s(0.0, 0, 0), s(1.0, 100, 0), s(2.0, 200, 50), s(3.0, 200, 150), s(4.0, 200, 200)];
        let lag = lag_series(&samples);
        assert_eq!(lag[0], [0.0, 0.0, 0.0]);
        // Claim 1 was made just after t=0 (claims 1..=100 between 0 and 1).
        assert_eq!(lag[1], [1.0, 100.0, 1.0]);
        // Claim 51 was made at t=0.5.
        assert_eq!(lag[2], [2.0, 150.0, 1.5]);
        // Claim 151 was made at t=1.5.
        assert_eq!(lag[3], [3.0, 50.0, 1.5]);
        assert_eq!(lag[4], [4.0, 0.0, 0.0]);
    }

    #[test]
    fn steady_flow_lag_is_backlog_over_rate() {
        // 1,000 claims/s, persisted trailing by 200 rows: 0.2 s.
        let samples: Vec<_> = (0..10).map(|k| s(k as f64 * 0.5, 500 * k, (500 * k).saturating_sub(200))).collect();
        let lag = lag_series(&samples);
        assert!(lag[5..].iter().all(|l| (l[2] - 0.2).abs() < 1e-9), "{lag:?}");
    }

    #[test]
    fn lag_of_nothing_is_nothing() {
        assert!(lag_series(&[]).is_empty());
    }
}
