//! The Redis breaker: with the private cluster frozen, claims fail fast;
//! when it is back the breaker closes by itself.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::spawn_tuned;
use crate::support::app::*;
use crate::support::cluster::PrivateCluster;
use crate::support::metrics::{metric, scrape as metrics};

/// With the Redis Cluster frozen (every node SIGSTOPped: connections hang,
/// the worst case), the breaker opens after a few timeouts and claims are
/// answered 503 at once; when Redis comes back the breaker closes by itself
/// and claims are granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_fail_fast_while_redis_is_down_and_recover() {
    let cluster = PrivateCluster::start().await;
    let nodes = cluster.nodes();
    let app = spawn_tuned(1, move |s| {
        s.redis_nodes = nodes.clone();
        s.redis_timeout = Duration::from_millis(300);
        s.protect.breaker_failures = 3;
        s.protect.breaker_open = Duration::from_millis(500);
    })
    .await;
    let id = app.create_campaign(campaign_body(1000)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.claim(&id, "before").await.0, StatusCode::CREATED);

    cluster.signal_all("-STOP");
    // Claims that waited for the timeout reached a frozen node (which runs
    // them when it wakes up); counted to bound `claimed` below.
    let mut reached_redis = 0;
    // The first few wait for the Redis timeout and open the breakers (one
    // per master: each opens after 3 of its own timeouts)...
    for i in 0..3 {
        let t = Instant::now();
        let got = app.claim(&id, &format!("opening-{i}")).await;
        assert_error(&got, 503, "unavailable");
        reached_redis += usize::from(t.elapsed() >= Duration::from_millis(250));
    }
    // ...then claims are refused at once (but for the rest of the
    // openings and a probe now and then).
    let started = Instant::now();
    for i in 0..50 {
        let t = Instant::now();
        let got = app.claim(&id, &format!("down-{i}")).await;
        assert_error(&got, 503, "unavailable");
        reached_redis += usize::from(t.elapsed() >= Duration::from_millis(250));
    }
    let per_claim = started.elapsed() / 50;
    assert!(per_claim < Duration::from_millis(100), "503 at once while open: {per_claim:?} per claim");
    let m = metrics(&app, 0).await;
    assert!(metric(&m, "flashgrab_redis_breaker_opened_total") >= 1.0, "{m}");
    assert!(metric(&m, "flashgrab_redis_breaker_rejected_total") >= 40.0, "{m}");
    assert_ne!(metric(&m, "flashgrab_redis_breaker_state"), 0.0, "{m}");

    cluster.signal_all("-CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let got = app.claim(&id, &format!("after-{n}")).await;
        if got.0 == StatusCode::CREATED {
            break;
        }
        assert_error(&got, 503, "unavailable");
        assert!(Instant::now() < deadline, "claims never recovered after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        assert_eq!(app.claim(&id, &format!("recovered-{i}")).await.0, StatusCode::CREATED);
    }
    let m = metrics(&app, 0).await;
    assert_eq!(metric(&m, "flashgrab_redis_breaker_state"), 0.0, "closed again: {m}");
    // 12 answered 201. The claims that timed out while opening the
    // breakers (and the failed probes) were sent to a frozen node: it ran
    // them when it woke up. A 503 means "maybe granted" (API.md); it is
    // never a 201 that was not.
    let claimed = app.stats(&id).await["claimed"].as_u64().unwrap();
    assert!((12..=12 + reached_redis as u64).contains(&claimed), "{claimed} claimed, {reached_redis} timed out");
}
