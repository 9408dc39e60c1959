//! The HTML report: one self-contained file (inline CSS and SVG, no script,
//! no external resource) rendered from the same [`Report`] as the JSON.
//!
//! Top down, in the order a reader asks: the verdicts (invariants, the
//! `--slo` thresholds, warnings), the run in numbers, then the plots:
//! answers by outcome per second (stacked) with the arrivals, latency over
//! time (p50 and p99 per second of the 201s and of all claim answers), the
//! latency distribution per outcome, claimed vs persisted with the stock
//! left, the persistence lag, and the per-second table. Each section has an
//! `id` (scripts/report-check asserts them in a headless Chromium). The
//! charts are drawn by `svg`.

use std::fmt::Write;

use crate::persistence::lag_series;
use crate::report::{Report, load_label};
use crate::series::{self, SecondRow};
use crate::svg::{Labels, Layer, PALETTE, Series, Stroke, XAxis, esc, line_chart, stacked_bars};

/// The ids of the page's sections, in order (scripts/report-check asserts
/// the same list in the rendered page).
#[cfg(test)]
const SECTIONS: [&str; 11] = [
    "verdict",
    "slo",
    "summary",
    "outcomes",
    "invariants",
    "answers-over-time",
    "latency-over-time",
    "latency-distribution",
    "claimed-persisted",
    "persistence-lag",
    "seconds",
];

/// Position of quantile `q` on the percentile axis: log10(1 / (1 - q)),
/// with the maximum drawn one decade past 99.99 %.
pub fn quantile_x(q: f64) -> f64 {
    if q >= 1.0 { 5.0 } else { (1.0 / (1.0 - q)).log10().min(5.0) }
}

fn percentile_axis() -> XAxis {
    XAxis::Fixed(
        [(0.0, "0%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"), (1.0, "max")]
            .iter()
            .map(|(q, l)| (quantile_x(*q), (*l).to_owned()))
            .collect(),
    )
}

/// A fixed colour per outcome, so the same answer looks the same in every
/// chart: green for a grant, greys for the normal refusals, warm colours for
/// what should be rare.
pub fn outcome_color(key: &str, i: usize) -> String {
    match key.strip_prefix("redeem_").unwrap_or(key) {
        "granted" | "redeemed" => "#2ca02c",
        "already_claimed" | "already_redeemed" => "#ffbb78",
        "limit_reached" => "#ff7f0e",
        "sold_out" => "#9e9e9e",
        "ended" | "expired" => "#616161",
        "not_started" | "not_yet_valid" => "#bcbd22",
        "rate_limited" => "#d62728",
        "unavailable" => "#9467bd",
        "timeout" => "#8c564b",
        "transport_error" => "#e377c2",
        "other_4xx" | "not_applicable" | "coupon_not_found" => "#17becf",
        "other_5xx" => "#000000",
        _ => PALETTE[i % PALETTE.len()],
    }
    .to_owned()
}

/// The row label of a series key (`granted` -> "201 granted").
fn key_label(r: &Report, key: &str) -> String {
    r.outcomes
        .iter()
        .find(|o| {
            series::key(
                if o.op == "redeem" { crate::outcome::Op::Redeem } else { crate::outcome::Op::Claim },
                outcome_of(o.outcome),
            ) == key
        })
        .map_or_else(|| key.to_owned(), |o| o.label.clone())
}

fn outcome_of(key: &str) -> crate::outcome::Outcome {
    crate::outcome::Outcome::ALL
        .iter()
        .copied()
        .find(|o| o.key() == key)
        .unwrap_or(crate::outcome::Outcome::ClientError)
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}tr.fail td{background:#fdd}tr.ok td:first-child{color:#070}\
.verdict{font-size:18px;font-weight:bold}.bad{color:#b00}.good{color:#070}.warn{background:#fff3cd;padding:6px 10px}\
td.l{text-align:left}svg{display:block;margin:6px 0 4px;border:1px solid #eee}svg .t{font-weight:bold;font-size:13px}\
svg .g{stroke:#eee}svg .a{stroke:#444}svg text{font-size:11px;fill:#333}svg .yl{text-anchor:end}\
svg .xl{text-anchor:middle}svg .yt{text-anchor:middle}svg .n{fill:#999}p.note{color:#555;margin:0 0 22px}";

const X_TIME: &str = "time since the start of the load (s)";

fn verdicts(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<section id=\"verdict\"><p class=\"verdict {}\">{}</p>",
        if r.held { "good" } else { "bad" },
        if r.held {
            "Every invariant held.".to_owned()
        } else {
            let broken: Vec<&str> = r.invariants.iter().filter(|c| !c.ok).map(|c| c.name).collect();
            format!("INVARIANT BROKEN: {}", esc(&broken.join(", ")))
        }
    );
    for w in &r.warnings {
        let _ = write!(h, "<p class=\"warn\">WARNING: {}</p>", esc(w));
    }
    h.push_str("</section><section id=\"slo\"><h2>Launch gate (--slo)</h2>");
    if r.slo.is_empty() {
        h.push_str("<p>No thresholds given (<code>--slo 'p99&lt;50ms,errors&lt;0.1%,granted==stock'</code>).</p>");
    } else {
        let failed = r.slo.iter().filter(|v| !v.ok).count();
        let _ = write!(
            h,
            "<p class=\"verdict {}\">{}</p><table><tr><th>threshold</th><th>result</th><th>measured</th></tr>",
            if failed == 0 { "good" } else { "bad" },
            if failed == 0 {
                format!("All {} thresholds met.", r.slo.len())
            } else {
                format!("{failed} of {} thresholds FAILED.", r.slo.len())
            }
        );
        for v in &r.slo {
            let _ = write!(
                h,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                if v.ok { "ok" } else { "fail" },
                esc(&v.threshold),
                if v.ok { "ok" } else { "FAIL" },
                esc(&v.detail)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");
}

fn summary(h: &mut String, r: &Report) {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s"));
    let rows: Vec<(&str, String)> = vec![
        ("started (UTC)", r.started_at.clone()),
        ("targets", r.urls.join(" ")),
        ("users / stock", format!("{} / {}", r.users, r.stock)),
        ("load", format!("{}, {} workers", load_label(r), r.concurrency)),
        ("latency measured from", r.latency_from.to_owned()),
        (
            "requests",
            format!(
                "{} ({} arrivals) in {:.2} s = {:.0} req/s, {:.0} grants/s",
                r.requests, r.arrivals, r.elapsed_s, r.throughput_per_s, r.granted_per_s
            ),
        ),
        ("last 201 / first sold_out", format!("{} / {}", opt(r.last_grant_s), opt(r.first_sold_out_s))),
        ("persisted == claimed", format!("{} after the load", opt(r.persisted_after_s))),
        ("follow-ups abandoned at the end", r.abandoned.to_string()),
    ];
    h.push_str("<section id=\"summary\"><h2>The run</h2><table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{}</th><td class=\"l\">{}</td></tr>", esc(k), esc(&v));
    }
    if let Some(s) = &r.stats {
        let _ = write!(
            h,
            "<tr><th>store</th><td class=\"l\">total_stock {} remaining {} claimed {} persisted {} redeemed {}</td></tr>",
            s.total_stock, s.remaining, s.claimed, s.persisted, s.redeemed
        );
    }
    h.push_str("</table></section><section id=\"outcomes\"><h2>Latency by outcome (ms)</h2><table><tr><th>outcome</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for row in r.outcomes.iter().chain(r.all.iter()) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(&row.label),
            row.count,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.p999_ms,
            row.max_ms
        );
    }
    h.push_str("</table></section><section id=\"invariants\"><h2>Invariants</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>");
    for c in &r.invariants {
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            if c.ok { "ok" } else { "fail" },
            esc(c.name),
            if c.ok { "ok" } else { "FAIL" },
            esc(&c.detail)
        );
    }
    h.push_str("</table></section>");
}

fn section(h: &mut String, id: &str, chart: String, note: &str) {
    let _ = write!(h, "<section id=\"{id}\">{chart}<p class=\"note\">{note}</p></section>");
}

fn charts(h: &mut String, r: &Report) {
    let secs = &r.seconds;
    let keys = series::keys(secs);
    let layers: Vec<Layer> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Layer {
            name: key_label(r, k),
            color: outcome_color(k, i),
            values: secs.iter().map(|s| s.count(k) as f64).collect(),
        })
        .collect();
    let arrivals = Series {
        name: "arrivals".into(),
        points: secs.iter().map(|s| (f64::from(s.second) + 0.5, s.arrivals as f64)).collect(),
        stroke: Stroke { dash: Some("5 3"), width: 2.0, dots: true, ..Stroke::solid("#1f3a93") },
    };
    h.push_str("<h2>Over time</h2>");
    section(
        h,
        "answers-over-time",
        stacked_bars(
            &Labels { title: "Answers by outcome per second", x: X_TIME, y: "answers per second (1/s)" },
            &layers,
            std::slice::from_ref(&arrivals),
        ),
        "Each bar: the answers that arrived in that second, stacked by outcome; the dashed line: arrivals due in that second (in an open loop the arrivals go on whatever the answers do).",
    );

    let lat = |name: &str, f: &dyn Fn(&SecondRow) -> Option<f64>, stroke: Stroke| Series {
        name: name.to_owned(),
        points: secs.iter().filter_map(|s| f(s).map(|v| (f64::from(s.second) + 0.5, v))).collect(),
        stroke,
    };
    let granted = |q: fn(&series::Cell) -> f64| move |s: &SecondRow| s.cell("granted").map(q);
    let all = |q: fn(&series::Cell) -> f64| move |s: &SecondRow| s.all_claims.as_ref().map(q);
    let green = outcome_color("granted", 0);
    let latency = [
        lat("201 granted p50", &granted(|c| c.p50_ms), Stroke { dots: true, ..Stroke::solid(&green) }),
        lat(
            "201 granted p99",
            &granted(|c| c.p99_ms),
            Stroke { dash: Some("6 3"), dots: true, ..Stroke::solid(&green) },
        ),
        lat("all claim answers p50", &all(|c| c.p50_ms), Stroke { dots: true, ..Stroke::solid("#1f77b4") }),
        lat(
            "all claim answers p99",
            &all(|c| c.p99_ms),
            Stroke { dash: Some("6 3"), dots: true, ..Stroke::solid("#1f77b4") },
        ),
    ];
    let span = secs.last().map(|s| (0.0, f64::from(s.second) + 1.0));
    section(
        h,
        "latency-over-time",
        line_chart(
            &Labels { title: "Latency over time (per second)", x: X_TIME, y: "latency (ms)" },
            &latency,
            XAxis::Linear,
            span,
        ),
        "p50 (solid) and p99 (dashed) of the answers that arrived in each second: the 201s (green) and every claim answer (blue). A second without 201s has no green point.",
    );

    let dist: Vec<Series> = r
        .outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| Series {
            name: format!("{} ({})", o.label, o.count),
            points: o.percentiles.iter().map(|[q, ms]| (quantile_x(*q), *ms)).collect(),
            stroke: Stroke::solid(&outcome_color(
                &format!("{}{}", if o.op == "redeem" { "redeem_" } else { "" }, o.outcome),
                i,
            )),
        })
        .collect();
    section(
        h,
        "latency-distribution",
        line_chart(
            &Labels { title: "Latency distribution by outcome", x: "percentile (log scale)", y: "latency (ms)" },
            &dist,
            percentile_axis(),
            None,
        ),
        "The whole run: the latency below which a share of the answers of each outcome fell.",
    );

    let p = &r.persistence;
    let counts = [
        Series {
            name: "claimed (Redis)".into(),
            points: p.iter().map(|s| (s.t_s, s.claimed as f64)).collect(),
            stroke: Stroke { width: 6.0, opacity: 0.35, ..Stroke::solid("#1f77b4") },
        },
        Series {
            name: "persisted (MySQL)".into(),
            points: p.iter().map(|s| (s.t_s, s.persisted as f64)).collect(),
            stroke: Stroke { width: 1.8, dash: Some("6 3"), ..Stroke::solid("#d62728") },
        },
        Series {
            name: "stock left".into(),
            points: p.iter().map(|s| (s.t_s, s.remaining as f64)).collect(),
            stroke: Stroke { width: 1.4, dots: true, ..Stroke::solid("#616161") },
        },
    ];
    section(
        h,
        "claimed-persisted",
        line_chart(
            &Labels { title: "Claimed vs persisted, stock left", x: X_TIME, y: "coupons" },
            &counts,
            XAxis::Linear,
            span,
        ),
        "From the stats endpoint, polled once a second during the load and every 100 ms after it until persisted == claimed. Claimed is the wide pale band, persisted the dashed line on it: where they overlap, the pipeline has caught up.",
    );
    let lag = lag_series(p);
    let lag = [Series {
        name: "oldest unpersisted claim".into(),
        points: lag.iter().map(|l| (l[0], l[2])).collect(),
        stroke: Stroke::solid("#d62728"),
    }];
    section(
        h,
        "persistence-lag",
        line_chart(&Labels { title: "Persistence lag", x: X_TIME, y: "lag (s)" }, &lag, XAxis::Linear, span),
        "How long the oldest claim not yet in MySQL has waited (the moment that claim was made is interpolated between two polls).",
    );
}

fn seconds_table(h: &mut String, r: &Report) {
    let keys = series::keys(&r.seconds);
    let _ = write!(
        h,
        "<section id=\"seconds\"><h2>Per second</h2><p>The same series as the CSV beside the JSON report ({} seconds). Latency in ms, p50 / p99 / max of the answers that arrived in the second.</p><details><summary>show the table</summary><table><tr><th>s</th><th>arrivals</th><th>answers</th>",
        r.seconds.len()
    );
    for k in keys.iter().map(|k| key_label(r, k)).chain(["all claims".to_owned()]) {
        let _ = write!(h, "<th>{}</th>", esc(&k));
    }
    h.push_str("<th>stock left</th><th>claimed</th><th>persisted</th></tr>");
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for s in &r.seconds {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{}</td>", s.second, s.arrivals, s.answers);
        for c in keys.iter().map(|k| s.cell(k)).chain([s.all_claims.as_ref()]) {
            match c {
                Some(c) => {
                    let _ = write!(
                        h,
                        "<td>{} <small>({:.1} / {:.1} / {:.1})</small></td>",
                        c.count, c.p50_ms, c.p99_ms, c.max_ms
                    );
                }
                None => h.push_str("<td>0</td>"),
            }
        }
        let _ = write!(h, "<td>{}</td><td>{}</td><td>{}</td></tr>", opt(s.remaining), opt(s.claimed), opt(s.persisted));
    }
    h.push_str("</table></details></section>");
}

/// The whole report page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let title = format!("flashgrab-loadtest {} {}", r.scenario, r.campaign_id);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    verdicts(&mut h, r);
    summary(&mut h, r);
    charts(&mut h, r);
    seconds_table(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Stats;
    use crate::invariants::Check;
    use crate::persistence::StatsSample;
    use crate::report::OutcomeSummary;
    use crate::series::{Cell, SecondRow};
    use crate::slo;

    #[test]
    fn percentile_axis_is_logarithmic() {
        assert_eq!(quantile_x(0.0), 0.0);
        assert!((quantile_x(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(quantile_x(1.0), 5.0);
    }

    fn cell(key: &str, count: u64, ms: f64) -> Cell {
        Cell { key: key.into(), count, p50_ms: ms, p99_ms: ms * 2.0, max_ms: ms * 3.0 }
    }

    fn report(held: bool, slo: Vec<slo::Verdict>) -> Report {
        Report {
            scenario: "drop",
            started_at: "2026-11-22T00:00:00Z".into(),
            campaign_id: "01J<script>".into(),
            urls: vec!["http://127.0.0.1:8080".into()],
            users: 10,
            stock: 5,
            concurrency: 2,
            rate_per_s: Some(5.0),
            arrivals_profile: Some("burst:10@2s".into()),
            latency_from: "scheduled send time",
            arrivals: 10,
            requests: 11,
            elapsed_s: 2.0,
            throughput_per_s: 5.5,
            granted_per_s: 2.5,
            last_grant_s: Some(0.5),
            first_sold_out_s: Some(0.6),
            abandoned: 0,
            outcomes: vec![OutcomeSummary {
                op: "claim",
                outcome: "granted",
                label: "201 granted".into(),
                count: 5,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 3.0,
                p999_ms: 4.0,
                max_ms: 5.0,
                percentiles: vec![[0.0, 0.5], [0.5, 1.0], [1.0, 5.0]],
            }],
            all: None,
            seconds: vec![
                SecondRow {
                    second: 0,
                    arrivals: 5,
                    answers: 5,
                    outcomes: vec![cell("granted", 5, 1.0)],
                    all_claims: Some(cell("all_claims", 5, 1.0)),
                    remaining: Some(0),
                    claimed: Some(5),
                    persisted: Some(3),
                },
                SecondRow {
                    second: 1,
                    arrivals: 5,
                    answers: 6,
                    outcomes: vec![cell("sold_out", 6, 0.2)],
                    all_claims: Some(cell("all_claims", 6, 0.2)),
                    remaining: Some(0),
                    claimed: Some(5),
                    persisted: Some(5),
                },
            ],
            persistence: vec![
                StatsSample { t_s: 0.2, claimed: 3, persisted: 0, remaining: 2 },
                StatsSample { t_s: 1.2, claimed: 5, persisted: 5, remaining: 0 },
            ],
            persisted_after_s: Some(0.1),
            stats: Some(Stats { total_stock: 5, claimed: 5, persisted: 5, ..Stats::default() }),
            invariants: vec![Check { name: "total_stock", ok: held, detail: "x < y".into() }],
            held,
            targets: Vec::new(),
            slo,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn the_page_is_self_contained_escaped_and_has_every_section() {
        let page = render(&report(true, Vec::new()));
        assert!(page.starts_with("<!doctype html>"));
        assert_eq!(page.matches("<svg").count(), 5);
        assert!(!page.contains("<script"), "the campaign id must be escaped");
        assert!(!page.contains("http-equiv") && !page.contains("src=") && !page.contains("href="));
        assert!(page.contains("Every invariant held.") && page.contains("x &lt; y"));
        let mut at = 0;
        for id in SECTIONS {
            let i = page.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no section {id}"));
            assert!(i > at, "section {id} out of order");
            at = i;
        }
        assert!(page.contains("No thresholds given"));
        // The stacked chart has a bar per outcome and second, named like the summary.
        assert!(
            page.contains("<title>0s: 201 granted 5</title>") && page.contains("<title>1s: sold_out 6</title>"),
            "{page}"
        );
        let broken = render(&report(false, Vec::new()));
        assert!(broken.contains("INVARIANT BROKEN: total_stock"));
        assert!(broken.contains("<tr class=\"fail\">"));
    }

    #[test]
    fn slo_verdicts_come_first() {
        let v = |t: &str, ok: bool| slo::Verdict { threshold: t.into(), ok, detail: "p99 = 12.0 ms".into() };
        let page = render(&report(true, vec![v("p99<50ms", true), v("p99<1us", false)]));
        assert!(page.contains("1 of 2 thresholds FAILED."));
        assert!(page.find("p99&lt;1us").unwrap() < page.find("id=\"summary\"").unwrap());
        assert!(render(&report(true, vec![v("p99<50ms", true)])).contains("All 1 thresholds met."));
    }

    #[test]
    fn outcome_colours_are_fixed_and_distinct_where_it_matters() {
        assert_eq!(outcome_color("granted", 3), outcome_color("redeem_redeemed", 0));
        let main = ["granted", "sold_out", "rate_limited", "unavailable", "timeout", "already_claimed"];
        let colours: std::collections::BTreeSet<String> = main.iter().map(|k| outcome_color(k, 0)).collect();
        assert_eq!(colours.len(), main.len());
    }
}
