//! The front end under floods and outages (issue "Protect the front end"),
//! one file per theme: rate limits, load shedding, hostile input, the
//! in-memory fast paths and their broadcast, the Redis breaker, /metrics.
//!
//! Tests that count Redis commands or stop Redis run against a private
//! 3-master Redis Cluster that the test starts on free ports (see
//! `support::cluster`): INFO commandstats there counts only that test's
//! instances, and freezing it disturbs no other test or developer. The rest
//! use the shared local stack like `tests/api`.

#[path = "../support/mod.rs"]
mod support;

mod breaker;
mod fast_paths;
mod hostile_input;
mod metrics;
mod rate_limits;
mod shedding;

use flashgrab::config::Settings;

use support::app::TestApp;

/// Starts `n` instances sharing one prefix and database, without the claim
/// pipeline, with the test settings adjusted by `tune` (limits, Redis
/// nodes, timeouts).
async fn spawn_tuned(n: usize, tune: impl Fn(&mut Settings) + 'static) -> TestApp {
    TestApp::builder().instances(n).idle_connections(256).configure(tune).start().await
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers().get("retry-after")?.to_str().ok()?.parse().ok()
}
