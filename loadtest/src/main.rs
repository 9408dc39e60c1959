//! `flashgrab-loadtest`: drives a running flashgrab over HTTP and checks
//! that the numbers add up afterwards.
//!
//! - `drop`: one timed drop. Creates a campaign, pre-mints one JWT per user,
//!   fires claims from a fixed number of workers (closed loop, or open loop
//!   at a fixed rate), shows progress every second, prints a latency summary
//!   per outcome, then checks the invariants through the stats API and exits
//!   1 naming the first broken one.
//! - `tokens`: writes pre-minted user JWTs to a file, one per line, for other
//!   load generators (the wrk run of `scripts/bench`).
//!
//! Bounded by construction: a request count, a wall-clock duration and a
//! per-request timeout; the targets must be loopback addresses unless
//! `--allow-remote` is given.
#![forbid(unsafe_code)]

mod api;
mod client;
mod drop;
mod engine;
mod invariants;
mod outcome;
mod report;
mod tokens;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load-test harness for flashgrab.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one drop: create a campaign, claim from it with many users, check
    /// the invariants.
    Drop(drop::DropArgs),
    /// Write pre-minted user JWTs to a file, one per line.
    Tokens(tokens::TokensArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Tokens(args) => match tokens::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flashgrab-loadtest: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Drop(args) => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build();
            let result = match runtime {
                Ok(rt) => rt.block_on(drop::run(args)),
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(drop::Verdict::Held) => ExitCode::SUCCESS,
                Ok(drop::Verdict::Broken) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("flashgrab-loadtest: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
