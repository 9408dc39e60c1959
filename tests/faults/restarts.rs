//! Redis masters restarted one after another (empty script cache, maybe a
//! failover to the replica) while claims go on.

use super::*;

/// Every master is restarted in turn (its script cache is empty when it comes
/// back, and it may even have been failed over to its replica). Claims keep
/// being granted, and no unit is created or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_survive_redis_master_restarts() {
    let _guard = STACK.lock().await;
    let app = spawn_app().await;
    let mut body = campaign_body(100);
    body["shards"] = json!(6);
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let mut granted = 0u64;
    for i in 0..10 {
        assert_eq!(app.claim(&id, &format!("pre-{i}")).await.0, StatusCode::CREATED);
        granted += 1;
    }
    let masters = app.stock.slot_map().await.unwrap().masters();
    assert_eq!(masters.len(), 3);
    for (round, master) in masters.iter().enumerate() {
        let port = master.rsplit(':').next().unwrap();
        stack(&["restart-node", port]);
        for i in 0..10 {
            let got = claim_until_answered(&app, &id, &format!("after-{round}-{i}")).await;
            assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
            granted += 1;
        }
    }
    stack(&["up"]);
    let st = app.stats(&id).await;
    assert_eq!(st["claimed"], granted, "{st}");
    assert_eq!(st["remaining"].as_u64().unwrap() + granted, 100, "{st}");
}
