//! Redeem and release under concurrency, against the real stack: many
//! redeems of different fresh coupons at once (they write their rows
//! through and insert order lines into one index range, where InnoDB's gap
//! locks used to deadlock them into 503s), and a release racing the redeem
//! of the same fresh coupon (the history must be one of the two serial
//! orders, and both answers must agree with it).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn post(app: &TestApp, instance: usize, user: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = app.client.post(app.url_on(instance, path)).bearer_auth(app.token(user)).json(body).send().await.unwrap();
    parts(r).await
}

async fn get(app: &TestApp, user: &str, path: &str) -> (StatusCode, Value) {
    let r = app.client.get(app.url(path)).bearer_auth(app.token(user)).send().await.unwrap();
    parts(r).await
}

/// An order with two lines (so the redeem writes order lines).
fn order_with_items(order_id: &str) -> Value {
    json!({"order_id": order_id, "order_total_cents": 30000, "items": [
        {"product_id": "p1", "category_id": "shoes", "unit_price_cents": 10000, "quantity": 2},
        {"product_id": "p2", "category_id": "hats", "unit_price_cents": 10000, "quantity": 1}]})
}

/// `(status, order_id)` of the coupon row, None if there is no row.
async fn row_state(app: &TestApp, coupon: &str) -> Option<(String, Option<String>)> {
    sqlx::query_as::<_, (String, Option<String>)>("SELECT CAST(status AS CHAR), order_id FROM coupons WHERE id = ?")
        .bind(coupon)
        .fetch_optional(app.state.db.pool())
        .await
        .unwrap()
}

/// The history of a coupon: its actions, oldest first.
async fn history(app: &TestApp, coupon: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>("SELECT CAST(action AS CHAR) FROM redemptions WHERE coupon_id = ? ORDER BY id")
        .bind(coupon)
        .fetch_all(app.state.db.pool())
        .await
        .unwrap()
}

/// Claims one fresh coupon for each user (concurrently), asserting 201s.
async fn claim_all(app: &TestApp, campaign: &str, users: &[String]) -> Vec<String> {
    let claims = users.iter().map(|u| async move {
        let (s, b) = app.claim(campaign, u).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["id"].as_str().unwrap().to_owned()
    });
    futures_util::future::join_all(claims).await
}

#[tokio::test]
async fn many_concurrent_redeems_with_items_of_fresh_coupons_all_succeed_and_replay() {
    // No pipeline: every coupon exists only in Redis, so every redeem
    // writes its row through, then inserts its order lines at the end of
    // the same index (coupon ids are time-ordered).
    const N: usize = 64;
    let app = spawn_apps(2).await;
    let c = app.create_campaign(campaign_body(N as u64)).await;
    let id = c["id"].as_str().unwrap();
    let users: Vec<String> = (0..N).map(|i| format!("buyer-{i}")).collect();
    let coupons = claim_all(&app, id, &users).await;
    assert_eq!(row_state(&app, &coupons[0]).await, None, "nothing persisted the claims yet");

    let redeem_all = || {
        futures_util::future::join_all(users.iter().zip(&coupons).enumerate().map(|(i, (u, coupon))| {
            let app = &app;
            async move {
                let path = format!("/v1/coupons/{coupon}/redeem");
                post(app, i, u, &path, &order_with_items(&format!("o-{u}"))).await
            }
        }))
    };
    let first = redeem_all().await;
    let failed: Vec<_> = first.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(failed.is_empty(), "{} of {N} redeems failed: {failed:?}", failed.len());
    // Replays (same orders, again all at once): the same bodies.
    let again = redeem_all().await;
    assert_eq!(again, first, "a replay answers the very same body");

    for (u, coupon) in users.iter().zip(&coupons) {
        assert_eq!(row_state(&app, coupon).await, Some(("redeemed".into(), Some(format!("o-{u}")))));
        assert_eq!(history(&app, coupon).await, ["redeem"], "{coupon}: one decision, one history row");
    }
    let lines: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM redemption_items WHERE campaign_id = ?")
        .bind(id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(lines, 2 * N as i64, "two order lines per redemption");
    let st = app.stats(id).await;
    assert_eq!(st["redeemed"], N, "{st}");
}

#[tokio::test]
async fn a_release_racing_the_redeem_of_a_fresh_coupon_ends_in_a_serial_order() {
    // Each round: a fresh coupon (only in Redis), then redeem and release
    // sent at once on two instances. Even rounds release the redeeming
    // order, odd rounds another order. Whatever the interleaving, the
    // result must be one of the two serial orders:
    //   redeem, release: history [redeem, release] (same order) or
    //     [redeem] and 409 not_redeemed_by_order (other order);
    //   release, redeem: release answers the coupon `claimed`, history [redeem].
    // and GET /v1/me/coupons/{id} must say what the row says.
    const ROUNDS: usize = 50;
    let app = spawn_apps(2).await;
    let c = app.create_campaign(campaign_body(ROUNDS as u64)).await;
    let id = c["id"].as_str().unwrap();
    let users: Vec<String> = (0..ROUNDS).map(|i| format!("racer-{i}")).collect();
    let coupons = claim_all(&app, id, &users).await;
    let (mut redeem_first, mut release_first) = (0, 0);
    for (round, (user, coupon)) in users.iter().zip(&coupons).enumerate() {
        let released_order = if round % 2 == 0 { "o-1" } else { "o-2" };
        let (redeem_path, release_path) =
            (format!("/v1/coupons/{coupon}/redeem"), format!("/v1/coupons/{coupon}/release"));
        let (redeem_body, release_body) =
            (json!({"order_id": "o-1", "order_total_cents": 1000}), json!({"order_id": released_order}));
        let (redeemed, released) = tokio::join!(
            post(&app, round, user, &redeem_path, &redeem_body),
            post(&app, round + 1, user, &release_path, &release_body),
        );
        assert_eq!(redeemed.0, StatusCode::OK, "round {round}: {redeemed:?}");
        let row = row_state(&app, coupon).await.expect("a redeemed coupon has a row");
        let h = history(&app, coupon).await;
        let (s, listed) = get(&app, user, &format!("/v1/me/coupons/{coupon}")).await;
        assert_eq!(s, StatusCode::OK, "{listed}");
        let ctx = format!("round {round}: redeem {redeemed:?}, release {released:?}, row {row:?}, history {h:?}");
        if released_order == "o-1" && row.0 == "claimed" {
            // redeem, then release of that order
            redeem_first += 1;
            assert_eq!(released.0, StatusCode::OK, "{ctx}");
            assert_eq!(released.1["status"], "claimed", "{ctx}");
            assert_eq!(h, ["redeem", "release"], "{ctx}");
            assert_eq!(listed["status"], "claimed", "{ctx}: {listed}");
            continue;
        }
        // Otherwise the coupon stays redeemed on o-1: the release either
        // came first (and found it claimed) or came second with another order.
        assert_eq!(row, ("redeemed".into(), Some("o-1".into())), "{ctx}");
        assert_eq!(h, ["redeem"], "{ctx}");
        assert_eq!(listed["status"], "redeemed", "{ctx}: {listed}");
        assert_eq!(listed["order_id"], "o-1", "{ctx}: {listed}");
        assert_eq!(listed["redeemed_at"], redeemed.1["redeemed_at"], "{ctx}: {listed}");
        if released.0 == StatusCode::OK {
            release_first += 1;
            assert_eq!(released.1["status"], "claimed", "{ctx}");
            assert!(released.1.get("order_id").is_none(), "{ctx}");
        } else {
            redeem_first += 1;
            assert_eq!(released_order, "o-2", "{ctx}");
            assert_error(&released, 409, "not_redeemed_by_order");
        }
    }
    eprintln!("{ROUNDS} rounds: redeem first {redeem_first}, release first {release_first}");
}
