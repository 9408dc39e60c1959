//! The claim pipeline end to end: Redis outbox -> relay -> RabbitMQ ->
//! persist worker -> MySQL, with reconcile as the judge (invariant 3).
//! Fault injection (kill -9, broker and database outages) is in tests/faults.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

async fn amqp_channel() -> (Connection, lapin::Channel) {
    let url =
        std::env::var("FLASHGRAB_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Fires `users` claims concurrently; returns the coupon ids answered 201.
async fn grants(app: &TestApp, campaign: &str, users: usize, tag: &str) -> Vec<String> {
    let tasks: Vec<_> = (0..users)
        .map(|i| {
            let app = app.clone();
            let (campaign, user) = (campaign.to_owned(), format!("{tag}-{i}"));
            tokio::spawn(async move { app.claim(&campaign, &user).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status == StatusCode::CREATED {
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

/// Reads every coupon id persisted for the campaign.
async fn persisted_ids(app: &TestApp, campaign: &str) -> Vec<String> {
    app.state.db.campaign_coupons(campaign).await.unwrap().into_iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_becomes_exactly_one_row() {
    let app = spawn_pipeline_app().await;
    let mut body = campaign_body(300);
    body["shards"] = json!(6);
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap();
    let granted = grants(&app, id, 500, "p").await;
    assert_eq!(granted.len(), 300);
    app.wait_persisted(id, 300, 60).await;

    let rows = persisted_ids(&app, id).await;
    let unique: HashSet<&String> = rows.iter().collect();
    assert_eq!(rows.len(), 300);
    assert_eq!(unique.len(), 300, "no duplicate rows");
    assert_eq!(unique, granted.iter().collect::<HashSet<_>>(), "rows are exactly the grants");
    let report = app.reconcile(id, false).await;
    assert!(report.matched(), "{report}");

    // The outbox is trimmed once the broker confirmed.
    app.wait_relayed(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_the_worker_goes_on() {
    let app = spawn_pipeline_app().await;
    let c = app.create_campaign(campaign_body(50)).await;
    let id = c["id"].as_str().unwrap();
    // Make sure the topology exists (the relay declares it when it connects).
    let first = grants(&app, id, 5, "before").await;
    app.wait_persisted(id, 5, 30).await;

    let (conn, ch) = amqp_channel().await;
    let t = flashgrab::queue::topology::Topology::new(&app.prefix);
    for poison in [&b"this is not json"[..], br#"{"kind":"claims","claims":[{"id":"x"}]}"#] {
        let confirm = ch
            .basic_publish(
                t.claims_exchange.as_str().into(),
                flashgrab::queue::topology::CLAIM_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                poison,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        drop(confirm);
    }
    let after = grants(&app, id, 20, "after").await;
    app.wait_persisted(id, (first.len() + after.len()) as u64, 30).await;

    // Both poison messages are in the dead-letter queue with a reason.
    let mut reasons = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reasons.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "dead-letter queue has {reasons:?}");
        match ch.basic_get(t.dead_letter_queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            Some(m) => {
                let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                let reason = headers.inner().get("x-flashgrab-reason").map(|v| format!("{v:?}"));
                assert!(reason.is_some(), "a dead-lettered message says why");
                reasons.push(reason.unwrap());
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(app.reconcile(id, false).await.matched());
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_missing_and_extra_rows_and_repairs() {
    // No relay, no worker: grants stay in Redis only.
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(30)).await;
    let id = c["id"].as_str().unwrap();
    let granted = grants(&app, id, 12, "r").await;
    assert_eq!(granted.len(), 12);
    let report = app.reconcile(id, false).await;
    assert_eq!(report.granted, 12);
    assert_eq!(report.missing.len(), 12);
    assert!(!report.matched());

    let repaired = app.reconcile(id, true).await;
    assert_eq!(repaired.repaired, 12);
    assert!(repaired.matched(), "{repaired}");
    assert_eq!(persisted_ids(&app, id).await.len(), 12);
    // A second repair writes nothing twice.
    let again = app.reconcile(id, true).await;
    assert!(again.missing.is_empty() && again.matched());
    assert_eq!(app.stats(id).await["persisted"], 12);

    // A row with no grant behind it is reported, never "repaired" away.
    sqlx::query(
        "INSERT INTO coupons (id, campaign_id, user_id, shard, claimed_at, valid_from, valid_until) \
         VALUES ('01JD0000000000000000000009', ?, 'ghost', 0, NOW(3), NOW(3), NOW(3))",
    )
    .bind(id)
    .execute(app.state.db.pool())
    .await
    .unwrap();
    let extra = app.reconcile(id, true).await;
    assert_eq!(extra.extra, vec!["01JD0000000000000000000009".to_owned()]);
    assert!(!extra.matched());

    // The command-line tool says the same, with its exit code.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashgrab"))
        .args(["reconcile", "--campaign", id])
        .env("FLASHGRAB_REDIS_NODES", redis_nodes())
        .env("FLASHGRAB_MYSQL_URL", app.mysql_url())
        .env("FLASHGRAB_KEY_PREFIX", &app.prefix)
        .env("FLASHGRAB_ADMIN_TOKEN", ADMIN)
        .env("FLASHGRAB_USER_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("extra rows:       1") && text.contains("MISMATCH"), "{text}");
}

/// A relay that read entries and died before publishing them: another
/// relay takes them over (XAUTOCLAIM) once they sat idle, and they reach
/// MySQL exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_by_a_dead_relay_are_reclaimed() {
    let quiet = TestApp::builder().start().await;
    let prefix = quiet.prefix.clone();
    let c = quiet.create_campaign(campaign_body(40)).await;
    let id = c["id"].as_str().unwrap();
    let granted = grants(&quiet, id, 10, "dead").await;
    assert_eq!(granted.len(), 10);

    // The "dead" relay: joins the group and takes every entry, never acks.
    let mut conn = quiet.stock.connection();
    let group = format!("{prefix}-relay");
    let mut taken = 0;
    for b in 0..quiet.stock.keys().buckets() {
        let key = quiet.stock.keys().outbox(b);
        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        let read: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("dead-relay")
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        taken += read.map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum::<usize>());
    }
    assert_eq!(taken, 10, "the dead relay holds every entry");

    let live = TestApp::builder().alongside(&quiet).pipeline().start().await;
    live.wait_persisted(id, 10, 60).await;
    let reclaimed = live.state.metrics.reclaimed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(reclaimed >= 10, "taken over by XAUTOCLAIM ({reclaimed})");
    assert!(live.reconcile(id, false).await.matched());
}

/// `GET /v1/me/coupons` merges the rows in MySQL with the claims in Redis:
/// a row Redis does not hold (e.g. written by reconcile from a backup) is
/// listed too, and a coupon in both is listed once.
#[tokio::test]
async fn my_coupons_merge_database_rows() {
    let app = spawn_app().await;
    let c = app.create_campaign(campaign_body(30)).await;
    let id = c["id"].as_str().unwrap();
    let (status, mine) = app.claim(id, "merge-user").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.reconcile(id, true).await.repaired, 1);
    sqlx::query(
        "INSERT INTO coupons (id, campaign_id, user_id, shard, claimed_at, valid_from, valid_until) \
         VALUES ('01JD0000000000000000000007', ?, 'merge-user', 0, NOW(3), NOW(3), NOW(3) + INTERVAL 1 DAY)",
    )
    .bind(id)
    .execute(app.state.db.pool())
    .await
    .unwrap();
    let listed = app.my_coupons("merge-user", "").await;
    let ids: Vec<&str> = listed["coupons"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&"01JD0000000000000000000007") && ids.contains(&mine["id"].as_str().unwrap()));
    let filtered = app.my_coupons("merge-user", &format!("?campaign_id={id}")).await;
    assert_eq!(filtered["coupons"].as_array().unwrap().len(), 2);
}
