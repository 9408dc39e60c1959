//! After the sell-out, claims are answered from memory: counted with INFO
//! commandstats on every shared node (this binary runs alone, serialised).

use super::*;

/// Sum of EVALSHA calls over every node of the cluster.
async fn evalsha_calls() -> u64 {
    let mut total = 0;
    for port in 7000..7006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue };
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
        total += info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Once an instance saw the campaign sold out, a flood of claims is answered
/// 410 from memory without a single script call (counted with INFO
/// commandstats on every node; this binary runs alone, serialised). A retry
/// carrying an Idempotency-Key still reaches Redis and gets its coupon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sell_out_claims_are_answered_from_memory() {
    let _guard = STACK.lock().await;
    let app = spawn_app().await;
    let mut body = campaign_body(5);
    body["shards"] = json!(3);
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let first = app.claim_on(0, &id, "keeper", Some("k-1")).await;
    assert_eq!(first.0, StatusCode::CREATED);
    for i in 0..4 {
        assert_eq!(app.claim(&id, &format!("early-{i}")).await.0, StatusCode::CREATED);
    }
    assert_error(&app.claim(&id, "first-to-see-it").await, 410, "sold_out");

    let before = evalsha_calls().await;
    for i in 0..200 {
        assert_error(&app.claim(&id, &format!("flood-{i}")).await, 410, "sold_out");
    }
    assert_eq!(evalsha_calls().await, before, "the flood never reached Redis");

    let replay = app.claim_on(0, &id, "keeper", Some("k-1")).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.1);
    assert_eq!(replay.1["id"], first.1["id"]);
}
