//! Redeem and release against the real stack. These try to break invariant
//! 5 of DESIGN.md (a coupon is redeemed at most once, idempotently per
//! order) and the write-through of a claim not yet persisted, and walk
//! every error code of the two endpoints.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    async fn post_user(&self, user: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.client.post(self.url(path)).bearer_auth(self.token(user)).json(body).send().await.unwrap();
        parts(r).await
    }

    async fn redeem(&self, user: &str, coupon: &str, body: Value) -> (StatusCode, Value) {
        self.post_user(user, &format!("/v1/coupons/{coupon}/redeem"), &body).await
    }

    async fn release(&self, user: &str, coupon: &str, order: &str) -> (StatusCode, Value) {
        self.post_user(user, &format!("/v1/coupons/{coupon}/release"), &json!({ "order_id": order })).await
    }

    /// Claims for `user`, asserting 201; returns the coupon id.
    async fn claimed(&self, campaign: &str, user: &str) -> String {
        let (s, b) = self.claim(campaign, user).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["id"].as_str().unwrap().to_owned()
    }

    async fn coupon_row_status(&self, coupon: &str) -> Option<(String, Option<String>)> {
        sqlx::query_as::<_, (String, Option<String>)>("SELECT CAST(status AS CHAR), order_id FROM coupons WHERE id = ?")
            .bind(coupon)
            .fetch_optional(self.state.db.pool())
            .await
            .unwrap()
    }
}

fn order(id: &str, total: i64) -> Value {
    json!({ "order_id": id, "order_total_cents": total })
}

/// 20 off a 100 minimum on shoes, or 10 % capped at 15.00 on anything.
fn shoes_campaign(stock: u64) -> Value {
    json!({
        "name": "shoes", "total_stock": stock, "starts_at": at(-1), "ends_at": at(3600),
        "coupon": {
            "discount": {"type": "fixed", "amount_cents": 2000}, "min_spend_cents": 10000,
            "applies_to": {"product_ids": [], "category_ids": ["shoes"]}, "valid_for_days": 7
        }
    })
}

#[tokio::test]
async fn redeem_right_after_claim_writes_through_and_replays() {
    // No pipeline in this app: the claim exists only in Redis.
    let app = spawn_app().await;
    let c = app.create_campaign(shoes_campaign(10)).await;
    let id = c["id"].as_str().unwrap();
    let coupon = app.claimed(id, "alice").await;
    assert_eq!(app.coupon_row_status(&coupon).await, None, "nothing persisted the claim yet");

    let body = json!({"order_id": "o-123", "order_total_cents": 25900,
        "items": [{"product_id": "p1", "category_id": "shoes", "unit_price_cents": 12950, "quantity": 2}]});
    let first = app.redeem("alice", &coupon, body.clone()).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!(first.1["coupon_id"], coupon.as_str());
    assert_eq!(first.1["order_id"], "o-123");
    assert_eq!(first.1["discount_cents"], 2000);
    assert_eq!(first.1["status"], "redeemed");
    assert_eq!(app.coupon_row_status(&coupon).await, Some(("redeemed".into(), Some("o-123".into()))));

    // Same order: the same body again. Another order: already_redeemed.
    let again = app.redeem("alice", &coupon, body).await;
    assert_eq!(again, first);
    let other = app.redeem("alice", &coupon, order("o-999", 50000)).await;
    assert_error(&other, 409, "already_redeemed");
    assert_eq!(other.1["order_id"], "o-123");

    let mine = app.my_coupons("alice", "").await;
    let listed = &mine["coupons"][0];
    assert_eq!(listed["status"], "redeemed", "{mine}");
    assert_eq!(listed["order_id"], "o-123");
    assert_eq!(listed["discount_cents"], 2000);
    assert_eq!(listed["redeemed_at"], first.1["redeemed_at"]);
    assert_eq!(app.my_coupons("alice", "?status=redeemed").await["coupons"].as_array().unwrap().len(), 1);
    assert_eq!(app.my_coupons("alice", "?status=claimed").await["coupons"].as_array().unwrap().len(), 0);

    let st = app.stats(id).await;
    assert_eq!((st["redeemed"].as_u64(), st["discount_total_cents"].as_i64()), (Some(1), Some(2000)), "{st}");
}

#[tokio::test]
async fn concurrent_redeems_of_one_coupon_for_different_orders_have_one_winner() {
    let app = spawn_apps(2).await;
    let c = app.create_campaign(campaign_body(12)).await;
    let id = c["id"].as_str().unwrap();
    let mut coupons = Vec::new();
    for i in 0..12 {
        let user = format!("u{i}");
        let coupon = app.claimed(id, &user).await;
        coupons.push((user, coupon));
    }
    // Half of them persisted already (the redeem finds the row), half only
    // in Redis (every racer writes it through at once).
    for (user, coupon) in &coupons[..6] {
        let (s, b) = app.redeem(user, coupon, order("warm-up", 100)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = app.release(user, coupon, "warm-up").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["status"], "claimed");
    }
    let mut tasks = Vec::new();
    for (user, coupon) in &coupons {
        for racer in 0..4 {
            let (app, user, coupon) = (app.clone(), user.clone(), coupon.clone());
            tasks.push(tokio::spawn(async move {
                let path = format!("/v1/coupons/{coupon}/redeem");
                let r = app
                    .client
                    .post(app.url_on(racer, &path))
                    .bearer_auth(app.token(&user))
                    .json(&order(&format!("order-{racer}"), 1000))
                    .send()
                    .await
                    .unwrap();
                (coupon, parts(r).await)
            }));
        }
    }
    let mut by_coupon: HashMap<String, Vec<(StatusCode, Value)>> = HashMap::new();
    for t in tasks {
        let (coupon, got) = t.await.unwrap();
        by_coupon.entry(coupon).or_default().push(got);
    }
    for (coupon, answers) in by_coupon {
        let winners: Vec<&Value> = answers.iter().filter(|(s, _)| *s == StatusCode::OK).map(|(_, b)| b).collect();
        assert_eq!(winners.len(), 1, "{coupon}: {answers:?}");
        let won = winners[0]["order_id"].clone();
        for (s, b) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
            assert_error(&(*s, b.clone()), 409, "already_redeemed");
            assert_eq!(b["order_id"], won, "the loser is told the winning order");
        }
        let row = app.coupon_row_status(&coupon).await.unwrap();
        assert_eq!(row, ("redeemed".into(), won.as_str().map(str::to_owned)));
    }
    let st = app.stats(id).await;
    assert_eq!(st["redeemed"], 12, "{st}");
    assert_eq!(st["discount_total_cents"], 12 * 500);
}

#[tokio::test]
async fn redeem_and_release_answer_every_documented_error() {
    let app = spawn_app().await;
    let c = app.create_campaign(shoes_campaign(10)).await;
    let id = c["id"].as_str().unwrap();
    let coupon = app.claimed(id, "bob").await;

    // Unknown, malformed, another user's.
    let unknown = ulid::Ulid::new().to_string();
    assert_error(&app.redeem("bob", &unknown, order("o", 20000)).await, 404, "coupon_not_found");
    assert_error(&app.redeem("bob", "nope", order("o", 20000)).await, 404, "coupon_not_found");
    assert_error(&app.redeem("mallory", &coupon, order("o", 20000)).await, 404, "coupon_not_found");
    assert_error(&app.release("mallory", &coupon, "o").await, 404, "coupon_not_found");
    let r = app.client.post(app.url(&format!("/v1/coupons/{coupon}/redeem"))).json(&order("o", 1)).send().await;
    assert_error(&parts(r.unwrap()).await, 401, "unauthorized");

    // Bad bodies name the field.
    for (body, field) in [
        (json!({"order_total_cents": 1}), "order_id"),
        (json!({"order_id": "", "order_total_cents": 1}), "order_id"),
        (json!({"order_id": "o", "order_total_cents": -5}), "order_total_cents"),
        (
            json!({"order_id": "o", "order_total_cents": 5, "items": [{"unit_price_cents": 5, "quantity": 0}]}),
            "items[0].quantity",
        ),
        (json!({"order_id": "o", "order_total_cents": 5, "coupon": "x"}), ""),
    ] {
        let got = app.redeem("bob", &coupon, body).await;
        assert_error(&got, 400, "invalid_request");
        if !field.is_empty() {
            assert!(got.1["field"].as_str().unwrap().contains(field), "{}", got.1);
        }
    }
    assert_error(
        &app.post_user("bob", &format!("/v1/coupons/{coupon}/release"), &json!({})).await,
        400,
        "invalid_request",
    );

    // Not applicable: restricted coupon without items, with no matching
    // item, and below the minimum spend on the matching items.
    let no_items = app.redeem("bob", &coupon, order("o", 50000)).await;
    assert_error(&no_items, 422, "not_applicable");
    assert_eq!(no_items.1["reason"], "no_eligible_items");
    let hats = json!({"order_id": "o", "order_total_cents": 50000,
        "items": [{"category_id": "hats", "unit_price_cents": 50000, "quantity": 1}]});
    assert_eq!(app.redeem("bob", &coupon, hats).await.1["reason"], "no_eligible_items");
    let cheap = json!({"order_id": "o", "order_total_cents": 59000, "items": [
        {"category_id": "shoes", "unit_price_cents": 9000, "quantity": 1},
        {"category_id": "hats", "unit_price_cents": 50000, "quantity": 1}]});
    let min = app.redeem("bob", &coupon, cheap).await;
    assert_error(&min, 422, "not_applicable");
    assert_eq!(min.1["reason"], "min_spend");
    assert_eq!(app.my_coupons("bob", "").await["coupons"][0]["status"], "claimed", "a refusal changes nothing");

    // Release: only the redeeming order; idempotent; usable again after.
    let shoes = |o: &str| {
        json!({"order_id": o, "order_total_cents": 12000,
            "items": [{"product_id": "p1", "category_id": "shoes", "unit_price_cents": 12000, "quantity": 1}]})
    };
    assert_eq!(app.redeem("bob", &coupon, shoes("o-1")).await.0, StatusCode::OK);
    assert_error(&app.release("bob", &coupon, "o-2").await, 409, "not_redeemed_by_order");
    for _ in 0..2 {
        let (s, b) = app.release("bob", &coupon, "o-1").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["status"], "claimed");
        assert!(b.get("order_id").is_none(), "{b}");
    }
    let (s, b) = app.redeem("bob", &coupon, shoes("o-2")).await;
    assert_eq!((s, b["order_id"].as_str()), (StatusCode::OK, Some("o-2")), "{b}");

    // Not yet valid.
    let later = app
        .create_campaign(json!({
            "name": "later", "total_stock": 5, "starts_at": at(-1), "ends_at": at(3600),
            "coupon": {"discount": {"type": "percent", "percent": 10, "max_cents": 1500},
                       "valid_from": at(3600), "valid_until": at(7200)}
        }))
        .await;
    let early = app.claimed(later["id"].as_str().unwrap(), "bob").await;
    let got = app.redeem("bob", &early, order("o-3", 10000)).await;
    assert_error(&got, 409, "not_yet_valid");
    assert!(got.1["valid_from"].is_string(), "{}", got.1);
}

#[tokio::test]
async fn an_expired_coupon_is_listed_expired_and_cannot_be_redeemed() {
    // The relay indexes the grant (the listing finds it there).
    let app = TestApp::builder().relay(true).start().await;
    let c = app
        .create_campaign(json!({
            "name": "short", "total_stock": 5, "starts_at": at(-1), "ends_at": at(3600),
            "coupon": {"discount": {"type": "percent", "percent": 50}, "valid_until": at(2)}
        }))
        .await;
    let id = c["id"].as_str().unwrap();
    let coupon = app.claimed(id, "carol").await;
    // Poll (no timed assertion): wait until the listing says expired.
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = app.my_coupons("carol", "?status=expired").await;
        if !listed["coupons"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["coupons"][0]["id"], coupon.as_str(), "{listed}");
    assert_eq!(listed["coupons"][0]["status"], "expired");
    assert_error(&app.redeem("carol", &coupon, order("o-late", 10000)).await, 410, "expired");
}

#[tokio::test]
async fn redemptions_survive_the_pipeline_and_reach_the_events_and_the_report() {
    let app = spawn_pipeline_app().await;
    // Listen on the events exchange before anything happens.
    let (conn, mut events) = listen_to_events(&app).await;

    let c = app.create_campaign(shoes_campaign(4)).await;
    let id = c["id"].as_str().unwrap();
    let mut coupons = Vec::new();
    for user in ["a", "b", "c", "d"] {
        coupons.push((user, app.claimed(id, user).await));
    }
    // Redeemed at once, most likely before the worker wrote the rows.
    let line = |cat: &str, price: i64| json!({"product_id": format!("p-{cat}"), "category_id": cat, "unit_price_cents": price, "quantity": 1});
    for (i, (user, coupon)) in coupons.iter().enumerate().take(3) {
        let items =
            if i == 0 { json!([line("shoes", 15000), line("hats", 900)]) } else { json!([line("shoes", 12000)]) };
        let body = json!({"order_id": format!("o-{user}"), "order_total_cents": 20000, "items": items});
        let (s, b) = app.redeem(user, coupon, body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (user, coupon) = &coupons[2];
    assert_eq!(app.release(user, coupon, &format!("o-{user}")).await.0, StatusCode::OK);

    app.wait_persisted(id, 4, 60).await;
    for (i, (user, coupon)) in coupons.iter().enumerate() {
        let want = if i < 2 {
            Some(("redeemed".to_owned(), Some(format!("o-{user}"))))
        } else {
            Some(("claimed".to_owned(), None))
        };
        assert_eq!(app.coupon_row_status(coupon).await, want, "the worker's later insert kept the redemption");
    }

    // Events: claims first (from the relay), then redeem x3 and release x1.
    let mut actions: Vec<(String, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while actions.len() < 4 {
        let next = tokio::time::timeout_at(deadline, events.next()).await.expect("4 redemption events in time");
        let delivery = next.unwrap().unwrap();
        let v: Value = serde_json::from_slice(&delivery.data).unwrap();
        if v["kind"] == "redemptions" {
            for e in v["redemptions"].as_array().unwrap() {
                actions.push((e["action"].as_str().unwrap().into(), e["coupon_id"].as_str().unwrap().into()));
            }
        }
    }
    actions.sort();
    let mut want: Vec<(String, String)> = coupons[..3].iter().map(|(_, c)| ("redeem".to_owned(), c.clone())).collect();
    want.push(("release".into(), coupons[2].1.clone()));
    want.sort();
    assert_eq!(actions, want);

    let r = app.get_admin(&format!("/v1/campaigns/{id}/report")).await;
    let (s, report) = parts(r).await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["claimed"], 4, "{report}");
    assert_eq!(report["remaining"], 0);
    assert!(report["sold_out_after_ms"].as_i64().unwrap() >= 0, "{report}");
    let per_minute: u64 =
        report["claims_per_minute"].as_array().unwrap().iter().map(|m| m["claims"].as_u64().unwrap()).sum();
    assert_eq!(per_minute, 4);
    assert_eq!(report["redeemed"], 2);
    assert_eq!(report["redemption_rate"], 0.5);
    assert_eq!(report["discount_total_cents"], 4000);
    assert_eq!(report["top_categories"], json!([{"id": "shoes", "redemptions": 2, "line_cents": 27000}]));
    assert_eq!(report["top_products"][0]["id"], "p-shoes");
    let missing = app.get_admin(&format!("/v1/campaigns/{}/report", ulid::Ulid::new())).await;
    assert_error(&parts(missing).await, 404, "campaign_not_found");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn user_ids_compare_exactly_in_listings_lookups_and_redeems() {
    // MySQL's utf8mb4_bin pads with spaces: 'alice ' = 'alice'. Each of
    // these users must see and use only their own coupons, persisted or not.
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(10)).await;
    let id = c["id"].as_str().unwrap();
    let users = ["alice", "alice ", "Alice", " alice"];
    let mut coupons = Vec::new();
    for u in users {
        coupons.push(app.claimed(id, u).await);
    }
    // Persist every claim (what the persist worker would write).
    let campaign = app.stock_campaign(id).await;
    for u in users {
        let user = flashgrab::domain::UserId::parse(u).unwrap();
        let records = app.stock.user_coupons(&campaign, &user).await.unwrap();
        assert_eq!(records.len(), 1, "{u:?}");
        app.state.db.insert_coupons(&records).await.unwrap();
    }
    // One of them redeemed, so a redemption could leak too.
    assert_eq!(app.redeem("alice", &coupons[0], order("o-alice", 1000)).await.0, StatusCode::OK);
    let exact: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons WHERE user_id = ?")
        .bind("alice ")
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(exact, 1, "the column compares exactly ('alice ' is not 'alice')");

    for (i, u) in users.iter().enumerate() {
        for query in ["".to_owned(), format!("?campaign_id={id}")] {
            let mine = app.my_coupons(u, &query).await;
            let ids: Vec<&str> =
                mine["coupons"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
            assert_eq!(ids, [coupons[i].as_str()], "{u:?} lists only their own coupon: {mine}");
            assert_eq!(mine["coupons"][0]["user_id"], *u);
        }
        for other in coupons.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c) {
            let r = app.client.get(app.url(&format!("/v1/me/coupons/{other}"))).bearer_auth(app.token(u)).send();
            assert_error(&parts(r.await.unwrap()).await, 404, "coupon_not_found");
            assert_error(&app.redeem(u, other, order(&format!("o-{i}"), 1000)).await, 404, "coupon_not_found");
            assert_error(&app.release(u, other, "o-alice").await, 404, "coupon_not_found");
        }
    }
    // The others could not touch alice's redemption.
    assert_eq!(app.coupon_row_status(&coupons[0]).await, Some(("redeemed".into(), Some("o-alice".into()))));
    for c in &coupons[1..] {
        assert_eq!(app.coupon_row_status(c).await, Some(("claimed".into(), None)));
    }
    // A control character is refused at the door (it never reaches a store).
    let r = app.client.get(app.url("/v1/me/coupons")).bearer_auth(app.token("alice\t")).send().await.unwrap();
    assert_error(&parts(r).await, 401, "unauthorized");
}

#[tokio::test]
async fn redeemed_at_of_the_answer_is_the_rows_when_the_server_rounds_fractions() {
    // MySQL 8 rounds a bound time to the column's 3 digits (MariaDB
    // truncates, unless TIME_ROUND_FRACTIONAL): make this MariaDB round
    // like MySQL 8 on every connection of the instance's pool, then redeem
    // at a time whose sub-millisecond part rounds up.
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(4)).await;
    let id = c["id"].as_str().unwrap();
    let coupon = app.claimed(id, "dora").await;
    let pool = app.state.db.pool();
    let mut conns = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in &mut conns {
        // Fails on MySQL, which rounds anyway.
        let _ = sqlx::query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',TIME_ROUND_FRACTIONAL')")
            .execute(&mut **conn)
            .await;
    }
    drop(conns);

    let user = flashgrab::domain::UserId::parse("dora").unwrap();
    let coupon_id = flashgrab::domain::CouponId::parse(&coupon).unwrap();
    let req: flashgrab::domain::order::RedeemRequest = serde_json::from_value(order("o-round", 1000)).unwrap();
    let checkout = req.validate().unwrap();
    let now = chrono::Utc::now();
    let now = now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 1_000_000))
        + chrono::Duration::microseconds(900);
    let got = app.state.coupons.redeem(&user, &coupon_id, &checkout, now).await.unwrap();
    let flashgrab::service::RedeemResult::Redeemed { redemption, .. } = got else { panic!("{got:?}") };
    let (row_at, history_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT c.redeemed_at, r.at FROM coupons c JOIN redemptions r ON r.coupon_id = c.id WHERE c.id = ?",
    )
    .bind(&coupon)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(redemption.redeemed_at, row_at, "the answer says what the row keeps");
    assert_eq!(history_at, row_at, "the history row too");
    assert_eq!(redemption.redeemed_at.timestamp_subsec_nanos() % 1_000_000, 0);
    // The replay (read from the row) and the listing answer the same time.
    let replay = app.redeem("dora", &coupon, order("o-round", 1000)).await;
    assert_eq!(replay.1["redeemed_at"], flashgrab::http::rfc3339(redemption.redeemed_at), "{}", replay.1);
    assert_eq!(app.my_coupons("dora", "").await["coupons"][0]["redeemed_at"], replay.1["redeemed_at"]);
}

#[tokio::test]
async fn redeem_right_after_claim_is_valid_when_this_clock_is_behind_the_redis_clock() {
    // The claim script stamps claimed_at and (without an explicit
    // valid_from) valid_from with Redis's clock. An instance whose clock is
    // a few hundred ms behind must still redeem the coupon at once: write
    // such a record into Redis (claimed and valid from 400 ms "from now").
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(4)).await;
    let id = c["id"].as_str().unwrap();
    let coupon = app.claimed(id, "erin").await;
    let campaign = app.stock_campaign(id).await;
    let shard = flashgrab::domain::campaign::home_shard("erin", campaign.shards());
    let keys = app.stock.keys().shard(campaign.shard_buckets[shard as usize], id, shard);
    let mut conn = app.stock.connection();
    let raw: String = redis::cmd("HGET").arg(&keys.coupons).arg(&coupon).query_async(&mut conn).await.unwrap();
    let mut record: flashgrab::domain::CouponRecord = serde_json::from_str(&raw).unwrap();
    let ahead = chrono::Utc::now().timestamp_millis() + 400;
    record.valid_until_ms += ahead - record.claimed_at_ms;
    (record.claimed_at_ms, record.valid_from_ms) = (ahead, ahead);
    let _: () = redis::cmd("HSET")
        .arg(&keys.coupons)
        .arg(&coupon)
        .arg(serde_json::to_string(&record).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();

    let got = app.redeem("erin", &coupon, order("o-now", 1000)).await;
    assert_eq!(got.0, StatusCode::OK, "valid from its own grant, by the clock that granted it: {}", got.1);
    // Persisted now (written through): a second coupon redeemed from its row.
    let (_, b) = app.release("erin", &coupon, "o-now").await;
    assert_eq!(b["status"], "claimed", "{b}");
    let again = app.redeem("erin", &coupon, order("o-again", 1000)).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.1);
}
