//! The launch gate: `--slo 'p99<50ms,errors<0.1%,granted==stock'`.
//!
//! k6-style thresholds, checked after the run against what it measured. A
//! gate is a list of terms `METRIC OP VALUE` separated by commas; `OP` is
//! one of `<`, `<=`, `>`, `>=`, `==`, `!=`; `VALUE` is a number with an
//! optional unit, or another metric of the same kind (`granted==stock`).
//!
//! Metrics, by kind:
//!
//! - latency, ms (units `us`, `ms`, `s`; a bare number is ms): `pNN`
//!   (`p50`, `p99`, `p99.9`, any quantile) and `max` of all claim answers,
//!   or `OUTCOME.pNN` / `OUTCOME.max` of one outcome (`granted.p99`,
//!   `sold_out.p50`; the keys of the JSON report: granted, already_claimed,
//!   sold_out, rate_limited, unavailable, timeout, ...).
//! - share (unit `%`; a bare number is a fraction): `errors` (503, other
//!   4xx/5xx, timeouts, broken connections, of all requests).
//! - count (bare numbers): an outcome key (claim answers with it),
//!   `requests`, `arrivals`, and the store's `stock`, `claimed`,
//!   `persisted`, `remaining`.
//! - rate, per second (bare, or `/s`): `throughput` (requests), `grants_per_s`.
//! - seconds (units `ms`, `s`; a bare number is s): `persist_lag` (after the
//!   load until persisted == claimed; infinite when it never caught up),
//!   `sold_out_at` (first 410 sold_out), `last_grant_at`.
//!
//! A metric without data (no answer of that outcome, stats unreadable)
//! fails its term: a gate passes on evidence only. Parsing happens before
//! any load, so a typo is a usage error (exit 2), not a failed gate (exit 3).

use std::fmt;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::outcome::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LatencyMs,
    Share,
    Count,
    PerSecond,
    Seconds,
}

/// A measured quantity.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Quantile in [0, 1] of the claim latency, of one outcome or all.
    Latency { outcome: Option<Outcome>, quantile: f64 },
    /// Anything else, by name (see the module note).
    Named(&'static str, Kind),
    /// Claim answers with this outcome.
    Count(Outcome),
}

impl Metric {
    fn kind(&self) -> Kind {
        match self {
            Self::Latency { .. } => Kind::LatencyMs,
            Self::Named(_, k) => *k,
            Self::Count(_) => Kind::Count,
        }
    }
}

const NAMED: [(&str, Kind); 11] = [
    ("errors", Kind::Share),
    ("requests", Kind::Count),
    ("arrivals", Kind::Count),
    ("stock", Kind::Count),
    ("claimed", Kind::Count),
    ("persisted", Kind::Count),
    ("remaining", Kind::Count),
    ("throughput", Kind::PerSecond),
    ("grants_per_s", Kind::PerSecond),
    ("persist_lag", Kind::Seconds),
    ("sold_out_at", Kind::Seconds),
];
const NAMED_EXTRA: [(&str, Kind); 1] = [("last_grant_at", Kind::Seconds)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    Value(f64),
    Metric(Metric),
}

/// One term of the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// As written (trimmed), for the report.
    pub text: String,
    pub lhs: Metric,
    pub op: Op,
    pub rhs: Rhs,
}

/// Parses a whole gate: terms separated by commas.
pub fn parse(spec: &str) -> anyhow::Result<Vec<Threshold>> {
    let terms: Vec<&str> = spec.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    if terms.is_empty() {
        bail!("--slo is empty; e.g. --slo 'p99<50ms,errors<0.1%,granted==stock'");
    }
    terms.into_iter().map(|t| parse_term(t).with_context(|| format!("--slo term {t:?}"))).collect()
}

fn parse_term(t: &str) -> anyhow::Result<Threshold> {
    // Two-character operators first.
    let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
    let (at, len, op) = ops
        .iter()
        .filter_map(|(s, op)| t.find(s).map(|i| (i, s.len(), *op)))
        .min_by_key(|(i, len, _)| (*i, usize::MAX - len))
        .context("no comparison (one of < <= > >= == !=)")?;
    let (l, r) = (t[..at].trim(), t[at + len..].trim());
    if l.is_empty() || r.is_empty() {
        bail!("a metric and a value are needed on both sides of the comparison");
    }
    let lhs = metric(l)?.with_context(|| format!("unknown metric {l:?} ({})", known()))?;
    let rhs = match metric(r)? {
        Some(m) if m.kind() == lhs.kind() => Rhs::Metric(m),
        Some(m) => bail!("{l:?} is a {:?} and {r:?} a {:?}: compare like with like", lhs.kind(), m.kind()),
        None => Rhs::Value(value(r, lhs.kind())?),
    };
    Ok(Threshold { text: t.to_owned(), lhs, op, rhs })
}

fn known() -> String {
    let names: Vec<&str> = NAMED.iter().chain(NAMED_EXTRA.iter()).map(|(n, _)| *n).collect();
    format!("pNN, max, OUTCOME.pNN, an outcome key such as granted or sold_out, {}", names.join(", "))
}

/// `None` when `s` is not a metric's name (then it may be a value).
fn metric(s: &str) -> anyhow::Result<Option<Metric>> {
    let (outcome, stat) = match s.split_once('.') {
        Some((o, rest)) if !o.chars().next().is_some_and(|c| c.is_ascii_digit()) && is_stat(rest) => {
            let o = Outcome::ALL.iter().find(|x| x.key() == o).with_context(|| format!("unknown outcome {o:?}"))?;
            (Some(*o), rest)
        }
        _ => (None, s),
    };
    if stat == "max" {
        return Ok(Some(Metric::Latency { outcome, quantile: 1.0 }));
    }
    if let Some(n) = stat.strip_prefix('p')
        && n.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        let p: f64 = n.parse().with_context(|| format!("{stat:?}: a percentile is p50, p99, p99.9, ..."))?;
        if !(0.0..=100.0).contains(&p) {
            bail!("{stat:?}: a percentile is between p0 and p100");
        }
        return Ok(Some(Metric::Latency { outcome, quantile: p / 100.0 }));
    }
    if outcome.is_some() {
        bail!("{s:?}: after OUTCOME. comes a percentile (p99) or max");
    }
    if let Some((n, k)) = NAMED.iter().chain(NAMED_EXTRA.iter()).find(|(n, _)| *n == s) {
        return Ok(Some(Metric::Named(n, *k)));
    }
    if let Some(o) = Outcome::ALL.iter().find(|x| x.key() == s) {
        return Ok(Some(Metric::Count(*o)));
    }
    Ok(None)
}

fn is_stat(s: &str) -> bool {
    s == "max" || s.strip_prefix('p').is_some_and(|n| n.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// A number with a unit fitting `kind`, in the kind's base unit.
fn value(s: &str, kind: Kind) -> anyhow::Result<f64> {
    let split =
        s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e')).unwrap_or(s.len());
    let (num, unit) = (&s[..split], s[split..].trim());
    let n: f64 = num.parse().with_context(|| format!("{s:?} is neither a number nor a metric ({})", known()))?;
    if !n.is_finite() {
        bail!("{s:?} is not a finite number");
    }
    let scale = match (kind, unit) {
        (Kind::LatencyMs, "" | "ms") => 1.0,
        (Kind::LatencyMs, "us") => 0.001,
        (Kind::LatencyMs, "s") => 1000.0,
        (Kind::Seconds, "" | "s") => 1.0,
        (Kind::Seconds, "ms") => 0.001,
        (Kind::Share, "") => 1.0,
        (Kind::Share, "%") => 0.01,
        (Kind::Count, "") => 1.0,
        (Kind::PerSecond, "" | "/s") => 1.0,
        (k, u) => bail!("unit {u:?} does not fit a {k:?} metric (latency: us ms s; seconds: ms s; share: %)"),
    };
    Ok(n * scale)
}

/// Where the measured values come from (the run's report; a table in tests).
pub trait Source {
    /// Claim latency in ms at `quantile`, of `outcome` or all claims; `None`
    /// when there was no such answer.
    fn latency_ms(&self, outcome: Option<Outcome>, quantile: f64) -> Option<f64>;
    /// Claim answers with `outcome`.
    fn count(&self, outcome: Outcome) -> u64;
    /// A named metric in its base unit; `None` when not measured.
    fn named(&self, name: &str) -> Option<f64>;
}

fn measure(m: &Metric, src: &dyn Source) -> Option<f64> {
    match m {
        Metric::Latency { outcome, quantile } => src.latency_ms(*outcome, *quantile),
        Metric::Count(o) => Some(src.count(*o) as f64),
        Metric::Named(n, _) => src.named(n),
    }
}

/// A term, judged.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub threshold: String,
    pub ok: bool,
    /// What was measured, in words (`p99 = 12.3 ms`).
    pub detail: String,
}

struct Shown(Kind, Option<f64>);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (_, None) => write!(f, "no data"),
            (_, Some(v)) if v.is_infinite() => write!(f, "never"),
            (Kind::LatencyMs, Some(v)) => write!(f, "{v:.2} ms"),
            (Kind::Share, Some(v)) => write!(f, "{:.3}%", v * 100.0),
            (Kind::Count, Some(v)) => write!(f, "{v:.0}"),
            (Kind::PerSecond, Some(v)) => write!(f, "{v:.1}/s"),
            (Kind::Seconds, Some(v)) => write!(f, "{v:.2} s"),
        }
    }
}

pub fn evaluate(gate: &[Threshold], src: &dyn Source) -> Vec<Verdict> {
    gate.iter()
        .map(|t| {
            let kind = t.lhs.kind();
            let a = measure(&t.lhs, src);
            let (b, rhs_shown) = match &t.rhs {
                Rhs::Value(v) => (Some(*v), None),
                Rhs::Metric(m) => {
                    let b = measure(m, src);
                    (b, Some(Shown(kind, b).to_string()))
                }
            };
            let ok = matches!((a, b), (Some(a), Some(b)) if t.op.holds(a, b));
            let mut detail = format!("measured {}", Shown(kind, a));
            if let Some(r) = rhs_shown {
                detail.push_str(&format!(", right side {r}"));
            }
            Verdict { threshold: t.text.clone(), ok, detail }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Table {
        p: HashMap<(Option<&'static str>, u64), f64>,
        counts: HashMap<&'static str, u64>,
        named: HashMap<&'static str, f64>,
    }

    impl Source for Table {
        fn latency_ms(&self, outcome: Option<Outcome>, q: f64) -> Option<f64> {
            self.p.get(&(outcome.map(|o| o.key()), (q * 10_000.0).round() as u64)).copied()
        }
        fn count(&self, o: Outcome) -> u64 {
            self.counts.get(o.key()).copied().unwrap_or(0)
        }
        fn named(&self, n: &str) -> Option<f64> {
            self.named.get(n).copied()
        }
    }

    fn table() -> Table {
        Table {
            p: HashMap::from([
                ((None, 9900), 42.0),
                ((None, 10_000), 90.0),
                ((Some("granted"), 9990), 60.0),
                ((Some("granted"), 5000), 3.0),
            ]),
            counts: HashMap::from([("granted", 1000), ("sold_out", 5)]),
            named: HashMap::from([
                ("stock", 1000.0),
                ("errors", 0.0005),
                ("throughput", 2500.0),
                ("persist_lag", f64::INFINITY),
            ]),
        }
    }

    fn judge(spec: &str) -> Vec<bool> {
        evaluate(&parse(spec).unwrap(), &table()).into_iter().map(|v| v.ok).collect()
    }

    #[test]
    fn parses_the_documented_example() {
        let g = parse(" p99<50ms, errors<0.1% ,granted==stock").unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].lhs, Metric::Latency { outcome: None, quantile: 0.99 });
        assert_eq!((g[0].op, &g[0].rhs), (Op::Lt, &Rhs::Value(50.0)));
        assert_eq!(g[1].lhs, Metric::Named("errors", Kind::Share));
        assert_eq!(g[1].rhs, Rhs::Value(0.001));
        assert_eq!(g[2].lhs, Metric::Count(Outcome::Granted));
        assert_eq!(g[2].rhs, Rhs::Metric(Metric::Named("stock", Kind::Count)));
        assert_eq!(g[2].text, "granted==stock");
    }

    #[test]
    fn parses_units_operators_and_outcome_percentiles() {
        let g = parse("granted.p99.9<=0.5s,max>=200us,persist_lag<500ms,throughput>1000/s,sold_out!=0").unwrap();
        assert_eq!(g[0].lhs, Metric::Latency { outcome: Some(Outcome::Granted), quantile: 99.9 / 100.0 });
        assert_eq!((g[0].op, &g[0].rhs), (Op::Le, &Rhs::Value(500.0)));
        assert_eq!(g[1].lhs, Metric::Latency { outcome: None, quantile: 1.0 });
        assert_eq!((g[1].op, &g[1].rhs), (Op::Ge, &Rhs::Value(0.2)));
        assert_eq!(g[2].rhs, Rhs::Value(0.5));
        assert_eq!((g[3].op, &g[3].rhs), (Op::Gt, &Rhs::Value(1000.0)));
        assert_eq!((g[4].lhs.clone(), g[4].op), (Metric::Count(Outcome::SoldOut), Op::Ne));
    }

    #[test]
    fn refuses_what_it_cannot_judge() {
        for bad in [
            "",
            "p99",
            "p99<",
            "<5",
            "p99<50kg",
            "p101<5",
            "latency<5",
            "nonsense.p99<5",
            "granted.count<5",
            "errors<5ms",
            "p99<stock",
            "granted==errors",
            "p99<fast",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = format!("{:#}", parse("p99<50ms,latency<5").unwrap_err());
        assert!(e.contains("\"latency<5\"") && e.contains("unknown metric"), "{e}");
    }

    #[test]
    fn evaluates_against_the_measurements() {
        assert_eq!(judge("p99<50ms,errors<0.1%,granted==stock"), [true, true, true]);
        assert_eq!(judge("p99<40,max<=90,granted.p99.9<0.05s,granted.p50<5"), [false, true, false, true]);
        assert_eq!(judge("errors<0.01%,throughput>=2500,sold_out>5,sold_out>=5"), [false, true, false, true]);
        // Never caught up: fails any upper bound.
        assert_eq!(judge("persist_lag<3600s"), [false]);
        // No data fails: no timeouts measured, stats not read.
        assert_eq!(judge("timeout.p99<1s,claimed==stock,timeout==0"), [false, false, true]);
    }

    #[test]
    fn says_what_it_measured() {
        let v = evaluate(&parse("p99<40ms,granted==stock,persist_lag<1s,claimed>0").unwrap(), &table());
        assert_eq!(v[0].detail, "measured 42.00 ms");
        assert_eq!(v[1].detail, "measured 1000, right side 1000");
        assert_eq!(v[2].detail, "measured never");
        assert_eq!(v[3].detail, "measured no data");
    }
}
