//! The harness's own runs inside a benchmark: D of the wrk mode, and
//! `--harness`, where the claim path is measured with flashgrab-loadtest
//! instead of wrk, next to R and H of the same run:
//!
//! - A1: claims/s of one instance: `drop` closed loop, 64 connections,
//!   stock that never runs out, no double taps or retries; A1/R and A1/L.
//! - A2: the same spread over two instances (a second serve on PORT+1).
//! - O50, O80: latency at 50 % and 80 % of A1: `steady` open loop (latency
//!   from the scheduled send time), 128 connections.
//! - X: a closed-loop drop of --drop-users users on --drop-stock coupons on
//!   a freshly started instance (double taps and retries at the harness's
//!   defaults): time to sell out, answers, invariants (API and database),
//!   and the instance's peak RSS (VmHWM, and VmRSS sampled every 0.2 s).
//!
//! Each run's figures are read from its JSON report (kept as
//! `<out>/lt.<name>.json`, with its HTML and its printed summary), not
//! scraped from the text.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::figures::{Sample, ratio};
use super::result::{DropRun, HarnessFigures, HarnessSeries};
use super::{ADMIN_TOKEN, Bench, Figures, HUGE_STOCK, JWT_SECRET, Watched, log, procs, warn};

/// What one harness report says about the claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportFigures {
    pub requests: u64,
    pub elapsed_s: f64,
    pub req_s: f64,
    pub grants_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub last_grant_s: Option<f64>,
    pub first_sold_out_s: Option<f64>,
    pub answers: Vec<(String, u64)>,
    pub held: u64,
    pub broken: u64,
}

/// The figures of a harness JSON report (`report::Report`).
pub fn parse_report(v: &Value) -> anyhow::Result<ReportFigures> {
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let outcomes = v.get("outcomes").and_then(Value::as_array).context("report without outcomes")?;
    let granted = outcomes.iter().find(|o| o.get("label").and_then(Value::as_str) == Some("201 granted"));
    let q = |k: &str| granted.and_then(|g| g.get(k)).and_then(Value::as_f64).unwrap_or(0.0);
    let answers = outcomes
        .iter()
        .filter(|o| o.get("op").and_then(Value::as_str) == Some("claim"))
        .filter_map(|o| Some((o.get("label")?.as_str()?.to_owned(), o.get("count")?.as_u64()?)))
        .collect();
    let checks = v.get("invariants").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let ok = checks.iter().filter(|c| c.get("ok").and_then(Value::as_bool) == Some(true)).count() as u64;
    Ok(ReportFigures {
        requests: v.get("requests").and_then(Value::as_u64).unwrap_or(0),
        elapsed_s: num("elapsed_s").unwrap_or(0.0),
        req_s: num("throughput_per_s").context("report without throughput_per_s")?,
        grants_s: num("granted_per_s").unwrap_or(0.0),
        p50_ms: q("p50_ms"),
        p90_ms: q("p90_ms"),
        p99_ms: q("p99_ms"),
        p999_ms: q("p999_ms"),
        max_ms: q("max_ms"),
        last_grant_s: num("last_grant_s"),
        first_sold_out_s: num("first_sold_out_s"),
        answers,
        held: ok,
        broken: checks.len() as u64 - ok,
    })
}

pub fn read_report(path: &Path) -> anyhow::Result<ReportFigures> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    parse_report(&v).with_context(|| path.display().to_string())
}

/// Runs `cmd` with its output in `<out>/<name>.txt` and `.err`; its exit
/// code (2, a usage or setup error, is an error here).
pub fn run_logged(mut cmd: Command, out: &Path, name: &str) -> anyhow::Result<i32> {
    let txt = std::fs::File::create(out.join(format!("{name}.txt")))?;
    let err_path = out.join(format!("{name}.err"));
    let err = std::fs::File::create(&err_path)?;
    let status = cmd.stdin(Stdio::null()).stdout(txt).stderr(err).status().context("running flashgrab-loadtest")?;
    let rc = status.code().unwrap_or(-1);
    if rc == 2 {
        bail!("flashgrab-loadtest {name}: {}", super::tail(&err_path, 3));
    }
    Ok(rc)
}

impl Bench {
    /// One harness run (`lt.<name>.*`); its figures.
    fn lt(&mut self, name: &str, args: &[String]) -> anyhow::Result<Watched<ReportFigures>> {
        let json = self.out.join(format!("lt.{name}.json"));
        let mut cmd = Command::new(&self.loadtest);
        cmd.args(args).env("FLASHGRAB_ADMIN_TOKEN", ADMIN_TOKEN).env("FLASHGRAB_USER_JWT_SECRET", JWT_SECRET);
        if self.a.claim_only {
            cmd.arg("--no-persist-check");
        } else {
            cmd.arg("--mysql-url").arg(self.mysql_url());
        }
        cmd.arg("--json").arg(&json).arg("--html").arg(self.out.join(format!("lt.{name}.html")));
        let w = procs::Watch::start();
        let rc = run_logged(cmd, &self.out, &format!("lt.{name}"));
        let disturbed = w.stop();
        let rc = rc?;
        let r = read_report(&json)?;
        if rc != 0 {
            warn(&format!("{name}: {} invariants broken (see {})", r.broken, json.display()));
        }
        log(&format!(
            "    {name}: {:.0} req/s, {:.0} grants/s, 201 p50 {} p90 {} p99 {} p99.9 {} max {} ms; {} invariants broken",
            r.req_s, r.grants_s, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.broken
        ));
        Ok((r, disturbed))
    }

    fn a_run(&mut self, name: &str, urls: &[String]) -> anyhow::Result<Watched<ReportFigures>> {
        let users = (20_000 * self.a.secs).to_string();
        let mut args = vec!["drop".to_owned()];
        for u in urls {
            args.extend(["--url".to_owned(), u.clone()]);
        }
        let rest = ["--users", &users, "--requests", &users, "--stock", &HUGE_STOCK.to_string(), "--closed-loop"];
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        let rest = ["--duration", &self.a.secs.to_string(), "--concurrency", "64", "--double-tap", "0"];
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args.extend(["--retry-share", "0", "--start-in", "0"].map(str::to_owned));
        self.lt(name, &args)
    }

    fn harness_series(
        &mut self,
        label: &str,
        mut f: impl FnMut(&mut Self, u32) -> anyhow::Result<Watched<ReportFigures>>,
    ) -> anyhow::Result<HarnessSeries> {
        let runs = self.series(label, |b, i| f(b, i))?;
        Ok(summarise(&runs))
    }
}

/// The series of grants/s and 201 latency of repeated runs.
pub fn summarise(runs: &[Watched<ReportFigures>]) -> HarnessSeries {
    let mut s = HarnessSeries::default();
    for (r, d) in runs {
        let x = |value| Sample { value, disturbed: *d };
        s.grants_s.push(x(r.grants_s.round()));
        s.p50_ms.push(x(r.p50_ms));
        s.p99_ms.push(x(r.p99_ms));
        s.p999_ms.push(x(r.p999_ms));
        s.max_ms.push(x(r.max_ms));
        s.broken.push(r.broken);
    }
    s
}

/// A1, A2, O50, O80 and X (R and H are in `fig` already).
pub(super) fn run(b: &mut Bench, fig: &Figures) -> anyhow::Result<HarnessFigures> {
    let secs = b.a.secs;
    let base = b.base.clone();
    let a1 = b.harness_series(&format!("A1 (drop closed loop -c64 on one instance, {secs}s)"), |b, i| {
        b.a_run(&format!("a1.{i}"), std::slice::from_ref(&base))
    })?;
    let mut h = HarnessFigures { a1, ..HarnessFigures::default() };
    let a1 = h.a1.grants_s.median;
    let l = fig.h.median.zip(fig.r_p16.median).and_then(|(h, r)| super::figures::l_of(h, r)).map(f64::round);
    h.a1_over_r_p16 = ratio(a1, fig.r_p16.median);
    h.a1_over_r_p1 = ratio(a1, fig.r_p1.median);
    h.a1_over_l = ratio(a1, l);

    let port2 = b.a.port.wrapping_add(1);
    let base2 = format!("http://127.0.0.1:{port2}");
    log(&format!("starting a second instance on {base2}"));
    let second = b.start_instance(port2, &b.out.join("serve2.log"), false)?;
    b.extra.push(second);
    let urls = [base.clone(), base2];
    h.a2 = b.harness_series(&format!("A2 (drop closed loop -c64 over two instances, {secs}s)"), |b, i| {
        b.a_run(&format!("a2.{i}"), &urls)
    })?;
    b.extra.clear();
    h.a2_over_a1 = ratio(h.a2.grants_s.median, a1);

    for pct in [50u64, 80] {
        let rate = (a1.unwrap_or(0.0) as u64) * pct / 100;
        let label = format!("O{pct} (steady open loop at {rate} claims/s, {pct} % of A1, -c128, {secs}s)");
        let s = b.harness_series(&label, |b, i| {
            let args = ["steady", "--url", &base, "--rate", &rate.to_string(), "--duration", &secs.to_string()];
            let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
            args.extend(["--concurrency", "128"].map(str::to_owned));
            b.lt(&format!("o{pct}.{i}"), &args)
        })?;
        if pct == 50 {
            (h.o50_rate, h.o50) = (rate as f64, s);
        } else {
            (h.o80_rate, h.o80) = (rate as f64, s);
        }
    }

    // A fresh instance, so that its VmHWM is the drop's.
    log("restarting the instance for the drop (fresh process for its peak RSS)");
    if let Some(mut s) = b.serve.take() {
        s.stop();
    }
    b.serve = Some(b.start_instance(b.a.port, &b.out.join("serve-drop.log"), false)?);
    let (users, stock) = (b.a.drop_users, b.a.drop_stock);
    log(&format!("X: drop of {users} users on {stock} coupons (1 run)"));
    let pid = b.serve_pid();
    let (x, _) = b.measured("X drop", |b| {
        let stop = Arc::new(AtomicBool::new(false));
        let max_rss = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, max_rss) = (stop.clone(), max_rss.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = procs::vm_kb(pid, "VmRSS") {
                        max_rss.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let args = ["drop", "--url", &base, "--users", &users.to_string(), "--requests", &users.to_string()];
        let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let rest = ["--stock", &stock.to_string(), "--closed-loop", "--duration", "600", "--concurrency", "64"];
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        let r = b.lt("drop-x", &args);
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let (r, d) = r?;
        let kb = |v: u64| (v as f64 / 1024.0 * 10.0).round() / 10.0;
        let x = DropRun {
            users: u64::from(users),
            stock,
            requests: r.requests,
            elapsed_s: r.elapsed_s,
            req_s: r.req_s.round(),
            grants_s: r.grants_s.round(),
            last_grant_s: r.last_grant_s,
            first_sold_out_s: r.first_sold_out_s,
            answers: r.answers,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            p999_ms: r.p999_ms,
            max_ms: r.max_ms,
            invariants_held: r.held,
            invariants_broken: r.broken,
            vm_hwm_mb: kb(procs::vm_kb(pid, "VmHWM").unwrap_or(0)),
            max_rss_mb: kb(max_rss.load(Ordering::Relaxed)),
        };
        Ok((x, d))
    })?;
    h.x = Some(x);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_a_harness_report() {
        let report = serde_json::json!({
            "requests": 20000, "elapsed_s": 2.5, "throughput_per_s": 8000.4, "granted_per_s": 399.6,
            "last_grant_s": 0.4, "first_sold_out_s": null,
            "outcomes": [
                {"op": "claim", "label": "201 granted", "count": 1000, "p50_ms": 1.5, "p90_ms": 3.0, "p99_ms": 9.25, "p999_ms": 12.0, "max_ms": 20.0},
                {"op": "claim", "label": "410 sold_out", "count": 19000, "p50_ms": 0.5, "p90_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0, "max_ms": 4.0},
                {"op": "redeem", "label": "200 redeemed", "count": 5, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "p999_ms": 1.0, "max_ms": 1.0}
            ],
            "invariants": [{"name": "a", "ok": true, "detail": ""}, {"name": "b", "ok": false, "detail": "x"}]
        });
        let r = parse_report(&report).unwrap();
        assert_eq!(r.req_s, 8000.4);
        assert_eq!(r.p99_ms, 9.25);
        assert_eq!(r.first_sold_out_s, None);
        assert_eq!(r.answers, vec![("201 granted".to_owned(), 1000), ("410 sold_out".to_owned(), 19000)]);
        assert_eq!((r.held, r.broken), (1, 1));
        assert!(parse_report(&serde_json::json!({"throughput_per_s": 1.0})).is_err());
        let s = summarise(&[(r.clone(), false), (r, true)]);
        assert_eq!(s.grants_s.median, Some(400.0));
        assert_eq!(s.broken, vec![1, 1]);
        assert!(s.p99_ms.runs[1].disturbed);
    }
}
