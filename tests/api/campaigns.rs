//! Campaign admin API: validation table, auth, placement, stats.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Sets `path` (dotted) of the valid body to `v` (or removes it when `v` is
/// `None`).
fn with(path: &str, v: Option<Value>) -> Value {
    let mut body = campaign_body(100);
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = &mut body;
    for p in &parts[..parts.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    let last = parts[parts.len() - 1];
    match v {
        Some(v) => cur[last] = v,
        None => {
            cur.as_object_mut().unwrap().remove(last);
        }
    }
    body
}

#[tokio::test]
async fn campaign_validation_table() {
    let app = spawn_app().await;
    let s = Some;
    let cases: Vec<(Value, &str)> = vec![
        // name
        (with("name", None), "name"),
        (with("name", s(json!(""))), "name"),
        (with("name", s(json!("   "))), "name"),
        (with("name", s(json!("x".repeat(201)))), "name"),
        (with("name", s(json!(42))), "name"),
        (with("name", s(json!(null))), "name"),
        // total_stock
        (with("total_stock", None), "total_stock"),
        (with("total_stock", s(json!(0))), "total_stock"),
        (with("total_stock", s(json!(-5))), "total_stock"),
        (with("total_stock", s(json!(1_000_000_001i64))), "total_stock"),
        (with("total_stock", s(json!(1.5))), "total_stock"),
        (with("total_stock", s(json!("100"))), "total_stock"),
        (with("total_stock", s(json!(1e30))), "total_stock"),
        // per_user_limit
        (with("per_user_limit", s(json!(0))), "per_user_limit"),
        (with("per_user_limit", s(json!(101))), "per_user_limit"),
        (with("per_user_limit", s(json!(true))), "per_user_limit"),
        // times
        (with("starts_at", None), "starts_at"),
        (with("starts_at", s(json!("tomorrow"))), "starts_at"),
        (with("starts_at", s(json!("2026-13-01T00:00:00Z"))), "starts_at"),
        (with("ends_at", s(json!("2026-11-21 20:00:00"))), "ends_at"),
        (with("ends_at", s(json!(at(-2)))), "ends_at"),
        (with("ends_at", s(json!(at(-1)))), "ends_at"),
        // shards
        (with("shards", s(json!(0))), "shards"),
        (with("shards", s(json!(1025))), "shards"),
        (with("shards", s(json!(101))), "shards"),
        (with("shards", s(json!("4"))), "shards"),
        // coupon
        (with("coupon", None), "coupon"),
        (with("coupon", s(json!([]))), "coupon"),
        (with("coupon.discount", None), "coupon.discount"),
        (with("coupon.discount.type", s(json!("bogo"))), "coupon.discount.type"),
        (with("coupon.discount.amount_cents", s(json!(0))), "coupon.discount.amount_cents"),
        (with("coupon.discount.amount_cents", s(json!(9.99))), "coupon.discount.amount_cents"),
        (with("coupon.discount.amount_cents", None), "coupon.discount.amount_cents"),
        (with("coupon.discount.percent", s(json!(10))), "coupon.discount.percent"),
        (with("coupon.discount", s(json!({"type": "percent", "percent": 0}))), "coupon.discount.percent"),
        (with("coupon.discount", s(json!({"type": "percent", "percent": 101}))), "coupon.discount.percent"),
        (with("coupon.discount", s(json!({"type": "percent"}))), "coupon.discount.percent"),
        (
            with("coupon.discount", s(json!({"type": "percent", "percent": 10, "max_cents": 0}))),
            "coupon.discount.max_cents",
        ),
        (
            with("coupon.discount", s(json!({"type": "percent", "percent": 10, "amount_cents": 5}))),
            "coupon.discount.amount_cents",
        ),
        (with("coupon.min_spend_cents", s(json!(-1))), "coupon.min_spend_cents"),
        (with("coupon.min_spend_cents", s(json!(10.5))), "coupon.min_spend_cents"),
        (with("coupon.applies_to", s(json!({"product_ids": [""]}))), "coupon.applies_to.product_ids"),
        (with("coupon.applies_to", s(json!({"category_ids": ["x".repeat(65)]}))), "coupon.applies_to.category_ids"),
        (with("coupon.applies_to", s(json!({"category_ids": "shoes"}))), "coupon.applies_to.category_ids"),
        (with("coupon.valid_for_days", s(json!(0))), "coupon.valid_for_days"),
        (with("coupon.valid_for_days", s(json!(3651))), "coupon.valid_for_days"),
        (with("coupon.valid_for_days", None), "coupon.valid_for_days"),
        (with("coupon.valid_until", s(json!(at(7200)))), "coupon.valid_until"),
        (with("coupon.valid_from", s(json!("soon"))), "coupon.valid_from"),
        // unknown fields, anywhere
        (with("total_stok", s(json!(5))), "total_stok"),
        (with("coupon.discount.amount", s(json!(5))), "coupon.discount.amount"),
        (with("coupon.applies_to", s(json!({"skus": []}))), "coupon.applies_to.skus"),
    ];
    for (body, field) in cases {
        let got = parts(app.post_admin("/v1/campaigns", &body).await).await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(got.1["field"], field, "body {body} gave {}", got.1);
    }
    // Not JSON at all, JSON of the wrong shape, trailing junk.
    for raw in ["", "{", "[]", "null", "{\"name\":1}}", "\u{0}"] {
        let r = app
            .client
            .post(app.url("/v1/campaigns"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_error(&parts(r).await, 400, "invalid_request");
    }
    // Wrong content type.
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth(ADMIN)
        .body(campaign_body(5).to_string())
        .send()
        .await
        .unwrap();
    assert_error(&parts(r).await, 415, "unsupported_media_type");
    // Huge bodies: by declared length, and by a chunked stream with no length.
    let mut huge = campaign_body(5);
    huge["name"] = json!("x".repeat(70 * 1024));
    assert_error(&parts(app.post_admin("/v1/campaigns", &huge).await).await, 413, "payload_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(&parts(r).await, 413, "payload_too_large");
    // Nothing above created a campaign.
    let list: Value = app.get_admin("/v1/campaigns").await.json().await.unwrap();
    assert_eq!(list["campaigns"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn valid_variants_are_accepted_and_echoed() {
    let app = spawn_app().await;
    let mut body = campaign_body(1000);
    body["per_user_limit"] = json!(3);
    body["shards"] = json!(7);
    body["coupon"] = json!({
        "discount": {"type": "percent", "percent": 15, "max_cents": 3000},
        "min_spend_cents": 10000,
        "applies_to": {"product_ids": ["p1"], "category_ids": ["shoes"]},
        "valid_until": at(86400), "valid_from": at(60)
    });
    let c = app.create_campaign(body).await;
    assert_eq!(c["per_user_limit"], 3);
    assert_eq!(c["shards"], 7);
    assert_eq!(c["status"], "live");
    assert_eq!(c["coupon"]["discount"], json!({"type": "percent", "percent": 15, "max_cents": 3000}));
    assert_eq!(c["coupon"]["applies_to"]["category_ids"], json!(["shoes"]));
    assert!(c["id"].as_str().unwrap().len() == 26);

    let mut later = campaign_body(10);
    later["starts_at"] = json!(at(3600));
    later["ends_at"] = json!(at(7200));
    let s = app.create_campaign(later).await;
    assert_eq!(s["status"], "scheduled");

    let got: Value = app.get_admin(&format!("/v1/campaigns/{}", c["id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(got, c);
    let list: Value = app.get_admin("/v1/campaigns").await.json().await.unwrap();
    let ids: Vec<&str> = list["campaigns"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![s["id"].as_str().unwrap(), c["id"].as_str().unwrap()], "newest first");
}

#[tokio::test]
async fn admin_endpoints_require_the_admin_token() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(10)).await;
    let id = c["id"].as_str().unwrap();
    let user_jwt = app.token("someone");
    let endpoints = [
        ("POST", "/v1/campaigns".to_owned()),
        ("GET", "/v1/campaigns".to_owned()),
        ("GET", format!("/v1/campaigns/{id}")),
        ("POST", format!("/v1/campaigns/{id}/close")),
        ("GET", format!("/v1/campaigns/{id}/stats")),
    ];
    for (method, path) in &endpoints {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token"),
            Some("Basic dGVzdDp0ZXN0"),
            Some(&*format!("Bearer {user_jwt}")),
            Some("Bearer"),
        ] {
            let mut req = app.client.request(method.parse().unwrap(), app.url(path)).json(&campaign_body(5));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            assert_error(&parts(req.send().await.unwrap()).await, 401, "unauthorized");
        }
    }
    // Still open: the close above was refused.
    let got: Value = app.get_admin(&format!("/v1/campaigns/{id}")).await.json().await.unwrap();
    assert_eq!(got["status"], "live");
}

#[tokio::test]
async fn unknown_and_odd_campaign_ids_are_404() {
    let app = spawn_app().await;
    for id in [
        "01JD0000000000000000000000",
        "nope",
        "x".repeat(300).as_str(),
        "a%25b",
        "a.b",
        "01JD00000000000000000000000",
        "😀",
    ] {
        for path in [format!("/v1/campaigns/{id}"), format!("/v1/campaigns/{id}/stats")] {
            assert_error(&parts(app.get_admin(&path).await).await, 404, "campaign_not_found");
        }
        let r = parts(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await).await;
        assert_error(&r, 404, "campaign_not_found");
    }
    assert_error(&parts(app.get_admin("/v2/nothing").await).await, 404, "not_found");
    let r = app.client.delete(app.url("/v1/campaigns")).bearer_auth(ADMIN).send().await.unwrap();
    assert_error(&parts(r).await, 405, "method_not_allowed");
}

/// The shards of one campaign land on every master of the cluster, checked
/// against the live cluster with CLUSTER KEYSLOT and CLUSTER SLOTS.
#[tokio::test]
async fn shards_cover_every_master() {
    let app = spawn_app().await;
    let map = app.stock.slot_map().await.unwrap();
    let masters = map.masters();
    assert!(masters.len() >= 3, "the test cluster has 3 masters, saw {masters:?}");
    let mut conn = app.stock.connection();
    for shards in [masters.len() as u64, 5, 16] {
        let mut body = campaign_body(1000);
        body["shards"] = json!(shards);
        let c = app.create_campaign(body).await;
        let id = c["id"].as_str().unwrap();
        let campaign = app.stock_campaign(id).await;
        let mut seen = HashSet::new();
        for s in 0..campaign.shards() {
            let key = app.stock.keys().shard(campaign.shard_buckets[s as usize], id, s).hash;
            let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query_async(&mut conn).await.unwrap();
            let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
            assert!(exists, "shard key {key} was written");
            seen.insert(map.master_of(slot).unwrap().to_owned());
        }
        assert_eq!(seen.len(), masters.len(), "{shards} shards on {seen:?}");
    }
}

#[tokio::test]
async fn stats_add_up_after_creation() {
    let app = spawn_app().await;
    for (stock, shards) in [(1u64, None), (10, Some(3)), (100_003, Some(16)), (1_000_000_000, None)] {
        let mut body = campaign_body(stock);
        if let Some(s) = shards {
            body["shards"] = json!(s);
        }
        let c = app.create_campaign(body).await;
        let st = app.stats(c["id"].as_str().unwrap()).await;
        assert_eq!(st["total_stock"], stock);
        assert_eq!(st["remaining"], stock);
        assert_eq!(st["claimed"], 0);
        assert_eq!(st["persisted"], 0);
        let per: Vec<&Value> = st["shards"].as_array().unwrap().iter().collect();
        assert_eq!(per.len() as u64, c["shards"].as_u64().unwrap());
        let sum: u64 = per.iter().map(|s| s["remaining"].as_u64().unwrap()).sum();
        assert_eq!(sum, stock);
        let (min, max) =
            per.iter().map(|s| s["remaining"].as_u64().unwrap()).fold((u64::MAX, 0), |(a, b), v| (a.min(v), b.max(v)));
        assert!(max - min <= 1, "split evenly: {min}..{max}");
    }
}

#[tokio::test]
async fn close_is_idempotent_and_ends_claims() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(10)).await;
    let id = c["id"].as_str().unwrap();
    let first = parts(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!(first.1["status"], "ended");
    let again = parts(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await).await;
    assert_eq!(again.0, StatusCode::OK);
    assert_eq!(again.1["closed_at"], first.1["closed_at"], "the first close wins");
    assert_error(&app.claim(id, "late-user").await, 410, "ended");
    let st = app.stats(id).await;
    assert_eq!(st["remaining"], 10);
    assert_eq!(st["status"], "ended");
}
