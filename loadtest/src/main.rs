//! `flashgrab-loadtest`: drives a running flashgrab over HTTP and checks
//! that the numbers add up afterwards.
//!
//! - `drop`: a timed drop: a burst of users (some double-tapping, some
//!   retrying) until sell-out and beyond; by default every arrival in the
//!   first two seconds (open loop), or `--arrivals`, `--rate`,
//!   `--closed-loop`.
//! - `steady`: a fixed arrival rate for a duration (open loop).
//! - `redeem`: claim, then redeem at checkout pace.
//! - `tokens`: writes pre-minted user JWTs to a file, one per line, for other
//!   load generators.
//! - `bench`: the benchmark driver (R, H, C, F, E, D and their ratios: the
//!   claim path against its baselines, with wrk and this harness), writing
//!   a result JSON; `bench-markdown` renders one as BENCHMARKS.md's
//!   "Current figures".
//! - `export`: a drop's requests for wrk and oha (token feed, wrk script,
//!   oha command; `scripts/compare-tools` measures them side by side).
//!
//! Every scenario shows progress every second, prints a latency summary per
//! outcome, writes a JSON report, the per-second series as CSV beside it and
//! an HTML report, checks the invariants through
//! the API (and the database with `--mysql-url`) and exits 1 naming the
//! broken ones (2 for a usage or setup error). `--slo` adds a launch gate
//! (`p99<50ms,errors<0.1%,granted==stock`, see `slo`): exit 3 when a
//! threshold failed and every invariant held.
//!
//! Bounded by construction: a request count, a wall-clock duration and a
//! per-request timeout; the targets must be loopback addresses unless
//! `--allow-remote` is given.
#![forbid(unsafe_code)]

mod api;
mod arrivals;
mod bench;
mod client;
mod db;
mod engine;
mod export;
mod html;
mod invariants;
mod outcome;
mod persistence;
mod report;
mod scenario;
mod series;
mod slo;
mod svg;
mod tokens;

use std::future::Future;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::scenario::Verdict;

/// Load-test harness for flashgrab: scenarios against running instances,
/// latency per outcome, JSON + HTML reports, invariant checks.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A timed drop: create a campaign, wait for its start, then a burst of
    /// users (a share double-tapping, a share retrying) until sell-out and
    /// beyond; check the invariants. Default load: every arrival in the
    /// first 2 s, open loop (--arrivals, --rate or --closed-loop for others). Exit 1 if one broke, 3 if a --slo
    /// threshold failed (2: usage or setup error). --campaign ID uses a
    /// staged campaign instead of creating one.
    Drop(scenario::DropArgs),
    /// A fixed arrival rate (open loop) for a duration, one new user per
    /// arrival; check the invariants. Exit 1 if one broke.
    Steady(scenario::SteadyArgs),
    /// Claim, then redeem each coupon at checkout pace (some users twice,
    /// same order); check claims and redemptions. Exit 1 if one broke.
    Redeem(scenario::RedeemArgs),
    /// Write pre-minted user JWTs to a file, one per line.
    Tokens(tokens::TokensArgs),
    /// Write a drop's requests for other load generators: the token feed,
    /// a wrk script (closed loop or FG_RATE) and an oha command (one user:
    /// oha cannot vary a header per request).
    Export(export::ExportArgs),
    /// The benchmark driver: R, H, C, F, E, D and the ratios in one run
    /// against the local Redis Cluster (scripts/bench builds and runs it).
    /// Prints a table, writes <out>/result.json. See --help.
    #[command(long_about = bench::LONG_ABOUT)]
    Bench(Box<bench::BenchArgs>),
    /// The "Current figures" block of BENCHMARKS.md from a bench result
    /// JSON (printed, or --write PAGE between its marker lines).
    BenchMarkdown(bench::markdown::MarkdownArgs),
}

fn plain(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashgrab-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn on_runtime(threads: usize, f: impl Future<Output = anyhow::Result<Verdict>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(f),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(Verdict::Held) => ExitCode::SUCCESS,
        Ok(Verdict::Broken) => ExitCode::from(1),
        Ok(Verdict::SloFailed) => ExitCode::from(3),
        Err(e) => {
            eprintln!("flashgrab-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Tokens(args) => plain(tokens::run(&args)),
        Command::Export(args) => plain(export::run(&args)),
        Command::BenchMarkdown(args) => plain(bench::markdown::run(&args)),
        Command::Bench(args) => match bench::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flashgrab-loadtest bench: {e:#}");
                ExitCode::from(if e.to_string() == "interrupted" { 130 } else { 1 })
            }
        },
        Command::Drop(a) => on_runtime(a.common.threads, scenario::drop(a)),
        Command::Steady(a) => on_runtime(a.common.threads, scenario::steady(a)),
        Command::Redeem(a) => on_runtime(a.common.threads, scenario::redeem(a)),
    }
}
