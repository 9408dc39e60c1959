//! Inline SVG charts for the HTML report: line charts and stacked bars,
//! written by hand (a handful of charts do not need a plotting crate, and
//! the page must stay one file with no script and no network).
//!
//! Readable at a glance: round ticks with their unit on both axes, the
//! legend in a band of its own above the plot (it never covers data), and
//! series told apart by more than colour (width, dashes, markers), so two
//! lines that overlap (claimed and persisted once the pipeline caught up)
//! are both visible. The y axis starts at 0 and ends on a tick at or above
//! the largest value.

use std::fmt::Write;

/// Width and height of every chart, px.
pub const W: f64 = 820.0;
const PLOT_H: f64 = 250.0;
/// Left margin (y tick labels and the y title), right, below the plot (x
/// tick labels and the x title).
pub const ML: f64 = 78.0;
pub const MR: f64 = 20.0;
const MB: f64 = 46.0;
/// Title band, and one legend row.
const TITLE_H: f64 = 26.0;
const LEGEND_ROW: f64 = 18.0;

pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

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

/// Ticks from 0 to a round value at or above `max` (the y axis).
pub fn y_ticks(max: f64) -> Vec<f64> {
    let max = if max > 0.0 && max.is_finite() { max } else { 1.0 };
    let mut t = nice_ticks(0.0, max, 5);
    if let (Some(a), Some(b)) = (t.first().copied(), t.get(1).copied())
        && t.last().is_some_and(|l| *l < max)
    {
        t.push(a + (b - a) * t.len() as f64);
    }
    t
}

/// A tick label: short, with k / M for thousands and millions.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    let short = |x: f64, suffix: &str| {
        let s = if x.fract().abs() < 1e-9 { format!("{x:.0}") } else { format!("{x:.1}") };
        format!("{s}{suffix}")
    };
    if a >= 1e6 {
        short(v / 1e6, "M")
    } else if a >= 1e4 {
        short(v / 1e3, "k")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_owned()
    }
}

/// How a line is drawn; the legend shows the same stroke.
#[derive(Clone)]
pub struct Stroke {
    pub color: String,
    pub width: f64,
    /// SVG `stroke-dasharray`, e.g. "6 3".
    pub dash: Option<&'static str>,
    pub opacity: f64,
    /// A dot on every point (for sparse series).
    pub dots: bool,
}

impl Stroke {
    pub fn solid(color: &str) -> Self {
        Self { color: color.to_owned(), width: 1.8, dash: None, opacity: 1.0, dots: false }
    }
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub stroke: Stroke,
}

/// How the x axis is labelled.
pub enum XAxis {
    /// Round ticks over the data.
    Linear,
    /// Given positions and labels (the percentile axis).
    Fixed(Vec<(f64, String)>),
}

/// Axis titles, with their units.
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

enum Key<'a> {
    Line(&'a Stroke),
    Box(&'a str),
}

/// Lays legend entries out in rows across the width; their positions and
/// the height of the band. Widths are estimated from the text length.
fn legend_layout(names: &[&str]) -> (Vec<(f64, f64)>, f64) {
    let (mut x, mut row) = (ML, 0usize);
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let w = 28.0 + 6.4 * n.chars().count() as f64;
        if x + w > W - MR && x > ML {
            x = ML;
            row += 1;
        }
        out.push((x, TITLE_H + 12.0 + LEGEND_ROW * row as f64));
        x += w + 14.0;
    }
    let rows = if names.is_empty() { 0 } else { row + 1 };
    (out, LEGEND_ROW * rows as f64 + 6.0)
}

/// The frame of one chart: scales from data to pixels.
pub struct Frame {
    pub x0: f64,
    pub x1: f64,
    pub y1: f64,
    /// Top of the plot area (below the title and the legend).
    pub top: f64,
}

impl Frame {
    pub fn height(&self) -> f64 {
        self.top + PLOT_H + MB
    }
    pub fn px(&self, x: f64) -> f64 {
        ML + (x - self.x0) / (self.x1 - self.x0) * (W - ML - MR)
    }
    pub fn py(&self, y: f64) -> f64 {
        self.top + PLOT_H - y / self.y1 * PLOT_H
    }
}

/// Opens the `<svg>`, draws the title, legend, grid, ticks and axis titles;
/// the caller draws the data and closes it.
fn open(svg: &mut String, l: &Labels, keys: &[(&str, Key)], x: (f64, f64), y_max: f64, x_axis: XAxis) -> Frame {
    let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
    let (pos, band) = legend_layout(&names);
    let yt = y_ticks(y_max);
    let (x0, mut x1) = x;
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let f = Frame { x0, x1, y1: yt.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE), top: TITLE_H + band };
    let h = f.height();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img"><title>{t}</title><text x="{ML}" y="18" class="t">{t}</text>"#,
        t = esc(l.title)
    );
    for ((name, key), (lx, ly)) in keys.iter().zip(&pos) {
        match key {
            Key::Line(s) => {
                let _ = write!(
                    svg,
                    r#"<line x1="{lx}" x2="{}" y1="{y:.1}" y2="{y:.1}" {}/>"#,
                    lx + 22.0,
                    stroke_attrs(s),
                    y = ly - 4.0
                );
            }
            Key::Box(color) => {
                let _ = write!(svg, r#"<rect x="{lx}" y="{:.1}" width="14" height="10" fill="{color}"/>"#, ly - 9.0);
            }
        }
        let _ = write!(svg, r#"<text x="{}" y="{ly:.1}" class="lg">{}</text>"#, lx + 26.0, esc(name));
    }
    let bottom = f.top + PLOT_H;
    for t in &yt {
        let _ = write!(
            svg,
            r#"<line x1="{ML}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="g"/><text x="{}" y="{:.1}" class="yl">{}</text>"#,
            W - MR,
            ML - 6.0,
            f.py(*t) + 4.0,
            fmt_tick(*t),
            y = f.py(*t)
        );
    }
    let x_ticks = match x_axis {
        XAxis::Linear => nice_ticks(x0, x1, 10).into_iter().map(|t| (t, fmt_tick(t))).collect(),
        XAxis::Fixed(t) => t,
    };
    for (t, label) in &x_ticks {
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{bottom}" class="g"/><text x="{x:.1}" y="{}" class="xl">{}</text>"#,
            f.top,
            bottom + 16.0,
            esc(label),
            x = f.px(*t)
        );
    }
    let mid = f.top + PLOT_H / 2.0;
    let _ = write!(
        svg,
        r#"<line x1="{ML}" x2="{ML}" y1="{}" y2="{bottom}" class="a"/><line x1="{ML}" x2="{r}" y1="{bottom}" y2="{bottom}" class="a"/><text x="{}" y="{}" class="xl">{}</text><text x="16" y="{mid}" class="yt" transform="rotate(-90 16 {mid})">{}</text>"#,
        f.top,
        (ML + W - MR) / 2.0,
        h - 8.0,
        esc(l.x),
        esc(l.y),
        r = W - MR
    );
    f
}

fn stroke_attrs(s: &Stroke) -> String {
    let mut a = format!(r#"stroke="{}" stroke-width="{}""#, s.color, s.width);
    if let Some(d) = s.dash {
        let _ = write!(a, r#" stroke-dasharray="{d}""#);
    }
    if s.opacity < 1.0 {
        let _ = write!(a, r#" stroke-opacity="{}""#, s.opacity);
    }
    a
}

fn no_data(svg: &mut String, l: &Labels) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80" viewBox="0 0 {W} 80" role="img"><title>{t}</title><text x="{ML}" y="18" class="t">{t}</text><text x="{ML}" y="50" class="n">no data</text></svg>"#,
        t = esc(l.title)
    );
}

/// A line chart; `x_range` widens the x axis beyond the data (e.g. to the
/// whole run).
pub fn line_chart(l: &Labels, series: &[Series], x_axis: XAxis, x_range: Option<(f64, f64)>) -> String {
    let mut svg = String::new();
    let all = || series.iter().flat_map(|s| s.points.iter());
    if all().next().is_none() {
        no_data(&mut svg, l);
        return svg;
    }
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for (x, y) in all() {
        (x0, x1, y1) = (x0.min(*x), x1.max(*x), y1.max(*y));
    }
    if let XAxis::Fixed(ticks) = &x_axis {
        for (x, _) in ticks {
            (x0, x1) = (x0.min(*x), x1.max(*x));
        }
    }
    if let Some((a, b)) = x_range {
        (x0, x1) = (x0.min(a), x1.max(b));
    }
    let keys: Vec<(&str, Key)> = series.iter().map(|s| (s.name.as_str(), Key::Line(&s.stroke))).collect();
    let f = open(&mut svg, l, &keys, (x0, x1), y1, x_axis);
    for s in series {
        let mut pts = String::new();
        for (x, y) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", f.px(*x), f.py(*y));
        }
        let _ = write!(svg, r#"<polyline fill="none" {} points="{}"/>"#, stroke_attrs(&s.stroke), pts.trim_end());
        if s.stroke.dots {
            for (x, y) in &s.points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{}"/>"#,
                    f.px(*x),
                    f.py(*y),
                    s.stroke.color
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// One layer of a stacked bar chart: a value per bar.
pub struct Layer {
    pub name: String,
    pub color: String,
    pub values: Vec<f64>,
}

/// Stacked bars, bar `i` over `[i, i + 1)` on the x axis, layers bottom
/// up in the given order; `overlay` lines are drawn on top (at `i + 0.5`).
pub fn stacked_bars(l: &Labels, layers: &[Layer], overlay: &[Series]) -> String {
    let mut svg = String::new();
    let n = layers.iter().map(|s| s.values.len()).max().unwrap_or(0);
    if n == 0 {
        no_data(&mut svg, l);
        return svg;
    }
    let totals: Vec<f64> =
        (0..n).map(|i| layers.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0)).sum()).collect();
    let over = overlay.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let y_max = totals.iter().copied().chain(over).fold(0f64, f64::max);
    let mut keys: Vec<(&str, Key)> = layers.iter().map(|s| (s.name.as_str(), Key::Box(s.color.as_str()))).collect();
    keys.extend(overlay.iter().map(|s| (s.name.as_str(), Key::Line(&s.stroke))));
    let f = open(&mut svg, l, &keys, (0.0, n as f64), y_max, XAxis::Linear);
    let bar_w = ((f.px(1.0) - f.px(0.0)) * 0.8).max(0.5);
    for i in 0..n {
        let mut base = 0.0;
        for s in layers {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let (top, bottom) = (f.py(base + v), f.py(base));
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{top:.1}" width="{bar_w:.1}" height="{:.1}" fill="{}"><title>{}s: {} {}</title></rect>"#,
                f.px(i as f64) + (f.px(1.0) - f.px(0.0)) * 0.1,
                (bottom - top).max(0.5),
                s.color,
                i,
                esc(&s.name),
                v
            );
            base += v;
        }
    }
    for s in overlay {
        let mut pts = String::new();
        for (x, y) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", f.px(*x), f.py(*y));
        }
        let _ = write!(svg, r#"<polyline fill="none" {} points="{}"/>"#, stroke_attrs(&s.stroke), pts.trim_end());
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 0.9, 4), vec![0.0, 0.5]);
        assert_eq!(nice_ticks(0.0, 43_000.0, 5), vec![0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0]);
        assert_eq!(nice_ticks(3.0, 3.0, 5).first(), Some(&3.0));
        // The y axis ends on a tick at or above the data.
        assert_eq!(y_ticks(43_000.0).last(), Some(&50_000.0));
        assert_eq!(y_ticks(0.9).last(), Some(&1.0));
        assert_eq!(y_ticks(0.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(y_ticks(f64::NAN).last(), Some(&1.0));
    }

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [0.0, 0.25, 2.5, 150.0, 9_000.0, 40_000.0, 12_500.0, 1_500_000.0, 2e6]
            .iter()
            .map(|v| fmt_tick(*v))
            .collect();
        assert_eq!(labels, ["0", "0.25", "2.5", "150", "9000", "40k", "12.5k", "1.5M", "2M"]);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn lines_scale_into_the_plot_below_the_legend() {
        let s = [Series { name: "a<b".into(), points: vec![(0.0, 0.0), (10.0, 100.0)], stroke: Stroke::solid("#000") }];
        let l = Labels { title: "t", x: "time (s)", y: "latency (ms)" };
        let svg = line_chart(&l, &s, XAxis::Linear, None);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a&lt;b") && svg.contains("time (s)") && svg.contains("latency (ms)"));
        // One legend row: the plot starts below it; the first point at the
        // bottom-left corner, the last at the top right.
        let top = TITLE_H + LEGEND_ROW + 6.0;
        assert!(svg.contains(&format!("points=\"{ML:.1},{:.1} {:.1},{top:.1}\"", top + PLOT_H, W - MR)), "{svg}");
        let empty = line_chart(&l, &[], XAxis::Linear, None);
        assert!(empty.contains("no data") && empty.ends_with("</svg>"));
    }

    #[test]
    fn legends_wrap_into_rows_and_stay_above_the_plot() {
        let names: Vec<String> = (0..12).map(|i| format!("a long series name {i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (pos, band) = legend_layout(&refs);
        assert!(pos.iter().all(|(x, _)| *x >= ML && *x < W - MR));
        let rows = pos.iter().map(|p| p.1.to_bits()).collect::<std::collections::BTreeSet<_>>().len();
        assert!(rows >= 3, "{pos:?}");
        // Every entry's baseline lies inside the band above the plot.
        assert!(pos.iter().all(|(_, y)| *y < TITLE_H + band), "{pos:?} {band}");
        assert_eq!(legend_layout(&[]).0.len(), 0);
    }

    #[test]
    fn stacked_bars_stack_and_the_axis_covers_the_tallest() {
        let layers = [
            Layer { name: "201".into(), color: "#0a0".into(), values: vec![30.0, 0.0] },
            Layer { name: "410".into(), color: "#999".into(), values: vec![10.0, 80.0] },
        ];
        let l = Labels { title: "t", x: "s", y: "n" };
        let svg = stacked_bars(&l, &layers, &[]);
        // Three rects with data (a zero is not drawn), plus two legend boxes.
        assert_eq!(svg.matches("<rect").count(), 5, "{svg}");
        // 80 is the tallest stack; the axis ends at 80 (a round tick).
        assert!(svg.contains(">80</text>"), "{svg}");
        assert!(stacked_bars(&l, &[], &[]).contains("no data"));
    }
}
