//! The result of a benchmark run as data: what was run (command, commit,
//! machine, settings), every run's raw figures, their medians and the
//! ratios. Written as JSON (`result.json` in the run's folder) so that the
//! figures a page quotes can be re-rendered (`bench-markdown`) instead of
//! copied by hand; the human table and the markdown table are both made
//! from [`rows`], so they cannot disagree.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::figures::{Ratios, Series, number, opt_number};

/// Bumped when a field changes meaning (a new optional field does not).
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchResult {
    pub schema: u32,
    /// `--label`: what the run was for (e.g. "smoke: not figures").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where the figures come from when not from a run of this driver
    /// (e.g. transcribed from an older page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub elapsed_s: f64,
    /// The command line, as typed.
    pub command: String,
    /// `git rev-parse --short HEAD` of the measured tree.
    pub commit: String,
    /// The tree had uncommitted changes.
    pub dirty: bool,
    pub machine: Machine,
    pub settings: Settings,
    pub figures: Figures,
    pub ratios: Ratios,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessFigures>,
    /// Runs a compile disturbed and that were kept (marked `*`).
    #[serde(default)]
    pub disturbed: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    #[serde(default)]
    pub redis: String,
    #[serde(default)]
    pub mariadb: String,
    #[serde(default)]
    pub wrk: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub runs: u32,
    pub secs: u32,
    /// wrk connections of the H, C and F runs.
    pub connections: u32,
    /// wrk connections of the E runs.
    pub e_connections: u32,
    pub tokens: u32,
    /// redis-benchmark calls per master, pipelined (unpipelined: a quarter).
    pub redis_n: u32,
    /// `serve --no-relay --no-persist`.
    pub claim_only: bool,
    /// C and D measured with the harness instead of wrk (`--harness`).
    pub harness: bool,
    /// The environment that changes the instance (FLASHGRAB_CLAIM_BATCH,
    /// FLASHGRAB_DURABILITY, ...), as set for the run.
    #[serde(default)]
    pub env: Vec<String>,
}

/// Closed-loop latency at a light load (E): rate and two quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub req_s: Series,
    pub p50_ms: Series,
    pub p99_ms: Series,
}

/// Open-loop latency of the 201s (D, and O of `--harness`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenLoop {
    pub rate_asked: f64,
    pub achieved: Series,
    pub p50_ms: Series,
    pub p90_ms: Series,
    pub p99_ms: Series,
    pub p999_ms: Series,
    pub max_ms: Series,
}

/// Where the CPU went during one C run (cores, of the machine's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSplit {
    /// wrk's CPU over its whole wall time (it builds its requests first).
    pub wrk: f64,
    pub wall_s: f64,
    /// The others over the run itself (wrk's own `secs`).
    pub run_s: f64,
    pub flashgrab: f64,
    pub redis_masters: f64,
    pub redis_replicas: f64,
    pub mariadbd: f64,
    pub rabbitmq: f64,
}

impl CpuSplit {
    pub fn sum(&self) -> f64 {
        self.wrk + self.flashgrab + self.redis_masters + self.redis_replicas + self.mariadbd + self.rabbitmq
    }
}

/// The detail of one C run beside its claims/s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimRun {
    /// 201s: the campaign's `claimed` after the run.
    pub granted: u64,
    pub wrk: super::wrk::Summary,
    pub cpu: CpuSplit,
    /// EVALSHA calls during the run and their mean time inside Redis.
    pub evalsha_calls: u64,
    pub evalsha_us_each: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// R: claim script calls/s, pipelined -P 16 and not.
    pub r_p16: Series,
    pub r_p1: Series,
    /// H: GET /healthz requests/s.
    pub h: Series,
    /// C: claims/s (201 only).
    #[serde(default)]
    pub c: Series,
    /// F: the floor's claims/s.
    #[serde(default)]
    pub f: Series,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_flashgrab: Option<Closed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_floor: Option<Closed>,
    /// D: open loop at C/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<OpenLoop>,
    #[serde(default)]
    pub c_runs: Vec<ClaimRun>,
}

/// One harness measurement repeated (`--harness`): grants/s and the 201s'
/// latency of each run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HarnessSeries {
    pub grants_s: Series,
    pub p50_ms: Series,
    pub p99_ms: Series,
    pub p999_ms: Series,
    pub max_ms: Series,
    /// Invariants broken, per run.
    pub broken: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HarnessFigures {
    /// A1: one instance, closed loop -c64.
    pub a1: HarnessSeries,
    /// A2: two instances.
    pub a2: HarnessSeries,
    /// O50 / O80: open loop at 50 % and 80 % of A1 (rate asked first).
    pub o50_rate: f64,
    pub o50: HarnessSeries,
    pub o80_rate: f64,
    pub o80: HarnessSeries,
    /// X: the drop of a million users (one run).
    pub x: Option<DropRun>,
    pub a1_over_r_p16: Option<f64>,
    pub a1_over_r_p1: Option<f64>,
    pub a1_over_l: Option<f64>,
    pub a2_over_a1: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DropRun {
    pub users: u64,
    pub stock: u64,
    pub requests: u64,
    pub elapsed_s: f64,
    pub req_s: f64,
    pub grants_s: f64,
    pub last_grant_s: Option<f64>,
    pub first_sold_out_s: Option<f64>,
    /// Answers by outcome label.
    pub answers: Vec<(String, u64)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub invariants_held: u64,
    pub invariants_broken: u64,
    /// Peak RSS of the instance: VmHWM and the highest VmRSS sampled (MB).
    pub vm_hwm_mb: f64,
    pub max_rss_mb: f64,
}

impl BenchResult {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let r: Self = serde_json::from_str(&text).with_context(|| format!("{}: not a bench result", path.display()))?;
        anyhow::ensure!(r.schema == SCHEMA, "{}: schema {} (this build reads {SCHEMA})", path.display(), r.schema);
        Ok(r)
    }

    /// `2 x Intel(R) Xeon(R) Processor, 23.5 GiB, kernel 6.18.44`.
    pub fn machine_line(&self) -> String {
        let m = &self.machine;
        let mut s = format!("{} x {}, {:.1} GiB, kernel {}", m.cores, m.cpu_model, m.memory_gib, m.kernel);
        for (name, v) in [("Redis", &m.redis), ("MariaDB", &m.mariadb), ("wrk", &m.wrk)] {
            if !v.is_empty() {
                s.push_str(&format!(", {name} {v}"));
            }
        }
        s
    }

    pub fn commit_line(&self) -> String {
        format!("{}{}", self.commit, if self.dirty { " (+ uncommitted changes)" } else { "" })
    }
}

/// One line of the results: a figure, its value (a median or a ratio) and
/// the runs it came from (empty for derived figures).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub figure: String,
    pub value: String,
    pub runs: String,
}

fn row(figure: impl Into<String>, value: String, runs: String) -> Row {
    Row { figure: figure.into(), value, runs }
}

fn series_row(figure: impl Into<String>, s: &Series, decimals: usize) -> Row {
    let runs: Vec<String> =
        s.runs.iter().map(|r| format!("{}{}", number(r.value, decimals), if r.disturbed { "*" } else { "" })).collect();
    row(figure, opt_number(s.median, decimals), runs.join(" "))
}

fn harness_rows(out: &mut Vec<Row>, label: &str, s: &HarnessSeries) {
    out.push(series_row(format!("{label} grants/s"), &s.grants_s, 0));
    out.push(series_row(format!("{label} 201 p50 (ms)"), &s.p50_ms, 2));
    out.push(series_row(format!("{label} 201 p99 (ms)"), &s.p99_ms, 2));
    out.push(series_row(format!("{label} 201 p99.9 (ms)"), &s.p999_ms, 2));
    out.push(series_row(format!("{label} 201 max (ms)"), &s.max_ms, 2));
    let broken: Vec<String> = s.broken.iter().map(u64::to_string).collect();
    out.push(row(format!("{label} broken invariants"), s.broken.iter().sum::<u64>().to_string(), broken.join(" ")));
}

/// The results table, in the order of the measurements.
pub fn rows(r: &BenchResult) -> Vec<Row> {
    let f = &r.figures;
    let conns = r.settings.connections;
    let mut out = vec![
        series_row("R EVALSHA -P16 (calls/s)", &f.r_p16, 0),
        series_row("R EVALSHA -P1 (calls/s)", &f.r_p1, 0),
        series_row(format!("H GET /healthz, wrk -c{conns} (req/s)"), &f.h, 0),
    ];
    if let Some(h) = &r.harness {
        harness_rows(&mut out, "A1 one instance, closed loop -c64:", &h.a1);
        out.push(row("L = 1/(1/H+1/R-P16) (req/s)", opt_number(r.ratios.l_p16, 0), String::new()));
        out.push(row("A1/R-P16", opt_number(h.a1_over_r_p16, 3), String::new()));
        out.push(row("A1/R-P1", opt_number(h.a1_over_r_p1, 3), String::new()));
        out.push(row("A1/L", opt_number(h.a1_over_l, 3), String::new()));
        harness_rows(&mut out, "A2 two instances, closed loop -c64:", &h.a2);
        out.push(row("A2/A1", opt_number(h.a2_over_a1, 3), String::new()));
        for (pct, rate, s) in [(50, h.o50_rate, &h.o50), (80, h.o80_rate, &h.o80)] {
            out.push(row(format!("O{pct} rate asked (claims/s)"), number(rate, 0), String::new()));
            harness_rows(&mut out, &format!("O{pct} open loop at {pct} % of A1:"), s);
        }
        if let Some(x) = &h.x {
            let users = number(x.users as f64, 0);
            let stock = number(x.stock as f64, 0);
            out.push(row(
                format!("X drop of {users} users on {stock} coupons: req/s, grants/s"),
                format!(
                    "{}, {} ({} requests in {:.2} s)",
                    number(x.req_s, 0),
                    number(x.grants_s, 0),
                    x.requests,
                    x.elapsed_s
                ),
                String::new(),
            ));
            out.push(row(
                "X drop: last 201 / first sold_out (s)",
                format!("{} / {}", opt_number(x.last_grant_s, 2), opt_number(x.first_sold_out_s, 2)),
                String::new(),
            ));
            let answers: Vec<String> = x.answers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(row("X drop: answers", answers.join(" "), String::new()));
            out.push(row(
                "X drop: 201 p50/p99/p99.9/max (ms)",
                format!("{:.2} / {:.2} / {:.2} / {:.2}", x.p50_ms, x.p99_ms, x.p999_ms, x.max_ms),
                String::new(),
            ));
            out.push(row(
                "X drop: invariants",
                format!("{} held, {} broken", x.invariants_held, x.invariants_broken),
                String::new(),
            ));
            out.push(row(
                "X drop: RSS of the instance (MB)",
                format!("VmHWM {:.1}, max VmRSS sampled {:.1} (target <= 200)", x.vm_hwm_mb, x.max_rss_mb),
                String::new(),
            ));
        }
    } else {
        out.push(series_row(format!("C claims/s (201 only, wrk -c{conns})"), &f.c, 0));
        out.push(series_row(format!("F floor claims/s (naive server, wrk -c{conns})"), &f.f, 0));
        for (what, e) in [("flashgrab", &f.e_flashgrab), ("floor", &f.e_floor)] {
            let Some(e) = e else { continue };
            let c = r.settings.e_connections;
            out.push(series_row(format!("E {what} at wrk -c{c}: req/s"), &e.req_s, 0));
            out.push(series_row(format!("E {what} at wrk -c{c}: p50 (ms)"), &e.p50_ms, 2));
            out.push(series_row(format!("E {what} at wrk -c{c}: p99 (ms)"), &e.p99_ms, 2));
        }
        if let Some(d) = &f.d {
            let mut achieved = series_row("D rate asked / achieved (req/s)", &d.achieved, 0);
            achieved.value = format!("{} / {}", number(d.rate_asked, 0), achieved.value);
            out.push(achieved);
            out.push(series_row("D latency p50 (ms)", &d.p50_ms, 2));
            out.push(series_row("D latency p90 (ms)", &d.p90_ms, 2));
            out.push(series_row("D latency p99 (ms)", &d.p99_ms, 2));
            out.push(series_row("D latency p99.9 (ms)", &d.p999_ms, 2));
            out.push(series_row("D latency max (ms)", &d.max_ms, 2));
        }
        let q = &r.ratios;
        for (label, v, decimals) in [
            ("L = 1/(1/H+1/R-P16) (req/s)", q.l_p16, 0),
            ("C/L (R -P16)", q.c_over_l_p16, 2),
            ("L = 1/(1/H+1/R-P1) (req/s)", q.l_p1, 0),
            ("C/L (R -P1)", q.c_over_l_p1, 2),
            ("F/L (R -P16): the floor", q.f_over_l_p16, 2),
            ("C/F: flashgrab against the floor", q.c_over_f, 2),
        ] {
            out.push(row(label, opt_number(v, decimals), String::new()));
        }
    }
    if !r.disturbed.is_empty() {
        out.push(row("disturbed by a compile (kept, *)", r.disturbed.join(", "), String::new()));
    }
    out
}

/// The human table: `figure   value   runs: ...`, one line each.
pub fn text_table(r: &BenchResult) -> String {
    let mut s = String::new();
    for row in rows(r) {
        let runs = if row.runs.is_empty() { String::new() } else { format!("   runs: {}", row.runs) };
        s.push_str(&format!("{:<46} {}{}\n", row.figure, row.value, runs));
    }
    s
}

/// The CPU split of each C run, one line each.
pub fn cpu_lines(r: &BenchResult) -> Vec<String> {
    r.figures
        .c_runs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let u = &c.cpu;
            format!(
                "run {}: {} granted in {:.2} s; cores used: wrk {:.2} (over {:.1} s wall), over the {:.1} s run: \
                 flashgrab {:.2}, redis masters {:.2}, redis replicas {:.2}, mariadbd {:.2}, rabbitmq {:.2}; sum {:.2} of {}; \
                 {} EVALSHA, {:.1} us each inside Redis",
                i + 1,
                c.granted,
                c.wrk.secs,
                u.wrk,
                u.wall_s,
                u.run_s,
                u.flashgrab,
                u.redis_masters,
                u.redis_replicas,
                u.mariadbd,
                u.rabbitmq,
                u.sum(),
                r.machine.cores,
                c.evalsha_calls,
                c.evalsha_us_each
            )
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::figures::Sample;
    use super::*;

    fn s(values: &[f64]) -> Series {
        Series::new(values.iter().map(|&v| Sample { value: v, disturbed: false }).collect())
    }

    /// The 2026-11-30 05:04 UTC run of BENCHMARKS.md (E and D medians only).
    pub(crate) fn sample() -> BenchResult {
        let mut r = BenchResult {
            schema: SCHEMA,
            started_at: "2026-11-30T05:04:05Z".into(),
            elapsed_s: 300.0,
            command: "scripts/bench --claim-only --connections 256 --no-build".into(),
            commit: "7db7c60".into(),
            machine: Machine {
                cores: 2,
                cpu_model: "Intel(R) Xeon(R) Processor".into(),
                memory_gib: 23.5,
                kernel: "6.18.44-fc-v669".into(),
                ..Machine::default()
            },
            settings: Settings {
                runs: 3,
                secs: 10,
                connections: 256,
                e_connections: 8,
                tokens: 600_000,
                redis_n: 200_000,
                claim_only: true,
                ..Settings::default()
            },
            ..BenchResult::default()
        };
        let f = &mut r.figures;
        f.r_p16 = s(&[61_142.0]);
        f.r_p1 = s(&[47_151.0]);
        f.h = s(&[134_530.0]);
        f.c = s(&[34_120.0, 35_336.0, 35_546.0]);
        f.f = s(&[31_470.0, 30_673.0, 30_896.0]);
        f.e_flashgrab = Some(Closed { req_s: s(&[12_826.0]), p50_ms: s(&[0.57]), p99_ms: s(&[2.20]) });
        r.ratios = Ratios::of(f.h.median, f.r_p16.median, f.r_p1.median, f.c.median, f.f.median);
        r
    }

    #[test]
    fn rows_carry_medians_runs_and_ratios() {
        let mut r = sample();
        r.figures.c.runs[2].disturbed = true;
        r.disturbed = vec!["C run 3".into()];
        let rows = rows(&r);
        let get = |name: &str| rows.iter().find(|x| x.figure.starts_with(name)).unwrap().clone();
        assert_eq!(get("C claims/s").value, "35,336");
        assert_eq!(get("C claims/s").runs, "34,120 35,336 35,546*");
        assert_eq!(get("C claims/s").figure, "C claims/s (201 only, wrk -c256)");
        assert_eq!(get("C/L (R -P16)").value, "0.84");
        assert_eq!(get("C/F").value, "1.14");
        assert_eq!(get("E flashgrab at wrk -c8: p99").value, "2.20");
        assert!(rows.iter().all(|x| !x.figure.starts_with("E floor")), "no E of the floor in this result");
        assert_eq!(rows.last().unwrap().value, "C run 3");
        let line = format!("{:<46} 35,336   runs: 34,120 35,336 35,546*\n", "C claims/s (201 only, wrk -c256)");
        assert!(text_table(&r).contains(&line), "{}", text_table(&r));
    }

    #[test]
    fn json_round_trips_and_a_wrong_schema_is_refused() {
        let dir = std::env::temp_dir().join(format!("fg-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("result.json");
        let r = sample();
        r.write(&path).unwrap();
        let back = BenchResult::read(&path).unwrap();
        assert_eq!(back.figures, r.figures);
        assert_eq!(back.ratios, r.ratios);
        assert_eq!(back.command, r.command);
        let text = std::fs::read_to_string(&path).unwrap().replace("\"schema\": 1", "\"schema\": 99");
        std::fs::write(&path, text).unwrap();
        let err = BenchResult::read(&path).unwrap_err().to_string();
        assert!(err.contains("schema 99"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
