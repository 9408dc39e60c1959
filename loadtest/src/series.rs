//! The run second by second: arrivals, answers by outcome, p50/p99/max
//! latency of each outcome (and of all claim answers), stock left, claimed
//! and persisted. Written into the JSON report (`seconds`), as CSV beside it
//! and plotted in the HTML report.
//!
//! Bucketing: second `i` is `[i, i + 1)` seconds after the start of the
//! load. An arrival counts in the second it was due (its scheduled time in
//! the open loop, its send in the closed loop); an answer in the second it
//! arrived (so a slow second shows where the answers came out, and the
//! latency of that second is of the answers seen then). The store's
//! figures are those of the last stats poll up to a quarter second after
//! the end of the second (the poller reads once a second, a few ms late),
//! i.e. the state at the end of that second; the series goes on after the
//! load while the poller waits for `persisted == claimed`.
//!
//! The workers record into one [`Recorder`] (relaxed atomics for counts,
//! one short mutex per second for its histograms: the load generator runs on
//! one or two threads, so it is hardly ever contended). Its histograms are
//! coarser than the run's ([`SIGFIG`] digits, `u32` counts: about 10 KB per
//! outcome seen in a second) and only created for the outcomes a second
//! saw; the number of seconds is fixed when the run starts (answers after
//! the last one count in it).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::outcome::{Op, Outcome};
use crate::persistence::StatsSample;

/// Significant digits of the per-second histograms (1 % steps: plenty for
/// a plot, a tenth of the memory of the run's 3-digit histograms).
pub const SIGFIG: u8 = 2;
const MAX_MICROS: u64 = 60_000_000;

/// A store poll this long after the end of a second still counts for it.
const STATS_SLACK_S: f64 = 0.25;

type Hist = Histogram<u32>;

/// The histograms of one second, one per (operation, outcome) seen.
#[derive(Default, Clone)]
pub struct SecondHists {
    by: [[Option<Hist>; Outcome::COUNT]; Op::COUNT],
}

impl SecondHists {
    pub fn record(&mut self, op: Op, outcome: Outcome, micros: u64) {
        self.by[op.index()][outcome.index()]
            .get_or_insert_with(|| Hist::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("static bounds are valid"))
            .saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn get(&self, op: Op, outcome: Outcome) -> Option<&Hist> {
        self.by[op.index()][outcome.index()].as_ref()
    }

    /// Every claim answer of the second in one histogram.
    fn all_claims(&self) -> Option<Hist> {
        let mut all: Option<Hist> = None;
        for h in self.by[Op::Claim.index()].iter().flatten() {
            match all.as_mut() {
                Some(a) => a.add(h).expect("same bounds"),
                None => all = Some(h.clone()),
            }
        }
        all
    }
}

/// What the workers record, per second of the run.
pub struct Recorder {
    arrivals: Vec<AtomicU64>,
    hists: Vec<Mutex<SecondHists>>,
}

/// The second an offset from the start falls in, the last one for anything
/// later.
pub fn second_of(since_start: Duration, seconds: usize) -> usize {
    (since_start.as_secs() as usize).min(seconds.saturating_sub(1))
}

impl Recorder {
    pub fn new(seconds: usize) -> Self {
        let seconds = seconds.max(1);
        Self {
            arrivals: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            hists: (0..seconds).map(|_| Mutex::new(SecondHists::default())).collect(),
        }
    }

    pub fn arrival(&self, due_since_start: Duration) {
        self.arrivals[second_of(due_since_start, self.arrivals.len())].fetch_add(1, Ordering::Relaxed);
    }

    pub fn answer(&self, answered_since_start: Duration, op: Op, outcome: Outcome, micros: u64) {
        let i = second_of(answered_since_start, self.hists.len());
        // A worker that panicked while holding the lock left a histogram
        // that is still whole: keep recording into it.
        self.hists[i].lock().unwrap_or_else(|e| e.into_inner()).record(op, outcome, micros);
    }

    /// The first `used` seconds, as plain values.
    pub fn snapshot(&self, used: usize) -> Vec<Raw> {
        let used = used.clamp(1, self.arrivals.len());
        (0..used)
            .map(|i| Raw {
                arrivals: self.arrivals[i].load(Ordering::Relaxed),
                hists: self.hists[i].lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect()
    }
}

/// One second as recorded.
#[derive(Default, Clone)]
pub struct Raw {
    pub arrivals: u64,
    pub hists: SecondHists,
}

/// Count and latency of one outcome (or of all claims) in one second, ms.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cell {
    /// `granted`, `sold_out`, ... for claims; `redeem_<outcome>` for
    /// redemptions; `all_claims`.
    pub key: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Cell {
    fn of(key: String, h: &Hist) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            key,
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One second of the run, as written to the reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondRow {
    /// `[second, second + 1)` seconds after the start of the load.
    pub second: u32,
    /// Arrivals due in this second.
    pub arrivals: u64,
    /// Answers of every kind that arrived in this second.
    pub answers: u64,
    /// The outcomes answered in this second, in the order of the summary.
    pub outcomes: Vec<Cell>,
    /// All claim answers of this second together.
    pub all_claims: Option<Cell>,
    /// The store at the end of the second (`None`: no poll then).
    pub remaining: Option<u64>,
    pub claimed: Option<u64>,
    pub persisted: Option<u64>,
}

impl SecondRow {
    pub fn cell(&self, key: &str) -> Option<&Cell> {
        self.outcomes.iter().find(|c| c.key == key)
    }

    pub fn count(&self, key: &str) -> u64 {
        self.cell(key).map_or(0, |c| c.count)
    }
}

/// The series key of an (operation, outcome).
pub fn key(op: Op, outcome: Outcome) -> String {
    match op {
        Op::Claim => outcome.key().to_owned(),
        Op::Redeem => format!("redeem_{}", outcome.key()),
    }
}

/// The last poll up to the end of second `i` (plus the slack).
fn stats_at_end(samples: &[StatsSample], i: usize) -> Option<&StatsSample> {
    let end = i as f64 + 1.0 + STATS_SLACK_S;
    samples.iter().take_while(|s| s.t_s < end).last()
}

/// The rows of a run: one per recorded second, and on while the polls went
/// on after the load (no answers then, the store's figures only).
pub fn rows(raw: &[Raw], samples: &[StatsSample]) -> Vec<SecondRow> {
    let polled = samples.last().map_or(0, |s| (s.t_s - STATS_SLACK_S).max(0.0).ceil() as usize);
    let n = raw.len().max(polled);
    let empty = Raw::default();
    (0..n)
        .map(|i| {
            let r = raw.get(i).unwrap_or(&empty);
            let outcomes: Vec<Cell> = Op::ALL
                .iter()
                .flat_map(|op| Outcome::ALL.iter().map(move |o| (*op, *o)))
                .filter_map(|(op, o)| r.hists.get(op, o).filter(|h| !h.is_empty()).map(|h| Cell::of(key(op, o), h)))
                .collect();
            let stats = stats_at_end(samples, i);
            SecondRow {
                second: i as u32,
                arrivals: r.arrivals,
                answers: outcomes.iter().map(|c| c.count).sum(),
                all_claims: r.hists.all_claims().map(|h| Cell::of("all_claims".to_owned(), &h)),
                outcomes,
                remaining: stats.map(|s| s.remaining),
                claimed: stats.map(|s| s.claimed),
                persisted: stats.map(|s| s.persisted),
            }
        })
        .collect()
}

/// The outcome keys that occur anywhere in `rows`, in the summary's order.
pub fn keys(rows: &[SecondRow]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for op in Op::ALL {
        for o in Outcome::ALL {
            let k = key(op, o);
            if rows.iter().any(|r| r.cell(&k).is_some()) {
                out.push(k);
            }
        }
    }
    out
}

/// The series as CSV: one line per second; for each outcome seen in the
/// run its count and p50/p99/max latency (ms); the same for all claims;
/// then the store. An empty cell: no answer of that outcome that second
/// (count 0), or no stats poll.
pub fn csv(rows: &[SecondRow]) -> String {
    let keys = keys(rows);
    let mut out = String::from("second,arrivals,answers");
    for k in keys.iter().map(String::as_str).chain(["all_claims"]) {
        let _ = write!(out, ",{k},{k}_p50_ms,{k}_p99_ms,{k}_max_ms");
    }
    out.push_str(",remaining,claimed,persisted\n");
    let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    for r in rows {
        let _ = write!(out, "{},{},{}", r.second, r.arrivals, r.answers);
        let cells = keys.iter().map(|k| r.cell(k)).chain([r.all_claims.as_ref()]);
        for c in cells {
            match c {
                Some(c) => {
                    let _ = write!(out, ",{},{:.3},{:.3},{:.3}", c.count, c.p50_ms, c.p99_ms, c.max_ms);
                }
                None => out.push_str(",0,,,"),
            }
        }
        let _ = writeln!(out, ",{},{},{}", opt(r.remaining), opt(r.claimed), opt(r.persisted));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, claimed: u64, persisted: u64, remaining: u64) -> StatsSample {
        StatsSample { t_s, claimed, persisted, remaining }
    }

    #[test]
    fn buckets_by_whole_seconds_and_clamps_the_tail() {
        assert_eq!(second_of(Duration::from_millis(999), 10), 0);
        assert_eq!(second_of(Duration::from_millis(1000), 10), 1);
        assert_eq!(second_of(Duration::from_secs(60), 10), 9);
        assert_eq!(second_of(Duration::ZERO, 0), 0);
        let r = Recorder::new(3);
        r.arrival(Duration::from_millis(10));
        r.arrival(Duration::from_millis(900));
        r.arrival(Duration::from_millis(1500));
        r.answer(Duration::from_millis(500), Op::Claim, Outcome::Granted, 2_000);
        r.answer(Duration::from_millis(1100), Op::Claim, Outcome::Granted, 4_000);
        r.answer(Duration::from_millis(1200), Op::Claim, Outcome::SoldOut, 1_000);
        r.answer(Duration::from_secs(30), Op::Redeem, Outcome::Redeemed, 9_000);
        let raw = r.snapshot(3);
        assert_eq!(raw.iter().map(|s| s.arrivals).collect::<Vec<_>>(), vec![2, 1, 0]);
        let rows = rows(&raw, &[]);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].answers, rows[1].answers, rows[2].answers), (1, 2, 1));
        assert_eq!(rows[1].count("granted"), 1);
        assert_eq!(rows[1].count("sold_out"), 1);
        assert_eq!(rows[2].count("redeem_redeemed"), 1, "late answers count in the last second");
        // All claims of second 1: 1 ms and 4 ms; redemptions are not claims.
        let all = rows[1].all_claims.as_ref().unwrap();
        assert_eq!(all.count, 2);
        assert!((all.max_ms - 4.0).abs() < 0.05 && (all.p50_ms - 1.0).abs() < 0.02, "{all:?}");
        assert!(rows[2].all_claims.is_none());
        assert_eq!(rows[0].remaining, None);
    }

    #[test]
    fn latency_of_a_second_is_of_its_own_answers() {
        let r = Recorder::new(2);
        for ms in 1..=100u64 {
            r.answer(Duration::from_millis(10), Op::Claim, Outcome::Granted, ms * 1000);
        }
        r.answer(Duration::from_millis(1010), Op::Claim, Outcome::Granted, 500_000);
        let rows = rows(&r.snapshot(2), &[]);
        let g = rows[0].cell("granted").unwrap();
        assert_eq!(g.count, 100);
        assert!((g.p50_ms - 50.0).abs() <= 0.5, "{g:?}");
        assert!((g.p99_ms - 99.0).abs() <= 1.0, "{g:?}");
        assert!((g.max_ms - 100.0).abs() <= 1.0, "{g:?}");
        let late = rows[1].cell("granted").unwrap();
        assert!((late.p50_ms - 500.0).abs() <= 5.0, "{late:?}");
    }

    #[test]
    fn the_store_is_read_at_the_end_of_each_second() {
        // Polls once a second, a few ms late; then every 100 ms after the
        // load until persisted == claimed.
        let polls = [
            sample(0.002, 0, 0, 100),
            sample(1.004, 60, 10, 40),
            sample(2.006, 100, 70, 0),
            sample(2.4, 100, 90, 0),
            sample(2.5, 100, 100, 0),
        ];
        let raw = vec![Raw::default(); 2];
        let rows = rows(&raw, &polls);
        // Two recorded seconds, one more for the polls that went on.
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].claimed, rows[0].persisted, rows[0].remaining), (Some(60), Some(10), Some(40)));
        assert_eq!((rows[1].claimed, rows[1].persisted), (Some(100), Some(70)));
        assert_eq!(rows[2].persisted, Some(100));
        assert_eq!(rows[2].answers, 0);
    }

    #[test]
    fn csv_has_a_column_group_per_outcome_seen() {
        let r = Recorder::new(2);
        r.arrival(Duration::ZERO);
        // Below 256 us a 2-digit histogram is exact.
        r.answer(Duration::from_millis(5), Op::Claim, Outcome::Granted, 200);
        r.answer(Duration::from_millis(1005), Op::Claim, Outcome::SoldOut, 250);
        // The poll at 1.001 s is the end of second 0 and still the last one
        // known at the end of second 1.
        let rows = rows(&r.snapshot(2), &[sample(1.001, 1, 0, 0)]);
        assert_eq!(keys(&rows), vec!["granted", "sold_out"]);
        let text = csv(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "second,arrivals,answers,granted,granted_p50_ms,granted_p99_ms,granted_max_ms,\
             sold_out,sold_out_p50_ms,sold_out_p99_ms,sold_out_max_ms,\
             all_claims,all_claims_p50_ms,all_claims_p99_ms,all_claims_max_ms,remaining,claimed,persisted"
        );
        assert_eq!(lines[1], "0,1,1,1,0.200,0.200,0.200,0,,,,1,0.200,0.200,0.200,0,1,0");
        assert_eq!(lines[2], "1,0,1,0,,,,1,0.250,0.250,0.250,1,0.250,0.250,0.250,0,1,0");
        assert_eq!(lines.len(), 3);
        // Every line has as many cells as the header.
        let n = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == n));
    }
}
