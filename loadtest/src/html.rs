//! The HTML report: one self-contained file (inline CSS and SVG, no script,
//! no external resource) rendered from the same [`Report`] as the JSON.
//!
//! Plots: latency distribution per outcome (percentile on a log scale, as
//! HdrHistogram plots do), requests / grants / errors per second over time,
//! claimed vs persisted over time, and the persistence lag over time. The
//! SVG is written by hand: four line charts do not need a plotting crate.

use std::fmt::Write;

use crate::persistence::lag_series;
use crate::report::Report;

const W: f64 = 760.0;
const H: f64 = 300.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 34.0;
const MB: f64 = 44.0;

const COLORS: [&str; 8] = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// About `n` round tick values (1, 2 or 5 times a power of ten) covering
/// `[lo, hi]`.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    (0..100)
        .map(|k| (first + k as f64) * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .map(|t| if t.abs() < step * 1e-9 { 0.0 } else { t })
        .collect()
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_owned()
    }
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is labelled.
pub enum XAxis {
    /// Round ticks over the data.
    Linear,
    /// Given positions and labels (the percentile axis).
    Fixed(Vec<(f64, String)>),
}

/// One line chart as an inline `<svg>`; y starts at 0.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], x_axis: XAxis) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><title>{t}</title><text x="{ML}" y="18" class="t">{t}</text>"#,
        t = esc(title)
    );
    if all().next().is_none() {
        let _ = write!(svg, r#"<text x="{}" y="{}" class="n">no data</text></svg>"#, W / 2.0 - 30.0, H / 2.0);
        return svg;
    }
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for (x, y) in all() {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if let XAxis::Fixed(ticks) = &x_axis {
        for (x, _) in ticks {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
        }
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let mut y_ticks = nice_ticks(0.0, if y1 > 0.0 { y1 } else { 1.0 }, 5);
    // One more grid line above the data when the last one is below it.
    if let (Some(a), Some(b)) = (y_ticks.first().copied(), y_ticks.get(1).copied())
        && y_ticks.last().is_some_and(|t| *t < y1)
    {
        y_ticks.push(a + (b - a) * y_ticks.len() as f64);
    }
    let y1 = y_ticks.last().copied().unwrap_or(1.0).max(y1).max(f64::MIN_POSITIVE);
    let px = |x: f64| ML + (x - x0) / (x1 - x0) * (W - ML - MR);
    let py = |y: f64| H - MB - y / y1 * (H - MT - MB);
    for t in &y_ticks {
        let _ = write!(
            svg,
            r#"<line x1="{ML}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="g"/><text x="{}" y="{:.1}" class="yl">{}</text>"#,
            W - MR,
            ML - 6.0,
            py(*t) + 4.0,
            fmt_num(*t),
            y = py(*t)
        );
    }
    let x_ticks = match x_axis {
        XAxis::Linear => nice_ticks(x0, x1, 8).into_iter().map(|t| (t, fmt_num(t))).collect(),
        XAxis::Fixed(t) => t,
    };
    for (t, label) in &x_ticks {
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{MT}" y2="{}" class="g"/><text x="{x:.1}" y="{}" class="xl">{}</text>"#,
            H - MB,
            H - MB + 16.0,
            esc(label),
            x = px(*t)
        );
    }
    let _ = write!(
        svg,
        r#"<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{b}" class="a"/><line x1="{ML}" x2="{r}" y1="{b}" y2="{b}" class="a"/><text x="{}" y="{}" class="xl">{}</text><text x="14" y="{}" class="yt" transform="rotate(-90 14 {})">{}</text>"#,
        (ML + W - MR) / 2.0,
        H - 8.0,
        esc(x_label),
        H / 2.0,
        H / 2.0,
        esc(y_label),
        b = H - MB,
        r = W - MR
    );
    let _ = write!(
        svg,
        r#"<rect x="{}" y="{}" width="196" height="{}" fill="white" fill-opacity="0.85"/>"#,
        W - MR - 194.0,
        MT - 8.0,
        15.0 * series.len() as f64 + 4.0
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        for (x, y) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", px(*x), py(*y));
        }
        let _ =
            write!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#, pts.trim_end());
        let lx = W - MR - 190.0;
        let ly = MT + 4.0 + 15.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="3" fill="{color}"/><text x="{}" y="{:.1}" class="lg">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            ly,
            esc(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

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

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:980px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}tr.fail td{background:#fdd}tr.ok td:first-child{color:#070}\
.verdict{font-size:18px;font-weight:bold}.bad{color:#b00}.good{color:#070}\
svg{display:block;margin:6px 0 18px;border:1px solid #eee}svg .t{font-weight:bold;font-size:13px}\
svg .g{stroke:#eee}svg .a{stroke:#444}svg text{font-size:11px;fill:#333}svg .yl{text-anchor:end}\
svg .xl{text-anchor:middle}svg .yt{text-anchor:middle}svg .n{fill:#999}";

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
    let _ = write!(
        h,
        "<p class=\"verdict {}\">{}</p>",
        if r.held { "good" } else { "bad" },
        if r.held {
            "Every invariant held.".to_owned()
        } else {
            let broken: Vec<&str> = r.invariants.iter().filter(|c| !c.ok).map(|c| c.name).collect();
            format!("INVARIANT BROKEN: {}", esc(&broken.join(", ")))
        }
    );
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s"));
    let rows: Vec<(&str, String)> = vec![
        ("started (UTC)", r.started_at.clone()),
        ("targets", r.urls.join(" ")),
        ("users / stock", format!("{} / {}", r.users, r.stock)),
        (
            "load",
            match r.rate_per_s {
                Some(rate) => format!("open loop, {rate:.0} arrivals/s asked, {} workers", r.concurrency),
                None => format!("closed loop, {} connections", r.concurrency),
            },
        ),
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
    h.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    if let Some(s) = &r.stats {
        let _ = write!(
            h,
            "<tr><th>store</th><td>total_stock {} remaining {} claimed {} persisted {} redeemed {}</td></tr>",
            s.total_stock, s.remaining, s.claimed, s.persisted, s.redeemed
        );
    }
    h.push_str("</table><h2>Latency by outcome (ms)</h2><table><tr><th>outcome</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
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
    h.push_str("</table><h2>Invariants</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>");
    for c in &r.invariants {
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            if c.ok { "ok" } else { "fail" },
            esc(c.name),
            if c.ok { "ok" } else { "FAIL" },
            esc(&c.detail)
        );
    }
    h.push_str("</table><h2>Plots</h2>");

    let latency: Vec<Series> = r
        .outcomes
        .iter()
        .map(|o| Series {
            name: format!("{} ({})", o.label, o.count),
            points: o.percentiles.iter().map(|[q, ms]| (quantile_x(*q), *ms)).collect(),
        })
        .collect();
    h.push_str(&line_chart("Latency distribution", "percentile", "ms", &latency, percentile_axis()));

    let per_second = |name: &str, f: &dyn Fn(&crate::engine::Second) -> u64| Series {
        name: name.to_owned(),
        points: r.timeline.iter().enumerate().map(|(i, s)| (i as f64 + 0.5, f(s) as f64)).collect(),
    };
    let mut rates = vec![per_second("requests/s", &|s| s.requests), per_second("201 granted/s", &|s| s.granted)];
    if r.timeline.iter().any(|s| s.redeemed > 0) {
        rates.push(per_second("200 redeemed/s", &|s| s.redeemed));
    }
    rates.push(per_second("errors/s", &|s| s.errors));
    h.push_str(&line_chart(
        "Requests and grants per second",
        "seconds since start",
        "per second",
        &rates,
        XAxis::Linear,
    ));

    let p = &r.persistence;
    let counts = [
        Series { name: "claimed (Redis)".into(), points: p.iter().map(|s| (s.t_s, s.claimed as f64)).collect() },
        Series { name: "persisted (MySQL)".into(), points: p.iter().map(|s| (s.t_s, s.persisted as f64)).collect() },
    ];
    h.push_str(&line_chart("Claimed vs persisted", "seconds since start", "coupons", &counts, XAxis::Linear));
    let lag = lag_series(p);
    let lag = [Series { name: "oldest unpersisted claim".into(), points: lag.iter().map(|l| (l[0], l[2])).collect() }];
    h.push_str(&line_chart("Persistence lag", "seconds since start", "seconds", &lag, XAxis::Linear));
    h.push_str("<p>Lag: how long the oldest claim not yet in MySQL has waited, from the stats endpoint polled during the run (the moment that claim was made is interpolated between two polls).</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Stats;
    use crate::engine::Second;
    use crate::invariants::Check;
    use crate::persistence::StatsSample;
    use crate::report::OutcomeSummary;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 0.9, 4), vec![0.0, 0.5]);
        assert_eq!(nice_ticks(0.0, 0.9, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8]);
        assert_eq!(nice_ticks(0.0, 43_000.0, 5), vec![0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0]);
        assert_eq!(nice_ticks(3.0, 3.0, 5).first(), Some(&3.0));
    }

    #[test]
    fn percentile_axis_is_logarithmic() {
        assert_eq!(quantile_x(0.0), 0.0);
        assert!((quantile_x(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(quantile_x(1.0), 5.0);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn charts_scale_into_the_frame_and_survive_no_data() {
        let s = [Series { name: "a<b".into(), points: vec![(0.0, 0.0), (10.0, 100.0)] }];
        let svg = line_chart("t", "x", "y", &s, XAxis::Linear);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a&lt;b"));
        // The first point at the bottom-left corner, the last at the top right.
        assert!(svg.contains(&format!("points=\"{ML:.1},{:.1} {:.1},{MT:.1}\"", H - MB, W - MR)), "{svg}");
        assert!(line_chart("t", "x", "y", &[], XAxis::Linear).contains("no data"));
    }

    fn report(held: bool) -> Report {
        Report {
            scenario: "drop",
            started_at: "2026-11-22T00:00:00Z".into(),
            campaign_id: "01J<script>".into(),
            urls: vec!["http://127.0.0.1:8080".into()],
            users: 10,
            stock: 5,
            concurrency: 2,
            rate_per_s: None,
            latency_from: "actual send time (closed loop)",
            arrivals: 10,
            requests: 11,
            elapsed_s: 1.0,
            throughput_per_s: 11.0,
            granted_per_s: 5.0,
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
            timeline: vec![Second { requests: 11, granted: 5, redeemed: 0, errors: 0 }],
            persistence: vec![
                StatsSample { t_s: 0.2, claimed: 3, persisted: 0, remaining: 2 },
                StatsSample { t_s: 1.2, claimed: 5, persisted: 5, remaining: 0 },
            ],
            persisted_after_s: Some(0.1),
            stats: Some(Stats { total_stock: 5, claimed: 5, persisted: 5, ..Stats::default() }),
            invariants: vec![Check { name: "total_stock", ok: held, detail: "x < y".into() }],
            held,
            targets: Vec::new(),
            slo: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let page = render(&report(true));
        assert!(page.starts_with("<!doctype html>"));
        assert_eq!(page.matches("<svg").count(), 4);
        assert!(!page.contains("<script"), "the campaign id must be escaped");
        assert!(!page.contains("http-equiv") && !page.contains("src="));
        assert!(page.contains("Every invariant held."));
        assert!(page.contains("x &lt; y"));
        let broken = render(&report(false));
        assert!(broken.contains("INVARIANT BROKEN: total_stock"));
        assert!(broken.contains("<tr class=\"fail\">"));
    }
}
