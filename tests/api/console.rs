//! The console's API additions (issue 17): PATCH, idempotent create,
//! cursor pages, the CSV export, the event streams, and the console page.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    async fn patch(&self, id: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.client.patch(self.url(&format!("/v1/campaigns/{id}"))).bearer_auth(ADMIN).json(body).send().await;
        parts(r.unwrap()).await
    }

    async fn create_keyed(&self, key: &str, body: &Value) -> (StatusCode, Value) {
        let r =
            self.client.post(self.url("/v1/campaigns")).bearer_auth(ADMIN).header("Idempotency-Key", key).json(body);
        parts(r.send().await.unwrap()).await
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// Asserts the stock adds up at rest: remaining + claimed == total_stock.
fn assert_conserved(st: &Value) {
    let (r, c, t) =
        (st["remaining"].as_u64().unwrap(), st["claimed"].as_u64().unwrap(), st["total_stock"].as_u64().unwrap());
    assert_eq!(r + c, t, "remaining {r} + claimed {c} != total_stock {t}: {st}");
    let shards: u64 = st["shards"].as_array().unwrap().iter().map(|s| s["remaining"].as_u64().unwrap()).sum();
    assert_eq!(shards, r, "{st}");
}

/// Claims once per user, `n` users at once; returns how many were granted.
async fn claim_many(app: &TestApp, instance: usize, id: &str, users: std::ops::Range<usize>) -> (usize, usize) {
    let claims = users.map(|u| {
        let app = app.clone();
        let id = id.to_owned();
        async move { app.claim_on(instance, &id, &format!("u{u}"), None).await }
    });
    let answers = futures_util::future::join_all(claims).await;
    let granted = answers.iter().filter(|a| a.0 == StatusCode::CREATED).count();
    let sold_out = answers.iter().filter(|a| a.0 == StatusCode::GONE && a.1["error"] == "sold_out").count();
    assert_eq!(granted + sold_out, answers.len(), "only 201 and 410 sold_out: {answers:?}");
    (granted, sold_out)
}

#[tokio::test]
async fn patch_changes_only_what_may_change_and_only_one_way() {
    let app = spawn_app().await;
    let c = app
        .create_campaign(json!({
            "name": "patch me", "total_stock": 10, "shards": 2, "starts_at": at(-1), "ends_at": at(3600),
            "coupon": {"discount": {"type": "fixed", "amount_cents": 500}, "valid_for_days": 7}
        }))
        .await;
    let id = id_of(&c);
    for u in 0..4 {
        assert_eq!(app.claim(&id, &format!("p{u}")).await.0, StatusCode::CREATED);
    }
    let refused = |got: (StatusCode, Value), reason: &str| {
        assert_error(&got, 409, "invalid_change");
        assert_eq!(got.1["reason"], reason, "{}", got.1);
    };
    refused(app.patch(&id, &json!({"total_stock": 3})).await, "below_claimed");
    refused(app.patch(&id, &json!({"total_stock": 8})).await, "stock_decrease");
    refused(app.patch(&id, &json!({"ends_at": at(60)})).await, "ends_at_earlier");
    assert_error(&app.patch(&id, &json!({})).await, 400, "invalid_request");
    let bad = app.patch(&id, &json!({"shards": 4})).await;
    assert_error(&bad, 400, "invalid_request");
    assert_eq!(bad.1["field"], "shards");
    assert_eq!(app.patch(&id, &json!({"total_stock": 0})).await.1["field"], "total_stock");
    assert_eq!(app.patch(&id, &json!({"ends_at": "soon"})).await.1["field"], "ends_at");
    assert_error(&app.patch("01ARZ3NDEKTSV4RRFFQ69G5FAV", &json!({"name": "x"})).await, 404, "campaign_not_found");

    let later = (chrono::Utc::now() + chrono::Duration::hours(5)).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let (status, body) = app.patch(&id, &json!({"name": "patched", "ends_at": later})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "patched");
    assert_eq!(body["ends_at"], later);
    assert_eq!(body["total_stock"], 10);
    // The shards end claims at the new end too (the script checks it).
    let campaign = app.stock_campaign(&id).await;
    let mut conn = app.stock.connection();
    for s in 0..campaign.shards() {
        let key = app.stock.keys().shard(campaign.shard_buckets[s as usize], &id, s).hash;
        let ends: i64 = redis::cmd("HGET").arg(&key).arg("ends_ms").query_async(&mut conn).await.unwrap();
        assert_eq!(ends, campaign.ends_at.timestamp_millis());
    }
    // The same end again is accepted (a retry), and changes nothing.
    assert_eq!(app.patch(&id, &json!({"ends_at": later})).await.0, StatusCode::OK);
    assert_conserved(&app.stats(&id).await);

    // Once closed: the end and the stock are final; the name is not.
    assert_eq!(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await.status(), StatusCode::OK);
    refused(app.patch(&id, &json!({"total_stock": 20})).await, "ended");
    refused(app.patch(&id, &json!({"ends_at": at(90_000)})).await, "ended");
    assert_eq!(app.patch(&id, &json!({"name": "after the end"})).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_top_up_after_the_sell_out_sells_exactly_the_new_total_on_every_instance() {
    let app = spawn_apps(2).await;
    let c = app
        .create_campaign(json!({
            "name": "top up", "total_stock": 10, "shards": 4, "starts_at": at(-1), "ends_at": at(3600),
            "coupon": {"discount": {"type": "fixed", "amount_cents": 500}, "valid_for_days": 7}
        }))
        .await;
    let id = id_of(&c);
    let (granted, _) = claim_many(&app, 0, &id, 0..20).await;
    assert_eq!(granted, 10);
    // Both instances now answer sold out from memory.
    assert_error(&app.claim_on(1, &id, "late-1", None).await, 410, "sold_out");
    assert_error(&app.claim_on(0, &id, "late-0", None).await, 410, "sold_out");

    let (status, body) = app.patch(&id, &json!({"total_stock": 25})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total_stock"], 25);
    assert_eq!(body["status"], "live");
    let st = app.stats(&id).await;
    assert_conserved(&st);
    assert_eq!(st["remaining"], 15);
    // The same request again (a double submit) adds nothing.
    assert_eq!(app.patch(&id, &json!({"total_stock": 25})).await.0, StatusCode::OK);
    assert_eq!(app.stats(&id).await["total_stock"], 25);

    // The other instance heard of it (the `changed` notice) and claims
    // again. Not a condition to wait for: what the notice changes there is
    // its set of sold-out campaigns (it answered from that set alone, so it
    // holds no copy of the terms to watch), which nothing outside reads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, _) = claim_many(&app, 1, &id, 100..120).await;
    let (b, _) = claim_many(&app, 0, &id, 200..220).await;
    assert_eq!(a + b, 15, "exactly the topped-up units are sold");
    let st = app.stats(&id).await;
    assert_conserved(&st);
    assert_eq!(st["remaining"], 0);
    assert_eq!(st["claimed"], 25);
}

#[tokio::test]
async fn a_top_up_left_half_way_is_finished_once_by_the_recovery() {
    let app = spawn_app().await;
    let id = id_of(&app.create_campaign(campaign_body(12)).await);
    let cid = flashgrab::domain::CampaignId::parse(&id).unwrap();
    let c = app.stock_campaign(&id).await;
    let now = chrono::Utc::now();
    // Journaled, shards given, total not grown: the process died there.
    let t = app.state.db.journal_top_up(&cid, 20, now).await.unwrap().expect("8 units to add");
    assert_eq!(t.units, 8);
    app.stock.top_up(&c, &t.id, t.units).await.unwrap();
    app.stock.top_up(&c, &t.id, t.units).await.unwrap();
    let st = app.stats(&id).await;
    assert_eq!((st["remaining"].as_u64(), st["total_stock"].as_u64()), (Some(20), Some(12)), "given once: {st}");
    // A second request for the same total while it is pending adds nothing.
    assert!(app.state.db.journal_top_up(&cid, 20, now).await.unwrap().is_none());
    // Another one died right after the journal.
    let t2 = app.state.db.journal_top_up(&cid, 23, now).await.unwrap().expect("3 more");
    assert_eq!(t2.units, 3);

    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(app.state.campaigns.finish_top_ups(later).await.unwrap(), 2);
    assert_eq!(app.state.campaigns.finish_top_ups(later).await.unwrap(), 0, "nothing left to finish");
    let st = app.stats(&id).await;
    assert_conserved(&st);
    assert_eq!(st["total_stock"], 23);
}

#[tokio::test]
async fn an_idempotency_key_makes_one_campaign_per_form() {
    let app = spawn_app().await;
    let body = campaign_body(50);
    let (first, a) = app.create_keyed("form-1", &body).await;
    assert_eq!(first, StatusCode::CREATED, "{a}");
    let (again, b) = app.create_keyed("form-1", &body).await;
    assert_eq!(again, StatusCode::OK, "{b}");
    assert_eq!(a["id"], b["id"]);
    let mut other = body.clone();
    other["total_stock"] = json!(51);
    assert_error(&app.create_keyed("form-1", &other).await, 409, "idempotency_conflict");
    assert_error(&app.create_keyed(&"k".repeat(65), &body).await, 400, "invalid_request");
    // A failed validation stores nothing: the fixed form goes through.
    let mut invalid = body.clone();
    invalid["total_stock"] = json!(0);
    assert_error(&app.create_keyed("form-2", &invalid).await, 400, "invalid_request");
    assert_eq!(app.create_keyed("form-2", &body).await.0, StatusCode::CREATED);

    // A double submit racing itself: one campaign.
    let racing = (0..6).map(|_| {
        let (app, body) = (app.clone(), body.clone());
        async move { app.create_keyed("form-3", &body).await }
    });
    let answers = futures_util::future::join_all(racing).await;
    let ids: std::collections::HashSet<&str> = answers.iter().map(|a| a.1["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| a.0 == StatusCode::CREATED).count(), 1, "{answers:?}");
    let list: Value = app.get_admin("/v1/campaigns").await.json().await.unwrap();
    assert_eq!(list["campaigns"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_list_pages_with_a_cursor_newest_first() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for _ in 0..7 {
        made.push(id_of(&app.create_campaign(campaign_body(5)).await));
    }
    made.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            None => "/v1/campaigns?limit=3".to_owned(),
            Some(c) => format!("/v1/campaigns?limit=3&cursor={c}"),
        };
        let page: Value = app.get_admin(&q).await.json().await.unwrap();
        pages += 1;
        seen.extend(page["campaigns"].as_array().unwrap().iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made);
    let all: Value = app.get_admin("/v1/campaigns").await.json().await.unwrap();
    assert_eq!(all["campaigns"].as_array().unwrap().len(), 7);
    assert_eq!(all["next_cursor"], Value::Null);
    for (q, field) in [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("cursor=nope", "cursor")] {
        let got = parts(app.get_admin(&format!("/v1/campaigns?{q}")).await).await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(got.1["field"], field, "{q}");
    }
}

#[tokio::test]
async fn the_csv_export_has_one_row_per_persisted_claim() {
    let app = spawn_pipeline_app().await;
    let id = id_of(&app.create_campaign(campaign_body(30)).await);
    let (granted, _) = claim_many(&app, 0, &id, 0..40).await;
    assert_eq!(granted, 30);
    let st = app.wait_persisted(&id, 30, 30).await;
    let r = app.get_admin(&format!("/v1/campaigns/{id}/claims.csv")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(r.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("coupon_id,user_id,claimed_at,status,order_id,redeemed_at,discount_cents"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len() as u64, st["persisted"].as_u64().unwrap());
    assert!(rows.iter().all(|r| r.len() == 7 && r[3] == "claimed" && r[1].starts_with('u')), "{text}");
    assert_error(
        &parts(app.get_admin("/v1/campaigns/01ARZ3NDEKTSV4RRFFQ69G5FAV/claims.csv").await).await,
        404,
        "campaign_not_found",
    );
}

#[tokio::test]
async fn a_large_export_is_streamed_in_chunks() {
    let app = spawn_app().await;
    let id = id_of(&app.create_campaign(campaign_body(10)).await);
    // Rows written straight into MySQL (as the persist worker would).
    const ROWS: usize = 60_000;
    let now = chrono::Utc::now().timestamp_millis();
    let records: Vec<flashgrab::domain::CouponRecord> = (0..ROWS)
        .map(|i| flashgrab::domain::CouponRecord {
            id: ulid::Ulid::new().to_string(),
            campaign_id: id.clone(),
            user_id: format!("bulk-{i}"),
            shard: 0,
            claimed_at_ms: now,
            valid_from_ms: now,
            valid_until_ms: now + 86_400_000,
            idempotency_key: None,
        })
        .collect();
    for chunk in records.chunks(5_000) {
        app.state.db.insert_coupons(chunk).await.unwrap();
    }
    let r = app.get_admin(&format!("/v1/campaigns/{id}/claims.csv")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("content-length").is_none(), "streamed, not sized up front");
    let mut body = r.bytes_stream();
    let (mut chunks, mut newlines) = (0, 0);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        newlines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(newlines, ROWS + 1);
    assert!(chunks > 10, "{chunks} chunks: the rows came as they were read");
}

/// Reads SSE events off a response: (event name, JSON data).
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    fn new(r: reqwest::Response) -> Self {
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Self { body: Box::pin(r.bytes_stream()), buf: String::new() }
    }

    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(i) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..i + 2).collect();
                    let mut name = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            name = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        return (name, serde_json::from_str(&data).unwrap());
                    }
                    continue;
                }
                let chunk = self.body.next().await.expect("the stream stays open").unwrap();
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within 10 s")
    }

    /// Skips events until `want` holds.
    async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (_, v) = self.next().await;
            if want(&v) {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn the_app_stream_tells_the_start_and_the_sell_out_from_one_producer() {
    let app = spawn_app().await;
    let id = id_of(
        &app.create_campaign(json!({
            "name": "events", "total_stock": 5, "starts_at": at(2), "ends_at": at(3600),
            "coupon": {"discount": {"type": "fixed", "amount_cents": 500}, "valid_for_days": 7}
        }))
        .await,
    );
    let open =
        |user: &str| app.client.get(app.url(&format!("/v1/campaigns/{id}/events"))).bearer_auth(app.token(user)).send();
    let mut a = Events::new(open("watcher-a").await.unwrap());
    let mut b = Events::new(open("watcher-b").await.unwrap());
    let (name, first) = a.next().await;
    assert_eq!(name, "status");
    assert_eq!(first, json!({"status": "scheduled", "remaining_approx": 5}));
    assert_eq!(b.next().await.1["status"], "scheduled");
    assert_eq!(app.state.live.feeds().0, 1, "one producer for both subscribers");

    assert_eq!(a.until(|v| v["status"] == "live").await["remaining_approx"], 5);
    let (granted, _) = claim_many(&app, 0, &id, 0..8).await;
    assert_eq!(granted, 5);
    let sold = a.until(|v| v["status"] == "sold_out").await;
    assert_eq!(sold["remaining_approx"], 0);
    assert_eq!(b.until(|v| v["status"] == "sold_out").await["remaining_approx"], 0);
    assert_eq!(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await.status(), StatusCode::OK);
    assert_eq!(a.until(|v| v["status"] == "ended").await["status"], "ended");

    // The app's stream needs a user token; the admin token is not one.
    let r = app.client.get(app.url(&format!("/v1/campaigns/{id}/events"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.client.get(app.url(&format!("/v1/campaigns/{id}/events"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = open("watcher-c").await.unwrap();
    drop(r);
    let missing = app
        .client
        .get(app.url("/v1/campaigns/01ARZ3NDEKTSV4RRFFQ69G5FAV/events"))
        .bearer_auth(app.token("watcher-d"))
        .send()
        .await
        .unwrap();
    assert_error(&parts(missing).await, 404, "campaign_not_found");

    // The producer stops once nobody listens.
    drop((a, b));
    wait_until(Duration::from_secs(5), "the producer stopped with its subscribers", || async {
        app.state.live.feeds().0 == 0
    })
    .await;
}

#[tokio::test]
async fn the_console_stream_carries_the_stats_every_second() {
    let app = spawn_app().await;
    let id = id_of(&app.create_campaign(campaign_body(20)).await);
    let r = app.get_admin(&format!("/v1/campaigns/{id}/live")).await;
    let mut live = Events::new(r);
    let (name, first) = live.next().await;
    assert_eq!(name, "stats");
    assert_eq!(first["campaign_id"], id.as_str());
    assert_eq!(first["claimed"], 0);
    assert_eq!(first["total_stock"], 20);
    assert!(first["at"].is_string() && first["shards"].is_array(), "{first}");
    for u in 0..3 {
        assert_eq!(app.claim(&id, &format!("l{u}")).await.0, StatusCode::CREATED);
    }
    let later = live.until(|v| v["claimed"] == 3).await;
    assert_eq!(later["remaining"], 17);
    assert_eq!(later["attempts_here"], 3);
    let (_, next) = live.next().await;
    assert_ne!(next["at"], later["at"], "a new frame each second, changed or not");
}

#[tokio::test]
async fn every_console_endpoint_needs_the_admin_token() {
    let app = spawn_app().await;
    let id = id_of(&app.create_campaign(campaign_body(5)).await);
    let user = app.token("not-an-admin");
    let calls: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::PATCH, format!("/v1/campaigns/{id}")),
        (reqwest::Method::GET, format!("/v1/campaigns/{id}/live")),
        (reqwest::Method::GET, format!("/v1/campaigns/{id}/claims.csv")),
        (reqwest::Method::GET, "/v1/campaigns?limit=1".to_owned()),
        (reqwest::Method::POST, "/v1/campaigns".to_owned()),
    ];
    for (method, path) in calls {
        for auth in [None, Some(user.as_str()), Some("wrong-admin-token")] {
            let mut req = app.client.request(method.clone(), app.url(&path)).json(&json!({"name": "x"}));
            if let Some(a) = auth {
                req = req.bearer_auth(a);
            }
            let got = parts(req.send().await.unwrap()).await;
            assert_error(&got, 401, "unauthorized");
        }
    }
}

#[tokio::test]
async fn the_console_page_reveals_nothing_and_allows_no_inline_script() {
    let app = spawn_app().await;
    let secret_name = format!("secret drop {}", ulid::Ulid::new());
    let mut body = campaign_body(5);
    body["name"] = json!(secret_name);
    let id = id_of(&app.create_campaign(body).await);
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let text = r.text().await.unwrap();
        assert!(!text.contains(&secret_name) && !text.contains(&id), "{path} shows data without a token");
        assert!(!text.contains(ADMIN), "{path}");
    }
    let html = app.client.get(app.url("/console")).send().await.unwrap();
    assert_eq!(html.headers()["cache-control"], "no-store");
    let html = html.text().await.unwrap();
    // Every script is a file of the console; none is inline.
    for tag in html.split("<script").skip(1) {
        let head = &tag[..tag.find('>').unwrap()];
        assert!(head.contains("src=\"/console/"), "inline or foreign script: <script{head}>");
        assert!(tag[tag.find('>').unwrap() + 1..].starts_with("</script>"), "a script with a body");
    }
    assert!(!html.contains("onclick=") && !html.contains("onload="), "no inline handlers");
    let r = app.client.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(r.url().path(), "/console");
}
