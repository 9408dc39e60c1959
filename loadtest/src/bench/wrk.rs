//! wrk, the closed-loop generator of H, C, E and F: its claim script and
//! the parsing of what it prints. wrk stays the generator of these figures
//! (rather than the harness's own client) so that they keep meaning what
//! the earlier figures in BENCHMARKS.md meant.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The wrk claim script: `export`'s (POST /v1/campaigns/$FG_CAMPAIGN/claim,
/// the n-th request with the n-th token of $FG_TOKENS, one user each,
/// built before the run, closed loop without FG_RATE). It has no
/// response() callback: with one, wrk copies every answer's headers and
/// body into Lua tables, which on 2 shared cores took CPU from the server
/// being measured. The 201s are counted from the campaign's stats instead
/// (a fresh campaign per run: claimed == 201s).
pub fn claim_lua(tokens: &Path) -> String {
    crate::export::wrk_lua("/v1/campaigns/bench/claim", &tokens.to_string_lossy())
}

/// The `wrk:` line the claim script prints at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub non2xx: u64,
    pub socket_errors: u64,
    /// Times the script went round its tokens (0: every request a new user).
    pub wrapped: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Summary {
    /// Requests per second over wrk's own run time (all answers).
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 { self.requests as f64 / self.secs } else { 0.0 }
    }

    /// 2xx answers per second (every 2xx of the floor is a 201).
    pub fn ok_rate(&self) -> f64 {
        if self.secs > 0.0 { self.requests.saturating_sub(self.non2xx) as f64 / self.secs } else { 0.0 }
    }

    pub fn line(&self) -> String {
        format!(
            "requests={} non2xx={} socket_errors={} wrapped={} secs={:.3} p50_ms={:.2} p99_ms={:.2}",
            self.requests, self.non2xx, self.socket_errors, self.wrapped, self.secs, self.p50_ms, self.p99_ms
        )
    }
}

/// Finds and parses the `wrk:` line in wrk's output.
pub fn parse_summary(output: &str) -> anyhow::Result<Summary> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("wrk: "))
        .with_context(|| format!("wrk printed no summary: {}", output.trim()))?;
    let mut s = Summary::default();
    for pair in line.split_whitespace() {
        let (k, v) = pair.split_once('=').with_context(|| format!("wrk summary: '{pair}' is not key=value"))?;
        let bad = || format!("wrk summary: {k}={v} is not a number");
        match k {
            "requests" => s.requests = v.parse().with_context(bad)?,
            "non2xx" => s.non2xx = v.parse().with_context(bad)?,
            "socket_errors" => s.socket_errors = v.parse().with_context(bad)?,
            "wrapped" => s.wrapped = v.parse().with_context(bad)?,
            "secs" => s.secs = v.parse().with_context(bad)?,
            "p50_ms" => s.p50_ms = v.parse().with_context(bad)?,
            "p99_ms" => s.p99_ms = v.parse().with_context(bad)?,
            _ => {}
        }
    }
    if s.secs <= 0.0 {
        bail!("wrk summary without a run time: {line}");
    }
    Ok(s)
}

/// `Requests/sec:` and the `Non-2xx or 3xx responses:` count of wrk's
/// standard report (the H runs, without a script).
pub fn parse_plain(output: &str) -> anyhow::Result<(f64, u64)> {
    let rate = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {}", output.trim()))?;
    let non2xx = output
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((rate, non2xx))
}

/// One wrk run: `wrk -t1 -c<conns> -d<secs>s [--timeout 5s -s script] url`
/// with `env`; its output is kept in `out` and returned.
pub fn run(
    conns: u32,
    secs: u32,
    script: Option<&Path>,
    url: &str,
    env: &[(&str, &str)],
    out: &Path,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("wrk");
    cmd.arg("-t1").arg(format!("-c{conns}")).arg(format!("-d{secs}s"));
    if let Some(s) = script {
        cmd.args(["--timeout", "5s", "-s"]).arg(s);
    }
    cmd.arg(url).envs(env.iter().copied()).stdin(Stdio::null()).stderr(Stdio::inherit());
    let output = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    if !output.status.success() {
        bail!("wrk exited {}: {}", output.status, text.trim());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_scripts_summary_line_is_parsed() {
        let out = "Running 10s test @ http://127.0.0.1:8090\n  1 threads and 256 connections\n\
                   wrk: requests=351234 non2xx=12 socket_errors=0 wrapped=0 secs=10.004 p50_ms=6.81 p99_ms=21.40\n";
        let s = parse_summary(out).unwrap();
        assert_eq!(s.requests, 351_234);
        assert_eq!(s.non2xx, 12);
        assert_eq!(s.wrapped, 0);
        assert_eq!(s.p99_ms, 21.40);
        assert_eq!(format!("{:.0}", s.ok_rate()), "35108");
        assert_eq!(format!("{:.0}", s.rate()), "35109");
        assert_eq!(parse_summary(&format!("wrk: {}", s.line())).unwrap(), s);
        assert!(parse_summary("Running 10s test\n").is_err());
        assert!(parse_summary("wrk: requests=x secs=1").is_err());
        assert!(parse_summary("wrk: requests=5 secs=0.000").is_err());
    }

    #[test]
    fn the_plain_report_gives_rate_and_non_2xx() {
        let out = "Running 10s test @ http://127.0.0.1:8090/healthz\n  Latency   1.2ms\n\
                   1345301 requests in 10.00s, 120.61MB read\nRequests/sec: 134530.12\nTransfer/sec:     12.06MB\n";
        assert_eq!(parse_plain(out).unwrap(), (134_530.12, 0));
        let bad = format!("{out}  Non-2xx or 3xx responses: 17\n");
        assert_eq!(parse_plain(&bad).unwrap(), (134_530.12, 17));
        assert!(parse_plain("nothing").is_err());
    }
}
