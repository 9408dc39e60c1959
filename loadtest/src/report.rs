//! Latency histograms per outcome, the summary table and the JSON report.
//!
//! Each worker records into its own [`Hists`] (no locking on the hot path);
//! they are merged once at the end. Values are microseconds, 1 us to 60 s at
//! 3 significant digits; a value past 60 s is clamped (the request timeout is
//! far below that).

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::api::Stats;
use crate::invariants::Check;
use crate::outcome::Outcome;

const MAX_MICROS: u64 = 60_000_000;

/// One histogram per outcome, created on first use.
#[derive(Default)]
pub struct Hists {
    by_outcome: [Option<Histogram<u64>>; Outcome::COUNT],
}

impl Hists {
    pub fn record(&mut self, outcome: Outcome, micros: u64) {
        self.by_outcome[outcome.index()]
            .get_or_insert_with(|| Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid"))
            .saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: Hists) {
        for (mine, theirs) in self.by_outcome.iter_mut().zip(other.by_outcome) {
            match (mine.as_mut(), theirs) {
                (Some(m), Some(t)) => m.add(&t).expect("same bounds"),
                (None, Some(t)) => *mine = Some(t),
                (_, None) => {}
            }
        }
    }

    pub fn get(&self, outcome: Outcome) -> Option<&Histogram<u64>> {
        self.by_outcome[outcome.index()].as_ref()
    }
}

/// Latency quantiles of one outcome, in milliseconds.
#[derive(Debug, Serialize)]
pub struct OutcomeSummary {
    pub outcome: &'static str,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl OutcomeSummary {
    fn of(outcome: Outcome, h: &Histogram<u64>) -> Self {
        Self {
            outcome: outcome.key(),
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Everything a run produced, as written to `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub campaign_id: String,
    pub urls: Vec<String>,
    pub users: u32,
    pub stock: u64,
    pub concurrency: usize,
    /// `None`: closed loop (each worker sends as soon as its answer came).
    pub rate_per_s: Option<f64>,
    /// What latency is measured from: the send (closed loop) or the
    /// scheduled send time (open loop, so queueing counts).
    pub latency_from: &'static str,
    pub requests: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub granted_per_s: f64,
    pub outcomes: Vec<OutcomeSummary>,
    pub all: Option<OutcomeSummary>,
    pub stats: Option<Stats>,
    pub invariants: Vec<Check>,
    pub held: bool,
}

/// Quantiles of every outcome seen, plus all outcomes together.
pub fn summarise(hists: &Hists) -> (Vec<OutcomeSummary>, Option<OutcomeSummary>) {
    let mut all: Option<Histogram<u64>> = None;
    let mut rows = Vec::new();
    for o in Outcome::ALL {
        if let Some(h) = hists.get(o) {
            rows.push(OutcomeSummary::of(o, h));
            match all.as_mut() {
                Some(a) => a.add(h).expect("same bounds"),
                None => all = Some(h.clone()),
            }
        }
    }
    let all = all.map(|h| OutcomeSummary { outcome: "all", ..OutcomeSummary::of(Outcome::Granted, &h) });
    (rows, all)
}

pub fn print_summary(r: &Report) {
    println!();
    println!(
        "drop {}: {} requests in {:.2} s = {:.0} req/s ({:.0} grants/s), {} workers, {}",
        r.campaign_id,
        r.requests,
        r.elapsed_s,
        r.throughput_per_s,
        r.granted_per_s,
        r.concurrency,
        match r.rate_per_s {
            Some(rate) => format!("open loop at {rate:.0} req/s"),
            None => "closed loop".to_owned(),
        }
    );
    println!("latency from {}", r.latency_from);
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "outcome", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let label = |key: &str| Outcome::ALL.iter().find(|o| o.key() == key).map_or("all", |o| o.label());
    for row in r.outcomes.iter().chain(r.all.iter()) {
        println!(
            "{:<20} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            label(row.outcome),
            row.count,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.p999_ms,
            row.max_ms
        );
    }
    if let Some(s) = &r.stats {
        println!("store: total_stock {} remaining {} claimed {}", s.total_stock, s.remaining, s.claimed);
    }
    println!("invariants:");
    for c in &r.invariants {
        println!("  {:<4} {:<28} {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
    }
}

pub fn write_json(path: &Path, r: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_summarises() {
        let mut a = Hists::default();
        let mut b = Hists::default();
        for v in 1..=100 {
            a.record(Outcome::Granted, v * 1000);
        }
        b.record(Outcome::SoldOut, 5000);
        b.record(Outcome::Granted, 1);
        a.merge(b);
        let (rows, all) = summarise(&a);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].count, 101);
        assert_eq!(all.unwrap().count, 102);
        assert!((rows[1].p50_ms - 5.0).abs() < 0.01);
    }
}
