//! The in-memory fast paths (sold out, not started, ended, closed) and the
//! notices that carry them to every instance, counted on a private Redis
//! Cluster: not a single script call.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::spawn_tuned;
use crate::support::app::*;
use crate::support::cluster::PrivateCluster;
use crate::support::metrics::{claims_of, scrape as metrics};
use crate::support::wait::wait_until;

/// Once one instance saw the campaign sold out, every instance answers
/// 410 from memory: a flood on both never reaches Redis (not a single
/// script call). A close on one instance reaches the others the same way.
/// Before the start and after the end, claims are answered from memory
/// too. A keyed retry still reaches Redis and gets its coupon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_paths_and_the_sold_out_broadcast_never_touch_redis() {
    let cluster = PrivateCluster::start().await;
    let nodes = cluster.nodes();
    // A long cache TTL: an instance would keep its open copy of a closed
    // campaign for an hour but for the close notice.
    let app = spawn_tuned(2, move |s| {
        s.redis_nodes = nodes.clone();
        s.campaign_cache_ttl = Duration::from_secs(3600);
    })
    .await;

    // Sold out, seen by instance 0 only.
    let mut body = campaign_body(5);
    body["shards"] = json!(3);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let kept = app.claim_on(0, &id, "keeper", Some("k-1")).await;
    assert_eq!(kept.0, StatusCode::CREATED);
    for i in 0..4 {
        assert_eq!(app.claim_on(0, &id, &format!("early-{i}"), None).await.0, StatusCode::CREATED);
    }
    // A campaign instance 1 knows (cached, open), then closed on instance 0.
    let closing = app.create_campaign(campaign_body(100)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.claim_on(1, &closing, "before-close", None).await.0, StatusCode::CREATED);
    assert_error(&app.claim_on(0, &id, "first-to-see-it", None).await, 410, "sold_out");
    let r =
        app.client.post(app.url(&format!("/v1/campaigns/{closing}/close"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Pub/sub is asynchronous: wait until instance 1 applied the close
    // notice (its cached copy says closed). The sold-out notice was
    // published before the close was even asked for; instance 1's set of
    // sold-out campaigns cannot be read from outside.
    let closing_id = flashgrab::domain::CampaignId::parse(&closing).unwrap();
    wait_until(Duration::from_secs(10), "instance 1 applied the close notice", || async {
        app.states[1].campaigns.cached(&closing_id).is_some_and(|c| c.closed_at.is_some())
    })
    .await;
    let before = cluster.script_calls();
    assert_error(&app.claim_on(1, &id, "told", None).await, 410, "sold_out");
    assert_error(&app.claim_on(1, &closing, "told", None).await, 410, "ended");
    assert_eq!(cluster.script_calls(), before, "instance 1 answered from the notices, not from Redis");

    // Not started yet, and already ended.
    let mut later = campaign_body(10);
    later["starts_at"] = json!(at(3600));
    later["ends_at"] = json!(at(7200));
    let later = app.create_campaign(later).await["id"].as_str().unwrap().to_owned();
    let mut short = campaign_body(10);
    short["ends_at"] = json!(at(1));
    let short = app.create_campaign(short).await["id"].as_str().unwrap().to_owned();
    // Instance 1 has not seen these campaigns: one lookup fills its cache.
    assert_error(&app.claim_on(1, &later, "warm", None).await, 409, "not_started");
    // The clock, not a condition: `short` ends one second after it began.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_error(&app.claim_on(1, &short, "warm", None).await, 410, "ended");

    let before = cluster.script_calls();
    let flood: Vec<_> = (0..400)
        .map(|i| {
            let app = app.clone();
            let targets = [id.clone(), later.clone(), short.clone(), closing.clone()];
            tokio::spawn(async move {
                let got = app.claim_on(i / 4, &targets[i % 4], &format!("flood-{i}"), None).await;
                (i % 4, got)
            })
        })
        .collect();
    for t in flood {
        let (kind, got) = t.await.unwrap();
        match kind {
            0 => assert_error(&got, 410, "sold_out"),
            1 => assert_error(&got, 409, "not_started"),
            _ => assert_error(&got, 410, "ended"),
        }
    }
    assert_eq!(cluster.script_calls(), before, "the flood never reached Redis");

    let replay = app.claim_on(1, &id, "keeper", Some("k-1")).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.1);
    assert_eq!(replay.1["id"], kept.1["id"]);
    assert!(cluster.script_calls() > before, "the keyed retry did reach Redis");
    let m = metrics(&app, 1).await;
    assert!(claims_of(&m, "sold_out") >= 50.0, "{m}");
}
