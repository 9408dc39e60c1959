//! The arithmetic of a benchmark run: the median of a figure's runs and the
//! ratios derived from the medians. Pure, so it is unit-tested; the bash
//! script this replaces did it with `sort | awk`.

use serde::{Deserialize, Serialize};

/// One run's value of one figure. `disturbed`: a compile ran during the run
/// and it was kept anyway (after `--retries` tries), shown with a `*`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub value: f64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disturbed: bool,
}

/// The runs of one figure and their median (`None` without runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub median: Option<f64>,
    pub runs: Vec<Sample>,
}

impl Series {
    pub fn new(runs: Vec<Sample>) -> Self {
        let values: Vec<f64> = runs.iter().map(|s| s.value).collect();
        Self { median: median(&values), runs }
    }

    pub fn push(&mut self, s: Sample) {
        self.runs.push(s);
        *self = Self::new(std::mem::take(&mut self.runs));
    }

    /// `31,262 (31,262 30,678* 31,721)` with `decimals` digits.
    pub fn describe(&self, decimals: usize) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|s| format!("{}{}", number(s.value, decimals), if s.disturbed { "*" } else { "" }))
            .collect();
        format!("{}   runs: {}", self.median.map_or_else(|| "-".to_owned(), |m| number(m, decimals)), runs.join(" "))
    }
}

/// The median: the middle value of an odd count, the mean of the two middle
/// values of an even count; `None` for no values. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// L = 1/(1/H + 1/R): what a server doing nothing but the bare endpoint (H
/// requests/s) and the claim script (R calls/s) could reach if the two costs
/// simply added up.
pub fn l_of(h: f64, r: f64) -> Option<f64> {
    (h > 0.0 && r > 0.0).then(|| 1.0 / (1.0 / h + 1.0 / r))
}

/// `a / b`, `None` when either is missing or b is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The derived figures of a wrk run (all from medians).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// L with R -P16 and with R -P1 (requests/s).
    pub l_p16: Option<f64>,
    pub l_p1: Option<f64>,
    pub c_over_l_p16: Option<f64>,
    pub c_over_l_p1: Option<f64>,
    pub f_over_l_p16: Option<f64>,
    pub c_over_f: Option<f64>,
}

impl Ratios {
    pub fn of(h: Option<f64>, r_p16: Option<f64>, r_p1: Option<f64>, c: Option<f64>, f: Option<f64>) -> Self {
        let l = |r: Option<f64>| h.zip(r).and_then(|(h, r)| l_of(h, r));
        // L is a rate: whole requests/s, as printed.
        let l_p16 = l(r_p16).map(f64::round);
        let l_p1 = l(r_p1).map(f64::round);
        Self {
            l_p16,
            l_p1,
            c_over_l_p16: ratio(c, l_p16),
            c_over_l_p1: ratio(c, l_p1),
            f_over_l_p16: ratio(f, l_p16),
            c_over_f: ratio(c, f),
        }
    }
}

/// `12345.6` -> `12,346` (decimals 0), `0.8412` -> `0.84` (decimals 2).
pub fn number(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let sign = if v < 0.0 && s.chars().any(|c| c != '0' && c != '.') { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// `number` of an optional value, `-` when missing.
pub fn opt_number(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| number(v, decimals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // The order of the runs does not matter.
        assert_eq!(median(&[31_721.0, 31_262.0, 30_678.0]), Some(31_262.0));
    }

    #[test]
    fn series_keeps_runs_in_order_and_their_median() {
        let mut s = Series::default();
        for (v, d) in [(34_120.0, false), (35_546.0, true), (35_336.0, false)] {
            s.push(Sample { value: v, disturbed: d });
        }
        assert_eq!(s.median, Some(35_336.0));
        assert_eq!(s.describe(0), "35,336   runs: 34,120 35,546* 35,336");
        assert_eq!(Series::default().describe(0), "-   runs: ");
    }

    #[test]
    fn ratios_match_a_recorded_run() {
        // BENCHMARKS.md, 2026-11-30 05:04 UTC, commit 7db7c60.
        let r = Ratios::of(Some(134_530.0), Some(61_142.0), Some(47_151.0), Some(35_336.0), Some(30_896.0));
        assert_eq!(r.l_p16, Some(42_037.0));
        assert_eq!(r.l_p1, Some(34_914.0));
        assert_eq!(opt_number(r.c_over_l_p16, 2), "0.84");
        assert_eq!(opt_number(r.c_over_l_p1, 2), "1.01");
        assert_eq!(opt_number(r.f_over_l_p16, 2), "0.73");
        assert_eq!(opt_number(r.c_over_f, 2), "1.14");
    }

    #[test]
    fn ratios_without_a_figure_are_missing_not_infinite() {
        let r = Ratios::of(Some(100.0), None, Some(0.0), Some(10.0), Some(0.0));
        assert_eq!(r.l_p16, None);
        assert_eq!(r.l_p1, None);
        assert_eq!(r.c_over_l_p16, None);
        assert_eq!(r.c_over_f, None);
        assert_eq!(l_of(0.0, 5.0), None);
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(number(0.0, 0), "0");
        assert_eq!(number(999.4, 0), "999");
        assert_eq!(number(1_000.0, 0), "1,000");
        assert_eq!(number(1_234_567.8, 0), "1,234,568");
        assert_eq!(number(12_345.678, 2), "12,345.68");
        assert_eq!(number(-4_200.0, 0), "-4,200");
        assert_eq!(number(-0.001, 2), "0.00");
        assert_eq!(number(f64::NAN, 2), "-");
        assert_eq!(opt_number(None, 2), "-");
    }
}
