//! Idempotent replays at the edges: a client's retry with its
//! `Idempotency-Key` must get the coupon it was granted even once the
//! campaign has ended or was closed (the in-memory fast paths and the
//! script's window check must not answer `ended` first), and the replay
//! must show the coupon as it is now (redeemed, if it was).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Waits for `ends_at` to pass, then polls a claim without a key until it
/// is answered 410 `ended` (bounded): from then on this instance answers
/// key-less claims from its cached terms.
async fn wait_ended(app: &TestApp, campaign: &str, ends_at: &str) {
    let ends = chrono::DateTime::parse_from_rfc3339(ends_at).unwrap().to_utc();
    tokio::time::sleep((ends - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = app.claim(campaign, "nobody-in-particular").await;
        if got.0 == StatusCode::GONE && got.1["error"] == "ended" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the campaign never ended: {} {}", got.0, got.1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_keyed_retry_after_the_end_still_gets_its_coupon() {
    let app = spawn_app().await;
    let mut body = campaign_body(10);
    let ends_at = at(2);
    body["ends_at"] = json!(ends_at);
    body["per_user_limit"] = json!(2);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let first = app.claim_on(0, &id, "late-retry", Some("order-1")).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    wait_ended(&app, &id, &ends_at).await;

    let again = app.claim_on(0, &id, "late-retry", Some("order-1")).await;
    assert_eq!(again.0, StatusCode::OK, "a keyed retry after the end: {}", again.1);
    assert_eq!(again.1["id"], first.1["id"]);
    assert_eq!(again.1["status"], "claimed");
    // Only the replay: a new key, or none, is a new claim and is too late.
    assert_error(&app.claim_on(0, &id, "late-retry", Some("order-2")).await, 410, "ended");
    assert_error(&app.claim_on(0, &id, "late-retry", None).await, 410, "ended");
    assert_error(&app.claim_on(0, &id, "someone-else", Some("order-1")).await, 410, "ended");
    let st = app.stats(&id).await;
    assert_eq!(st["claimed"], 1, "{st}");
    assert_eq!(st["remaining"], 9, "{st}");
}

#[tokio::test]
async fn a_keyed_retry_after_a_close_still_gets_its_coupon() {
    let app = spawn_apps(2).await;
    let mut body = campaign_body(10);
    body["per_user_limit"] = json!(2);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let first = app.claim_on(0, &id, "closed-retry", Some("k")).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let closed = parts(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await).await;
    assert_eq!(closed.0, StatusCode::OK, "{}", closed.1);
    // Both instances know of the close (the closing one at once, the other
    // by the notice or its next claim): keyless claims are refused there.
    for instance in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while app.claim_on(instance, &id, "probe", None).await.0 != StatusCode::GONE {
            assert!(std::time::Instant::now() < deadline, "instance {instance} never saw the close");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let again = app.claim_on(instance, &id, "closed-retry", Some("k")).await;
        assert_eq!(again.0, StatusCode::OK, "instance {instance}, keyed retry after the close: {}", again.1);
        assert_eq!(again.1["id"], first.1["id"]);
        assert_error(&app.claim_on(instance, &id, "closed-retry", Some("k2")).await, 410, "ended");
    }
    assert_eq!(app.stats(&id).await["claimed"], 1);
}

#[tokio::test]
async fn a_replay_of_a_redeemed_coupon_says_redeemed() {
    let app = spawn_app().await;
    let id = app.create_campaign(campaign_body(10)).await["id"].as_str().unwrap().to_owned();
    let first = app.claim_on(0, &id, "buyer", Some("checkout-7")).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let coupon = first.1["id"].as_str().unwrap().to_owned();
    let order = json!({ "order_id": "order-77", "order_total_cents": 10_000 });
    let redeemed = parts(
        app.client
            .post(app.url(&format!("/v1/coupons/{coupon}/redeem")))
            .bearer_auth(app.token("buyer"))
            .json(&order)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(redeemed.0, StatusCode::OK, "{}", redeemed.1);

    let again = app.claim_on(0, &id, "buyer", Some("checkout-7")).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.1);
    assert_eq!(again.1["id"], coupon.as_str());
    assert_eq!(again.1["status"], "redeemed", "the replay shows the coupon as it is: {}", again.1);
    assert_eq!(again.1["order_id"], "order-77", "{}", again.1);
    assert_eq!(again.1["redeemed_at"], redeemed.1["redeemed_at"], "{}", again.1);
}
