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
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = done.changed() => {}
            }
        }
    }
}

/// Persistence lag at each sample: `[t_s, backlog rows, lag seconds]`, where
/// the lag is how long the oldest claim not yet persisted has waited, as far
/// as the samples tell: the time since the first sample whose `claimed`
/// exceeded the current `persisted` (0 when nothing is waiting).
pub fn lag_series(samples: &[StatsSample]) -> Vec<[f64; 3]> {
    let mut first = 0usize;
    samples
        .iter()
        .map(|s| {
            let backlog = s.claimed.saturating_sub(s.persisted);
            if backlog == 0 {
                return [s.t_s, 0.0, 0.0];
            }
            // `persisted` only grows, so the sample found last time is a
            // lower bound for this one.
            while first < samples.len() && samples[first].claimed <= s.persisted {
                first += 1;
            }
            let since = samples.get(first).map_or(s.t_s, |f| f.t_s.min(s.t_s));
            [s.t_s, backlog as f64, s.t_s - since]
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
        // Claims 1..=100 appeared by t=1 and none is persisted.
        assert_eq!(lag[1], [1.0, 100.0, 0.0]);
        // Claim 51 appeared by t=1; it has waited since.
        assert_eq!(lag[2], [2.0, 150.0, 1.0]);
        // Claim 151 appeared by t=2.
        assert_eq!(lag[3], [3.0, 50.0, 1.0]);
        assert_eq!(lag[4], [4.0, 0.0, 0.0]);
    }

    #[test]
    fn lag_of_nothing_is_nothing() {
        assert!(lag_series(&[]).is_empty());
    }
}
