//! Tests that disrupt the shared local stack (they restart Redis nodes).
//! They live in their own test binary so that they never run alongside the
//! API tests (cargo runs test binaries one after another), and they take a
//! lock among themselves.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use helpers::*;

/// Serialises the disruptive tests of this binary.
static STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn stack(args: &[&str]) {
    let script = format!("{}/scripts/stack", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&script).args(args).output().expect("scripts/stack runs");
    assert!(
        out.status.success(),
        "scripts/stack {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Claims, retrying 503s for up to ~20 s (a restarted node or a failover
/// takes a few seconds to settle; the service must say "retry", never lie).
async fn claim_until_answered(app: &TestApp, id: &str, user: &str) -> (StatusCode, serde_json::Value) {
    for _ in 0..200 {
        let got = app.claim(id, user).await;
        if got.0 != StatusCode::SERVICE_UNAVAILABLE {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user}: still 503 after 20 s");
}

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
