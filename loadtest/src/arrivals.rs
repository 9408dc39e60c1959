//! Arrival profiles for the open loop: `--arrivals burst:1M@2s` (the real
//! drop: a million taps in the first two seconds), ramps and stages.
//!
//! A profile is a list of stages run one after the other, separated by
//! commas:
//!
//! - `burst:N@T` (or `N@T`): N arrivals spread evenly over T;
//! - `ramp:A-B@T`: the rate goes linearly from A to B per second over T;
//! - `rate:R@T`: R per second for T.
//!
//! Counts and rates take `k` and `M` suffixes; T is in `s` or `ms`. Arrival
//! `i` is due when the profile's cumulative count reaches `i` (arrival 0 at
//! the start): the engine serves it at that time whatever the answers do
//! (open loop), so a server that falls behind is charged for the queueing.

use anyhow::{Context, bail};

/// One stage: the rate goes linearly from `from` to `to` per second over `secs`.
#[derive(Debug, Clone, PartialEq)]
struct Stage {
    from: f64,
    to: f64,
    secs: f64,
}

impl Stage {
    fn count(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.secs
    }

    /// Seconds into the stage when its cumulative count reaches `n` (< count).
    fn time_of(&self, n: f64) -> f64 {
        let slope = (self.to - self.from) / self.secs;
        if slope.abs() < 1e-12 {
            return n / self.from;
        }
        // from t + slope t^2 / 2 = n
        let disc = (self.from * self.from + 2.0 * slope * n).max(0.0);
        ((disc.sqrt() - self.from) / slope).clamp(0.0, self.secs)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    stages: Vec<Stage>,
}

fn amount(s: &str) -> anyhow::Result<f64> {
    let (num, mult) = match s.strip_suffix('M') {
        Some(n) => (n, 1e6),
        None => match s.strip_suffix('k') {
            Some(n) => (n, 1e3),
            None => (s, 1.0),
        },
    };
    let v: f64 = num.trim().parse().with_context(|| format!("{s:?} is not a number (k and M suffixes allowed)"))?;
    if !(v.is_finite() && v >= 0.0) {
        bail!("{s:?} must be a non-negative number");
    }
    Ok(v * mult)
}

fn seconds(s: &str) -> anyhow::Result<f64> {
    let v = match s.strip_suffix("ms") {
        Some(n) => amount(n)? / 1000.0,
        None => amount(s.strip_suffix('s').unwrap_or(s))?,
    };
    if !(v > 0.0 && v <= 3600.0) {
        bail!("{s:?}: a stage lasts more than 0 and at most 3600 s");
    }
    Ok(v)
}

impl Profile {
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut stages = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let stage = (|| {
                let (what, secs) = part.rsplit_once('@').context("a stage is KIND:N@DURATION, e.g. burst:1M@2s")?;
                let secs = seconds(secs)?;
                let (kind, n) = what.split_once(':').unwrap_or(("burst", what));
                Ok::<_, anyhow::Error>(match kind {
                    "burst" => {
                        let r = amount(n)? / secs;
                        Stage { from: r, to: r, secs }
                    }
                    "rate" => {
                        let r = amount(n)?;
                        Stage { from: r, to: r, secs }
                    }
                    "ramp" => {
                        let (a, b) =
                            n.split_once('-').context("a ramp is ramp:FROM-TO@DURATION, e.g. ramp:0-50k@10s")?;
                        Stage { from: amount(a)?, to: amount(b)?, secs }
                    }
                    k => bail!("unknown stage kind {k:?} (burst, ramp, rate)"),
                })
            })()
            .with_context(|| format!("--arrivals stage {part:?}"))?;
            stages.push(stage);
        }
        if stages.is_empty() {
            bail!("--arrivals is empty; e.g. --arrivals burst:1M@2s or ramp:0-20k@5s,rate:20k@10s");
        }
        let p = Self { stages };
        if p.total() < 1.0 {
            bail!("--arrivals makes no arrival");
        }
        Ok(p)
    }

    /// Arrivals in the whole profile (rounded down).
    pub fn total(&self) -> f64 {
        self.stages.iter().map(Stage::count).sum::<f64>().floor()
    }

    /// Length of the profile, seconds.
    pub fn secs(&self) -> f64 {
        self.stages.iter().map(|s| s.secs).sum()
    }

    /// Seconds from the start when arrival `i` is due; `None` past the end.
    pub fn due(&self, i: u64) -> Option<f64> {
        let mut n = i as f64;
        let mut t0 = 0.0;
        for s in &self.stages {
            let c = s.count();
            if n < c {
                return Some(t0 + s.time_of(n));
            }
            n -= c;
            t0 += s.secs;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_spreads_evenly() {
        let p = Profile::parse("burst:1M@2s").unwrap();
        assert_eq!((p.total(), p.secs()), (1e6, 2.0));
        assert_eq!(p.due(0), Some(0.0));
        assert!((p.due(500_000).unwrap() - 1.0).abs() < 1e-9);
        assert!(p.due(999_999).unwrap() < 2.0);
        assert_eq!(p.due(1_000_000), None);
        assert_eq!(Profile::parse("10k@500ms").unwrap(), Profile::parse("burst:10k@0.5s").unwrap());
    }

    #[test]
    fn ramps_and_stages_follow_the_rate() {
        // 0 -> 100/s over 10 s: 500 arrivals; the 125th (a quarter) at 5 s.
        let p = Profile::parse("ramp:0-100@10s, rate:50@2s").unwrap();
        assert_eq!(p.total(), 600.0);
        assert!((p.due(125).unwrap() - 5.0).abs() < 1e-9, "{:?}", p.due(125));
        assert!((p.due(500).unwrap() - 10.0).abs() < 1e-9);
        assert!((p.due(550).unwrap() - 11.0).abs() < 1e-9);
        // Due times never go backwards.
        let ts: Vec<f64> = (0..600).map(|i| p.due(i).unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        // A falling ramp too.
        let down = Profile::parse("ramp:100-0@10s").unwrap();
        assert!((down.due(375).unwrap() - 5.0).abs() < 1e-9, "{:?}", down.due(375));
    }

    #[test]
    fn refuses_bad_profiles() {
        for bad in ["", "burst:1M", "burst:x@2s", "burst:1M@0s", "ramp:5@2s", "wave:1@2s", "burst:0@1s", "1M@2h"] {
            assert!(Profile::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
