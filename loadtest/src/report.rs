//! Latency histograms per operation and outcome, the summary table and the
//! JSON report (the HTML report is rendered from the same [`Report`] in
//! `html`).
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
use crate::engine::RunResult;
use crate::invariants::Check;
use crate::outcome::{Op, Outcome};
use crate::persistence::StatsSample;
use crate::series::SecondRow;
use crate::slo;

const MAX_MICROS: u64 = 60_000_000;

/// Quantiles kept for the latency distribution plot.
pub const PLOT_QUANTILES: [f64; 12] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

/// One histogram per operation and outcome, created on first use.
#[derive(Default, Clone)]
pub struct Hists {
    by: [[Option<Histogram<u64>>; Outcome::COUNT]; Op::COUNT],
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid")
}

impl Hists {
    pub fn record(&mut self, op: Op, outcome: Outcome, micros: u64) {
        self.by[op.index()][outcome.index()]
            .get_or_insert_with(new_hist)
            .saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: Hists) {
        for (mine, theirs) in self.by.iter_mut().flatten().zip(other.by.into_iter().flatten()) {
            match (mine.as_mut(), theirs) {
                (Some(m), Some(t)) => m.add(&t).expect("same bounds"),
                (None, Some(t)) => *mine = Some(t),
                (_, None) => {}
            }
        }
    }

    pub fn get(&self, op: Op, outcome: Outcome) -> Option<&Histogram<u64>> {
        self.by[op.index()][outcome.index()].as_ref()
    }
}

/// Latency quantiles of one outcome, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeSummary {
    pub op: &'static str,
    pub outcome: &'static str,
    /// Row label of the table.
    pub label: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// `[quantile, ms]` at [`PLOT_QUANTILES`], for the distribution plot.
    pub percentiles: Vec<[f64; 2]>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl OutcomeSummary {
    fn of(op: Op, outcome: &'static str, label: String, h: &Histogram<u64>) -> Self {
        Self {
            op: op.key(),
            outcome,
            label,
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            percentiles: PLOT_QUANTILES.iter().map(|q| [*q, ms(h.value_at_quantile(*q))]).collect(),
        }
    }
}

/// Everything a run produced, as written to the JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// UTC time the load started.
    pub started_at: String,
    pub campaign_id: String,
    pub urls: Vec<String>,
    pub users: u32,
    pub stock: u64,
    pub concurrency: usize,
    /// `None`: closed loop (each worker sends as soon as its answer came).
    pub rate_per_s: Option<f64>,
    /// The open loop's arrival profile (`--arrivals`, or the default burst).
    pub arrivals_profile: Option<String>,
    /// What latency is measured from: the send (closed loop) or the
    /// scheduled send time when the worker was still busy then (open loop,
    /// so queueing counts), else the send.
    pub latency_from: &'static str,
    /// User taps sent (a double tap is one arrival, two requests).
    pub arrivals: u64,
    /// HTTP requests of every kind.
    pub requests: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub granted_per_s: f64,
    /// Time from the start of the load to the last 201.
    pub last_grant_s: Option<f64>,
    /// Time from the start of the load to the first 410 `sold_out`.
    pub first_sold_out_s: Option<f64>,
    /// Retries and redemptions not sent because the run was over.
    pub abandoned: u64,
    pub outcomes: Vec<OutcomeSummary>,
    /// All claim answers together.
    pub all: Option<OutcomeSummary>,
    /// Per second of the run: arrivals, answers and latency by outcome,
    /// the store (also written as CSV beside the JSON; see `series`).
    pub seconds: Vec<SecondRow>,
    /// The stats endpoint polled during and after the run.
    pub persistence: Vec<StatsSample>,
    /// Seconds after the load ended until `persisted == claimed`.
    pub persisted_after_s: Option<f64>,
    pub stats: Option<Stats>,
    pub invariants: Vec<Check>,
    pub held: bool,
    /// With several `--url`s: the claims each target answered.
    pub targets: Vec<TargetSummary>,
    /// The `--slo` terms, judged (empty without `--slo`).
    pub slo: Vec<slo::Verdict>,
    /// What made the run measure something else than the claim path (most
    /// answers 429 or 503), with the fix.
    pub warnings: Vec<String>,
}

/// The claims one target answered (`--url` given several times).
#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    pub url: String,
    pub claims: u64,
    pub granted: u64,
    pub rate_limited: u64,
    pub unavailable: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One row per target from the per-target histograms of the run.
pub fn target_summaries(urls: &[String], per_target: &[Hists]) -> Vec<TargetSummary> {
    per_target
        .iter()
        .zip(urls)
        .map(|(h, url)| {
            let count = |o: Outcome| h.get(Op::Claim, o).map_or(0, |x| x.len());
            let all = all_claims(h);
            let q = |p: f64| all.as_ref().map_or(0.0, |a| ms(a.value_at_quantile(p)));
            TargetSummary {
                url: url.clone(),
                claims: Outcome::ALL.iter().map(|o| count(*o)).sum(),
                granted: count(Outcome::Granted),
                rate_limited: count(Outcome::RateLimited),
                unavailable: count(Outcome::Unavailable),
                errors: Outcome::ALL.iter().filter(|o| o.error()).map(|o| count(*o)).sum(),
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                max_ms: q(1.0),
            }
        })
        .collect()
}

/// All claim answers in one histogram.
fn all_claims(hists: &Hists) -> Option<Histogram<u64>> {
    let mut all: Option<Histogram<u64>> = None;
    for o in Outcome::ALL {
        if let Some(h) = hists.get(Op::Claim, o) {
            match all.as_mut() {
                Some(a) => a.add(h).expect("same bounds"),
                None => all = Some(h.clone()),
            }
        }
    }
    all
}

/// Loud warnings when most claim answers were 429 or 503: such a run
/// measured the front end's refusals, not the claim path (issue 16: 23,147
/// of 28,588 answers were 429 from the per-address limit on loopback).
pub fn warnings(outcomes: &[OutcomeSummary]) -> Vec<String> {
    let claims: u64 = outcomes.iter().filter(|r| r.op == "claim").map(|r| r.count).sum();
    let of = |key: &str| outcomes.iter().find(|r| r.op == "claim" && r.outcome == key).map_or(0, |r| r.count);
    let mut out = Vec::new();
    if claims == 0 {
        return out;
    }
    let share = |n: u64| n as f64 / claims as f64;
    let limited = of(Outcome::RateLimited.key());
    if share(limited) > 0.5 {
        out.push(format!(
            "{limited} of {claims} claim answers ({:.0}%) were 429 rate_limited: this run measured the rate limits, \
             not the claim path. A load test from one machine is one client address: start the service with \
             FLASHGRAB_IP_RATE=0 (scripts/run does); past that, FLASHGRAB_CLAIM_RATE (per instance) or \
             FLASHGRAB_USER_RATE (per user) is the limit that refused",
            share(limited) * 100.0
        ));
    }
    let unavailable = of(Outcome::Unavailable.key());
    if share(unavailable) > 0.5 {
        out.push(format!(
            "{unavailable} of {claims} claim answers ({:.0}%) were 503 unavailable: the service shed the load \
             (more than FLASHGRAB_MAX_IN_FLIGHT requests waiting, or the Redis breaker open: see its log and \
             /metrics); lower --concurrency, or raise FLASHGRAB_MAX_IN_FLIGHT if the backends keep up",
            share(unavailable) * 100.0
        ));
    }
    out
}

/// What `--slo` judges: the run's histograms and counts and its report.
pub struct Measured<'a> {
    pub result: &'a RunResult,
    pub report: &'a Report,
    all: Option<Histogram<u64>>,
}

impl<'a> Measured<'a> {
    pub fn new(result: &'a RunResult, report: &'a Report) -> Self {
        Self { result, report, all: all_claims(&result.hists) }
    }
}

impl slo::Source for Measured<'_> {
    fn latency_ms(&self, outcome: Option<Outcome>, quantile: f64) -> Option<f64> {
        let h = match outcome {
            Some(o) => self.result.hists.get(Op::Claim, o),
            None => self.all.as_ref(),
        };
        h.filter(|h| !h.is_empty()).map(|h| ms(h.value_at_quantile(quantile)))
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.result.count(Op::Claim, outcome)
    }

    fn named(&self, name: &str) -> Option<f64> {
        let r = self.report;
        let stats = r.stats.as_ref();
        match name {
            "errors" => {
                let sent = self.result.sent();
                let errors: u64 = Op::ALL
                    .iter()
                    .flat_map(|op| Outcome::ALL.iter().filter(|o| o.error()).map(|o| self.result.count(*op, *o)))
                    .sum();
                (sent > 0).then(|| errors as f64 / sent as f64)
            }
            "requests" => Some(r.requests as f64),
            "arrivals" => Some(r.arrivals as f64),
            "stock" => Some(r.stock as f64),
            "claimed" => stats.map(|s| s.claimed as f64),
            "persisted" => stats.map(|s| s.persisted as f64),
            "remaining" => stats.map(|s| s.remaining as f64),
            "throughput" => Some(r.throughput_per_s),
            "grants_per_s" => Some(r.granted_per_s),
            "persist_lag" => Some(r.persisted_after_s.unwrap_or(f64::INFINITY)),
            "sold_out_at" => r.first_sold_out_s,
            "last_grant_at" => r.last_grant_s,
            _ => None,
        }
    }
}

/// Quantiles of every (operation, outcome) seen, plus all claims together.
pub fn summarise(hists: &Hists) -> (Vec<OutcomeSummary>, Option<OutcomeSummary>) {
    let mut all: Option<Histogram<u64>> = None;
    let mut rows = Vec::new();
    for op in Op::ALL {
        for o in Outcome::ALL {
            let Some(h) = hists.get(op, o) else { continue };
            let label = match op {
                Op::Claim => o.label().to_owned(),
                Op::Redeem => format!("redeem: {}", o.label()),
            };
            rows.push(OutcomeSummary::of(op, o.key(), label, h));
            if op == Op::Claim {
                match all.as_mut() {
                    Some(a) => a.add(h).expect("same bounds"),
                    None => all = Some(h.clone()),
                }
            }
        }
    }
    let all = all.map(|h| OutcomeSummary::of(Op::Claim, "all", "all claims".to_owned(), &h));
    (rows, all)
}

/// "closed loop", "open loop at N arrivals/s" or the profile.
pub fn load_label(r: &Report) -> String {
    match (&r.arrivals_profile, r.rate_per_s) {
        (Some(p), Some(rate)) => format!("open loop, arrivals {p} (average {rate:.0}/s)"),
        (None, Some(rate)) => format!("open loop at {rate:.0} arrivals/s"),
        _ => "closed loop".to_owned(),
    }
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s"))
}

pub fn print_summary(r: &Report) {
    println!();
    println!(
        "{} {}: {} requests in {:.2} s = {:.0} req/s ({:.0} grants/s), {} workers, {}",
        r.scenario,
        r.campaign_id,
        r.requests,
        r.elapsed_s,
        r.throughput_per_s,
        r.granted_per_s,
        r.concurrency,
        load_label(r)
    );
    println!(
        "latency from {}; {} arrivals; last 201 at {}, first sold_out at {}; {} follow-ups abandoned",
        r.latency_from,
        r.arrivals,
        opt_s(r.last_grant_s),
        opt_s(r.first_sold_out_s),
        r.abandoned
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "outcome", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for row in r.outcomes.iter().chain(r.all.iter()) {
        println!(
            "{:<28} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            row.label, row.count, row.p50_ms, row.p90_ms, row.p99_ms, row.p999_ms, row.max_ms
        );
    }
    if let Some(s) = &r.stats {
        println!(
            "store: total_stock {} remaining {} claimed {} persisted {} (equal {} after the load) redeemed {}",
            s.total_stock,
            s.remaining,
            s.claimed,
            s.persisted,
            opt_s(r.persisted_after_s),
            s.redeemed
        );
    }
    if !r.targets.is_empty() {
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "target (claims)", "count", "201", "429", "503", "errors", "p50 ms", "p99 ms"
        );
        for t in &r.targets {
            println!(
                "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.2} {:>9.2}",
                t.url, t.claims, t.granted, t.rate_limited, t.unavailable, t.errors, t.p50_ms, t.p99_ms
            );
        }
    }
    println!("invariants:");
    for c in &r.invariants {
        println!("  {:<4} {:<30} {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
    }
    if !r.slo.is_empty() {
        println!("slo:");
        for v in &r.slo {
            println!("  {:<4} {:<30} {}", if v.ok { "ok" } else { "FAIL" }, v.threshold, v.detail);
        }
    }
    for w in &r.warnings {
        println!("\nWARNING: {w}");
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
            a.record(Op::Claim, Outcome::Granted, v * 1000);
        }
        b.record(Op::Claim, Outcome::SoldOut, 5000);
        b.record(Op::Claim, Outcome::Granted, 1);
        b.record(Op::Redeem, Outcome::Redeemed, 2000);
        a.merge(b);
        let (rows, all) = summarise(&a);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].label.as_str(), rows[0].count), ("201 granted", 101));
        assert!((rows[0].p50_ms - 50.0).abs() < 0.1, "{}", rows[0].p50_ms);
        assert!((rows[0].max_ms - 100.0).abs() < 0.1);
        assert!((rows[1].p50_ms - 5.0).abs() < 0.01);
        assert_eq!((rows[2].op, rows[2].label.as_str()), ("redeem", "redeem: 200 redeemed"));
        // Redemptions are not claims.
        let all = all.unwrap();
        assert_eq!(all.count, 102);
        assert_eq!(all.percentiles.len(), PLOT_QUANTILES.len());
        assert!(all.percentiles.windows(2).all(|w| w[0][1] <= w[1][1]));
    }

    fn row(outcome: Outcome, count: u64) -> OutcomeSummary {
        let mut h = Hists::default();
        h.record(Op::Claim, outcome, 1000);
        let mut r = summarise(&h).0.remove(0);
        r.count = count;
        r
    }

    #[test]
    fn warns_when_most_answers_are_refusals() {
        assert!(warnings(&[]).is_empty());
        let fine = [row(Outcome::Granted, 500), row(Outcome::RateLimited, 400), row(Outcome::Unavailable, 100)];
        assert!(warnings(&fine).is_empty());
        // Issue 16's run: 23,147 of 28,588 answers 429.
        let limited = [row(Outcome::Granted, 5441), row(Outcome::RateLimited, 23_147)];
        let w = warnings(&limited);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("23147 of 28588 claim answers (81%) were 429") && w[0].contains("FLASHGRAB_IP_RATE=0"),
            "{}",
            w[0]
        );
        let shed = [row(Outcome::Unavailable, 10), row(Outcome::SoldOut, 1)];
        assert!(warnings(&shed)[0].contains("503") && warnings(&shed)[0].contains("FLASHGRAB_MAX_IN_FLIGHT"));
    }

    #[test]
    fn splits_claims_per_target() {
        let (mut a, mut b) = (Hists::default(), Hists::default());
        a.record(Op::Claim, Outcome::Granted, 2000);
        a.record(Op::Claim, Outcome::RateLimited, 1000);
        b.record(Op::Claim, Outcome::Timeout, 5_000_000);
        b.record(Op::Redeem, Outcome::Redeemed, 1000);
        let urls = ["http://a".to_owned(), "http://b".to_owned()];
        let t = target_summaries(&urls, &[a, b]);
        assert_eq!(
            (t[0].url.as_str(), t[0].claims, t[0].granted, t[0].rate_limited, t[0].errors),
            ("http://a", 2, 1, 1, 0)
        );
        assert_eq!((t[1].claims, t[1].errors), (1, 1), "redemptions are not in the split");
        assert!((t[1].max_ms - 5000.0).abs() < 5.0, "{}", t[1].max_ms);
    }

    #[test]
    fn clamps_out_of_range_values() {
        let mut h = Hists::default();
        h.record(Op::Claim, Outcome::Timeout, 0);
        h.record(Op::Claim, Outcome::Timeout, u64::MAX);
        let (rows, _) = summarise(&h);
        assert_eq!(rows[0].count, 2);
        assert!(rows[0].max_ms <= 60_100.0, "{}", rows[0].max_ms);
    }
}
