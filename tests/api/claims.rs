//! The claim path against the real 3-master cluster. Every test here tries
//! to break an invariant of DESIGN.md: no oversell (1), the per-user limit
//! (2), stock conservation and fairness (4).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Claims as `user` on `instance`, retrying a 503 (the documented "retry
/// later") a bounded number of times like a well-behaved app would.
async fn claim_retrying(app: &TestApp, instance: usize, campaign: &str, user: &str) -> (StatusCode, Value) {
    for _ in 0..50 {
        let got = app.claim_on(instance, campaign, user, None).await;
        if got.0 != StatusCode::SERVICE_UNAVAILABLE {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{user} got 503 fifty times in a row");
}

/// Fires one claim per (instance, user) pair, all at once; returns answers.
async fn burst(app: &TestApp, campaign: &str, users: Vec<(usize, String)>) -> Vec<(String, StatusCode, Value)> {
    let tasks: Vec<_> = users
        .into_iter()
        .map(|(instance, user)| {
            let app = app.clone();
            let campaign = campaign.to_owned();
            tokio::spawn(async move {
                let (s, b) = claim_retrying(&app, instance, &campaign, &user).await;
                (user, s, b)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn campaign_with(stock: u64, shards: u64, limit: u64) -> Value {
    let mut b = campaign_body(stock);
    b["shards"] = json!(shards);
    b["per_user_limit"] = json!(limit);
    b
}

/// Asserts stats are at rest and conserved: remaining + claimed == total,
/// nothing in flight, and the outbox holds one record per grant.
async fn assert_conserved(app: &TestApp, id: &str, claimed: u64) {
    let st = app.stats(id).await;
    assert_eq!(st["claimed"], claimed, "{st}");
    assert_eq!(st["remaining"].as_u64().unwrap() + claimed, st["total_stock"].as_u64().unwrap(), "{st}");
    for s in st["shards"].as_array().unwrap() {
        assert_eq!(s["in_flight"], 0, "{st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_grants_exactly_the_stock() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(40, 6, 1)).await;
    let id = c["id"].as_str().unwrap();
    let answers = burst(&app, id, (0..300).map(|i| (0, format!("burst-user-{i}"))).collect()).await;

    let granted: Vec<&(String, StatusCode, Value)> = answers.iter().filter(|a| a.1 == StatusCode::CREATED).collect();
    assert_eq!(granted.len(), 40, "exactly the stock is granted");
    for (_, status, body) in answers.iter().filter(|a| a.1 != StatusCode::CREATED) {
        assert_error(&(*status, body.clone()), 410, "sold_out");
    }
    let ids: HashSet<&str> = granted.iter().map(|g| g.2["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 40, "coupon ids are distinct");
    for (user, _, body) in &granted {
        assert_eq!(body["user_id"], user.as_str());
        assert_eq!(body["campaign_id"], id);
        assert_eq!(body["status"], "claimed");
    }
    assert_conserved(&app, id, 40).await;
    assert_eq!(app.outbox_len().await, 40, "one outbox record per grant");
    // A late claim after the sell-out still says sold out.
    assert_error(&app.claim(id, "late-user").await, 410, "sold_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_fifty_concurrent_claims_get_one_coupon() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(1000, 8, 1)).await;
    let id = c["id"].as_str().unwrap();
    let answers = burst(&app, id, (0..50).map(|_| (0, "greedy".to_owned())).collect()).await;
    let granted: Vec<_> = answers.iter().filter(|a| a.1 == StatusCode::CREATED).collect();
    assert_eq!(granted.len(), 1);
    let coupon = granted[0].2["id"].as_str().unwrap();
    for (_, status, body) in answers.iter().filter(|a| a.1 != StatusCode::CREATED) {
        assert_error(&(*status, body.clone()), 409, "already_claimed");
        assert_eq!(body["coupon_id"], coupon, "points at the coupon held");
    }
    assert_conserved(&app, id, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_three_holds_under_concurrency() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(1000, 6, 3)).await;
    let id = c["id"].as_str().unwrap();
    let users: Vec<(usize, String)> =
        (0..20).flat_map(|u| (0..10).map(move |_| (0, format!("limit-user-{u}")))).collect();
    let answers = burst(&app, id, users).await;
    let mut per_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for (user, status, body) in &answers {
        if *status == StatusCode::CREATED {
            per_user.entry(user).or_default().push(body["id"].as_str().unwrap());
        } else {
            assert_error(&(*status, body.clone()), 409, "limit_reached");
            assert_eq!(body["coupon_ids"].as_array().unwrap().len(), 3, "{body}");
        }
    }
    assert_eq!(per_user.len(), 20);
    for (user, coupons) in &per_user {
        assert_eq!(coupons.len(), 3, "{user} holds exactly the limit");
        let listed = app.my_coupons(user, &format!("?campaign_id={id}")).await;
        let mut listed: Vec<&str> =
            listed["coupons"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        let mut expected = coupons.clone();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
    }
    assert_conserved(&app, id, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_invariants() {
    let app = spawn_apps(2).await;
    let c = app.create_campaign(campaign_with(30, 6, 1)).await;
    let id = c["id"].as_str().unwrap();
    // Every user fires twice, once at each instance, at the same time.
    let users: Vec<(usize, String)> =
        (0..150).flat_map(|u| [(0, format!("dup-{u}")), (1, format!("dup-{u}"))]).collect();
    let answers = burst(&app, id, users).await;
    let mut grants: HashMap<&str, Vec<&str>> = HashMap::new();
    for (user, status, body) in &answers {
        match status.as_u16() {
            201 => grants.entry(user).or_default().push(body["id"].as_str().unwrap()),
            409 => assert_eq!(body["error"], "already_claimed"),
            410 => assert_eq!(body["error"], "sold_out"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(grants.values().map(Vec::len).sum::<usize>(), 30, "no oversell across instances");
    assert!(grants.values().all(|g| g.len() == 1), "no user got two across instances");
    assert_conserved(&app, id, 30).await;
}

/// stock == shards: every shard holds one unit, so almost every user's home
/// shard runs dry at once and stock has to move. Every unit must be granted,
/// and with exactly as many users as units, every user must get one: a
/// premature sold_out would leave a unit (and a user) behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_equal_to_shards_grants_every_unit() {
    let app = spawn_app().await;
    for users in [12usize, 300] {
        let c = app.create_campaign(campaign_with(12, 12, 1)).await;
        let id = c["id"].as_str().unwrap();
        let answers = burst(&app, id, (0..users).map(|i| (0, format!("fair-{users}-{i}"))).collect()).await;
        let granted = answers.iter().filter(|a| a.1 == StatusCode::CREATED).count();
        assert_eq!(granted, 12, "with {users} users");
        for (_, status, body) in answers.iter().filter(|a| a.1 != StatusCode::CREATED) {
            assert_error(&(*status, body.clone()), 410, "sold_out");
        }
        assert_conserved(&app, id, 12).await;
    }
}

/// A transfer interrupted after its first step (as if the process died):
/// the units are in flight, the stats still add up, and claims drain every
/// unit anyway, including those in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_transfer_neither_creates_nor_loses_stock() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(6, 3, 1)).await;
    let id = c["id"].as_str().unwrap();
    let campaign = app.stock_campaign(id).await;
    let (_, taken) = app.stock.begin_transfer(&campaign, 0, 1, 2).await.unwrap();
    assert_eq!(taken, 2);
    let st = app.stats(id).await;
    assert_eq!(st["remaining"], 6, "in-flight units still count: {st}");
    assert_eq!(st["shards"][0]["in_flight"], 2);

    // A transfer replayed several times lands once.
    let (tid, taken) = app.stock.begin_transfer(&campaign, 2, 1, 1).await.unwrap();
    assert_eq!(taken, 1);
    for _ in 0..3 {
        app.stock.finish_transfer(&campaign, 2, 1, &tid, 1).await.unwrap();
    }
    assert_eq!(app.stats(id).await["remaining"], 6);

    let answers = burst(&app, id, (0..40).map(|i| (0, format!("xfer-{i}"))).collect()).await;
    assert_eq!(answers.iter().filter(|a| a.1 == StatusCode::CREATED).count(), 6);
    assert_conserved(&app, id, 6).await;
}

#[tokio::test]
async fn time_window_edges() {
    let app = spawn_app().await;
    let mut body = campaign_body(10);
    // Wide margins: the test only needs each claim to land on the right
    // side of an edge, even on a loaded CI machine.
    let starts = chrono::Utc::now() + chrono::Duration::milliseconds(3000);
    body["starts_at"] = json!(starts.to_rfc3339());
    body["ends_at"] = json!((starts + chrono::Duration::milliseconds(3000)).to_rfc3339());
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap();

    let early = app.claim(id, "early").await;
    assert_error(&early, 409, "not_started");
    let said: chrono::DateTime<chrono::Utc> = early.1["starts_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(said.timestamp_millis(), starts.timestamp_millis());

    tokio::time::sleep_until(
        tokio::time::Instant::now()
            + (starts - chrono::Utc::now()).to_std().unwrap_or_default()
            + Duration::from_millis(200),
    )
    .await;
    let on_time = app.claim(id, "on-time").await;
    assert_eq!(on_time.0, StatusCode::CREATED, "{}", on_time.1);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_error(&app.claim(id, "too-late").await, 410, "ended");
    assert_conserved(&app, id, 1).await;
}

#[tokio::test]
async fn idempotency_key_replays_the_same_coupon() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(100, 4, 3)).await;
    let id = c["id"].as_str().unwrap();
    let first = app.claim_on(0, id, "idem", Some("order-1")).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let again = app.claim_on(0, id, "idem", Some("order-1")).await;
    assert_eq!(again.0, StatusCode::OK);
    assert_eq!(again.1["id"], first.1["id"]);
    // The same key from another user is another claim.
    let other = app.claim_on(0, id, "idem-other", Some("order-1")).await;
    assert_eq!(other.0, StatusCode::CREATED);
    assert_ne!(other.1["id"], first.1["id"]);
    assert_eq!(app.claim_on(0, id, "idem", None).await.0, StatusCode::CREATED);
    assert_eq!(app.claim_on(0, id, "idem", Some("order-2")).await.0, StatusCode::CREATED);
    assert_eq!(app.claim_on(0, id, "idem", Some("order-1")).await.1["id"], first.1["id"]);
    assert_error(&app.claim_on(0, id, "idem", Some("order-3")).await, 409, "limit_reached");
    for bad in ["", &"k".repeat(65), "with space"] {
        let r = app.claim_on(0, id, "idem", Some(bad)).await;
        assert_error(&r, 400, "invalid_request");
    }
    assert_conserved(&app, id, 4).await;
}

/// Listed once relayed (the relay writes the holdings index, typically
/// milliseconds after the 201; docs/ARCHITECTURE.md "Reads"), before it is
/// persisted (no persist worker here); by id at once.
#[tokio::test]
async fn my_coupons_show_a_claim_once_relayed_before_it_is_persisted() {
    let app = TestApp::builder().relay(true).start().await;
    let c1 = app.create_campaign(campaign_with(10, 3, 1)).await;
    let c2 = app.create_campaign(campaign_with(10, 3, 1)).await;
    let (id1, id2) = (c1["id"].as_str().unwrap(), c2["id"].as_str().unwrap());
    assert_eq!(app.my_coupons("shopper", "").await["coupons"], json!([]));
    let a = app.claim(id1, "shopper").await.1;
    let b = app.claim(id2, "shopper").await.1;
    app.wait_relayed(10).await;
    let all = app.my_coupons("shopper", "").await;
    let ids: Vec<&str> = all["coupons"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a["id"].as_str().unwrap()) && ids.contains(&b["id"].as_str().unwrap()));
    let only = app.my_coupons("shopper", &format!("?campaign_id={id2}")).await;
    assert_eq!(only["coupons"][0]["id"], b["id"]);
    assert_eq!(only["coupons"][0]["discount"], json!({"type": "fixed", "amount_cents": 500}));
    assert_eq!(app.my_coupons("shopper", "?status=claimed").await["coupons"].as_array().unwrap().len(), 2);
    assert_eq!(app.my_coupons("shopper", "?status=redeemed").await["coupons"], json!([]));
    assert_eq!(app.my_coupons("someone-else", "").await["coupons"], json!([]));

    let coupon = a["id"].as_str().unwrap();
    let mine = app
        .client
        .get(app.url(&format!("/v1/me/coupons/{coupon}")))
        .bearer_auth(app.token("shopper"))
        .send()
        .await
        .unwrap();
    let mine = parts(mine).await;
    assert_eq!(mine.0, StatusCode::OK);
    assert_eq!(mine.1, a);
    let theirs = app
        .client
        .get(app.url(&format!("/v1/me/coupons/{coupon}")))
        .bearer_auth(app.token("thief"))
        .send()
        .await
        .unwrap();
    assert_error(&parts(theirs).await, 404, "coupon_not_found");
    for odd in ["nope", "01JD0000000000000000000000", "%20"] {
        let r = app
            .client
            .get(app.url(&format!("/v1/me/coupons/{odd}")))
            .bearer_auth(app.token("shopper"))
            .send()
            .await
            .unwrap();
        assert_error(&parts(r).await, 404, "coupon_not_found");
    }
    let bad =
        app.client.get(app.url("/v1/me/coupons?status=lost")).bearer_auth(app.token("shopper")).send().await.unwrap();
    assert_error(&parts(bad).await, 400, "invalid_request");
}

#[tokio::test]
async fn unknown_campaigns_are_404_for_claims() {
    let app = spawn_app().await;
    for id in ["01JD0000000000000000000000", "garbage", "x".repeat(200).as_str()] {
        assert_error(&app.claim(id, "u").await, 404, "campaign_not_found");
    }
}

#[tokio::test]
async fn user_tokens_are_checked() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(10, 3, 1)).await;
    let id = c["id"].as_str().unwrap();
    let now = chrono::Utc::now().timestamp();
    let other = flashgrab::auth::JwtKeys::new(b"another-secret-another-secret-0000");
    let good = app.token("u1");
    let (h, rest) = good.split_once('.').unwrap();
    let tampered = format!("{h}.{}", rest.replacen('e', "f", 1));
    let tokens = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer not-a-jwt".to_owned()),
        // Expired beyond the default 30 s clock leeway (FLASHGRAB_JWT_LEEWAY_SECS).
        Some(format!("Bearer {}", app.jwt.sign("u1", now - 60))),
        Some(format!("Bearer {}", other.sign("u1", now + 60))),
        Some(format!("Bearer {}", app.jwt.sign("", now + 60))),
        Some(format!("Bearer {}", app.jwt.sign(&"x".repeat(65), now + 60))),
        Some(format!("Bearer {tampered}")),
        Some(format!("Bearer {good}.extra")),
        Some(ADMIN.to_owned()),
        Some(format!("Bearer {ADMIN}")),
    ];
    for t in tokens {
        for (method, path) in [("POST", format!("/v1/campaigns/{id}/claim")), ("GET", "/v1/me/coupons".to_owned())] {
            let mut req = app.client.request(method.parse().unwrap(), app.url(&path));
            if let Some(t) = &t {
                req = req.header("authorization", t);
            }
            assert_error(&parts(req.send().await.unwrap()).await, 401, "unauthorized");
        }
    }
    assert_eq!(app.stats(id).await["claimed"], 0);
}

/// SCRIPT FLUSH on every node (what a restarted node or a promoted replica
/// looks like to the client): claims keep working (NOSCRIPT reloads).
#[tokio::test]
async fn claims_survive_an_empty_script_cache() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(50, 6, 1)).await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(app.claim(id, "before-flush").await.0, StatusCode::CREATED);
    for port in 7000..7006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    }
    for i in 0..20 {
        let got = app.claim(id, &format!("after-flush-{i}")).await;
        assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    }
    assert_conserved(&app, id, 21).await;
}

/// Concurrent claims of one shard go to Redis in shared script calls (group
/// commit), and batching changes no outcome: every claim answered, every
/// grant distinct and conserved. With `FLASHGRAB_CLAIM_BATCH=1` every claim
/// is its own call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_a_shard_share_script_calls_and_batching_changes_no_outcome() {
    for batch in [32usize, 1] {
        let t = TestApp::builder().configure(move |s| s.claim_batch = batch).start().await;
        let stock = t.stock.clone();

        // One shard: every claim meets every other on the same shard.
        let c = t.create_campaign(campaign_with(150, 1, 1)).await;
        let id = c["id"].as_str().unwrap();
        let before = stock.claim_calls();
        let mut users: Vec<(usize, String)> = (0..200).map(|i| (0, format!("batch-{batch}-user-{i}"))).collect();
        users.extend((0..50).map(|i| (0, format!("batch-{batch}-user-{i}")))); // repeats
        let answers = burst(&t, id, users).await;
        let after = stock.claim_calls();

        let granted: Vec<_> = answers.iter().filter(|a| a.1 == StatusCode::CREATED).collect();
        assert_eq!(granted.len(), 150, "batch {batch}: exactly the stock");
        let distinct_users: HashSet<&str> = granted.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(distinct_users.len(), 150, "batch {batch}: one coupon per user");
        for (_, status, body) in answers.iter().filter(|a| a.1 != StatusCode::CREATED) {
            let code = body["error"].as_str().unwrap();
            assert!(
                (*status == StatusCode::GONE && code == "sold_out")
                    || (*status == StatusCode::CONFLICT && code == "already_claimed"),
                "batch {batch}: {status} {body}"
            );
        }
        assert_conserved(&t, id, 150).await;
        assert_eq!(t.outbox_len().await, 150, "batch {batch}: one outbox record per grant");
        let (calls, claims) = (after.0 - before.0, after.1 - before.1);
        assert!(claims >= 150, "batch {batch}: {claims} claims reached the script");
        if batch == 1 {
            assert_eq!(calls, claims, "batching off: one call per claim");
        } else {
            assert!(calls < claims, "batch {batch}: {calls} calls for {claims} claims: nothing was batched");
        }
    }
}

/// A shard's batch worker retires when its shard goes quiet and the next
/// claim starts a new one: nothing is lost across the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_batch_worker_is_replaced_by_the_next_claim() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_with(10, 1, 1)).await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(app.claim(id, "before-idle").await.0, StatusCode::CREATED);
    assert_eq!(app.stock.batch_workers(), 1, "the shard has its worker");
    // The worker retires after 5 s without claims.
    wait_until(Duration::from_secs(10), "the idle worker retired", || async { app.stock.batch_workers() == 0 }).await;
    let answers = burst(&app, id, (0..20).map(|i| (0, format!("after-idle-{i}"))).collect()).await;
    assert_eq!(answers.iter().filter(|a| a.1 == StatusCode::CREATED).count(), 9, "the rest of the stock");
    assert_eq!(app.stock.batch_workers(), 1, "a new worker serves the shard");
    assert_conserved(&app, id, 10).await;
}
