//! Archiving an ended campaign (issue 15 item 6): its per-shard Redis data
//! is deleted once every grant is persisted, and everything a user or an
//! operator can do with it afterwards is answered from MySQL: stats,
//! coupon lists, redeem, claims (410 `ended`; a keyed retry gets its
//! coupon from its row), reconcile (matched against the count kept at
//! archive time, and `--repair` writes nothing back into Redis).

use std::time::Duration;

use flashgrab::domain::CampaignId;
use flashgrab::service::{ArchiveOutcome, ArchiveService};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

impl TestApp {
    fn archiver(&self) -> ArchiveService {
        ArchiveService::new(self.state.db.clone(), self.stock.clone(), self.state.campaigns.clone())
    }

    /// How many of the campaign's per-shard keys exist in Redis.
    async fn shard_keys_left(&self, campaign: &str) -> u64 {
        let c = self.stock_campaign(campaign).await;
        let mut conn = self.stock.connection();
        let mut n = 0;
        for s in 0..c.shards() {
            let k = self.stock.keys().shard(c.shard_buckets[s as usize], campaign, s);
            let found: u64 = redis::cmd("EXISTS")
                .arg(&k.hash)
                .arg(&k.holders)
                .arg(&k.coupons)
                .arg(&k.idem)
                .arg(&k.xout)
                .arg(&k.xin)
                .query_async(&mut conn)
                .await
                .unwrap();
            n += found;
        }
        n
    }
}

/// `flashgrab archive` against this test's prefix and database: exit code
/// and output.
fn archive_cli(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashgrab"))
        .arg("archive")
        .args(args)
        .env("FLASHGRAB_REDIS_NODES", redis_nodes())
        .env("FLASHGRAB_MYSQL_URL", app.mysql_url())
        .env("FLASHGRAB_KEY_PREFIX", &app.prefix)
        .env("FLASHGRAB_ADMIN_TOKEN", ADMIN)
        .env("FLASHGRAB_USER_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Sleeps until `ends_at` has passed (by this clock, plus a margin for
/// Redis's).
async fn until_over(ends_at: &str) {
    let ends = chrono::DateTime::parse_from_rfc3339(ends_at).unwrap().to_utc() + chrono::Duration::milliseconds(200);
    tokio::time::sleep((ends - chrono::Utc::now()).to_std().unwrap_or_default()).await;
}

#[tokio::test]
async fn an_ended_persisted_campaign_is_archived_and_still_served_from_mysql() {
    let app = spawn_pipeline_app().await;
    let mut body = campaign_body(10);
    let ends_at = at(3);
    body["ends_at"] = json!(ends_at);
    body["per_user_limit"] = json!(2);
    body["shards"] = json!(3);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let cid = CampaignId::parse(&id).unwrap();
    let keyed = app.claim_on(0, &id, "keyed", Some("order-1")).await;
    assert_eq!(keyed.0, StatusCode::CREATED, "{}", keyed.1);
    let mut coupons = vec![keyed.1["id"].as_str().unwrap().to_owned()];
    for user in ["bob", "bob", "carol"] {
        let (s, b) = app.claim(&id, user).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        coupons.push(b["id"].as_str().unwrap().to_owned());
    }
    app.wait_persisted(&id, 4, 20).await;
    // Relayed, so in the holders' indexes (with one of another campaign).
    let other = app.create_campaign(campaign_body(5)).await["id"].as_str().unwrap().to_owned();
    let (s, b) = app.claim(&other, "bob").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let elsewhere = b["id"].as_str().unwrap().to_owned();
    app.wait_relayed(10).await;
    assert_eq!(app.held("bob").await.len(), 3);
    assert_eq!(app.held("carol").await.len(), 1);

    // Not over yet: nothing happens.
    let early = app.archiver().archive(&cid, chrono::Utc::now(), Duration::ZERO).await.unwrap().unwrap();
    assert!(matches!(early, ArchiveOutcome::NotArchivable(_)), "{early}");
    until_over(&ends_at).await;
    // A grace period not yet over: not archived by the automatic pass.
    assert!(app.archiver().pass(chrono::Utc::now(), Duration::from_secs(3600)).await.unwrap().is_empty());
    assert!(app.shard_keys_left(&id).await > 0);

    // The automatic pass with a grace that has passed archives it.
    let done = app.archiver().pass(chrono::Utc::now(), Duration::ZERO).await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(matches!(done[0].1, ArchiveOutcome::Archived { claimed: 4, .. }), "{}", done[0].1);
    assert_eq!(app.shard_keys_left(&id).await, 0, "every per-shard key is deleted");
    assert_eq!(app.outbox_len().await, 0, "the outbox streams are the relay's, untouched and empty");
    // Its grants left the holders' indexes; the other campaign's stays.
    let bob = app.held("bob").await;
    assert_eq!(bob.into_iter().collect::<Vec<_>>(), vec![(elsewhere.clone(), other.clone())]);
    assert!(app.held("carol").await.is_empty(), "the index keeps an archived grant");
    assert!(app.held("keyed").await.is_empty(), "the index keeps an archived grant");

    // Stats from MySQL.
    let st = app.stats(&id).await;
    assert_eq!(
        (st["claimed"].as_u64(), st["remaining"].as_u64(), st["persisted"].as_u64()),
        (Some(4), Some(6), Some(4)),
        "{st}"
    );
    assert_eq!(st["status"], "ended", "{st}");

    // Listed, found and redeemable.
    let mine = app.my_coupons("bob", "").await;
    let listed: Vec<&str> = mine["coupons"].as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert!(listed.contains(&coupons[1].as_str()) && listed.contains(&coupons[2].as_str()), "{mine}");
    let one = app
        .client
        .get(app.url(&format!("/v1/me/coupons/{}", coupons[3])))
        .bearer_auth(app.token("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    let redeem = parts(
        app.client
            .post(app.url(&format!("/v1/coupons/{}/redeem", coupons[3])))
            .bearer_auth(app.token("carol"))
            .json(&json!({"order_id": "o-1", "order_total_cents": 10_000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(redeem.0, StatusCode::OK, "{}", redeem.1);

    // Claims: ended, keyed or not, on an instance whose cache knows the
    // terms and on the service path that reaches Redis (keyed claims).
    assert_error(&app.claim(&id, "dave").await, 410, "ended");
    assert_error(&app.claim_on(0, &id, "dave", Some("k")).await, 410, "ended");
    assert_error(&app.claim_on(0, &id, "keyed", Some("order-2")).await, 410, "ended");
    // The keyed retry still gets its coupon, from its row.
    let replay = app.claim_on(0, &id, "keyed", Some("order-1")).await;
    assert_eq!(replay.0, StatusCode::OK, "a keyed retry of an archived campaign: {}", replay.1);
    assert_eq!(replay.1["id"], keyed.1["id"]);
    // Another user with the same key is not that claim.
    assert_error(&app.claim_on(0, &id, "bob", Some("order-1")).await, 410, "ended");

    // Reconcile compares with what was archived, and repair writes nothing
    // back into Redis.
    let r = app.reconcile(&id, false).await;
    assert!(r.matched(), "{r}");
    assert_eq!(r.archived.map(|a| a.claimed), Some(4), "{r}");
    let r = app.reconcile(&id, true).await;
    assert!(r.matched(), "{r}");
    assert_eq!(app.shard_keys_left(&id).await, 0, "reconcile --repair resurrected an archived campaign: {r}");
    // A row the archive did not count is reported.
    sqlx::query("UPDATE campaigns SET archived_claimed = 3 WHERE id = ?")
        .bind(&id)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    let r = app.reconcile(&id, false).await;
    assert!(!r.matched(), "{r}");
    sqlx::query("UPDATE campaigns SET archived_claimed = 4 WHERE id = ?")
        .bind(&id)
        .execute(app.state.db.pool())
        .await
        .unwrap();

    // Idempotent: again, it is already archived.
    let again = app.archiver().archive(&cid, chrono::Utc::now(), Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(again, ArchiveOutcome::AlreadyArchived { claimed: 4, keys_deleted: 0 });
    let (code, text) = archive_cli(&app, &["--campaign", &id]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("already archived (4 grants)"), "{text}");
    assert_eq!(app.shard_keys_left(&id).await, 0);
}

#[tokio::test]
async fn a_campaign_with_grants_not_persisted_is_not_archived() {
    // No pipeline: the grants stay in the outbox, no row is written.
    let app = spawn_app().await;
    let mut body = campaign_body(5);
    let ends_at = at(2);
    body["ends_at"] = json!(ends_at);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let cid = CampaignId::parse(&id).unwrap();
    assert_eq!(app.claim(&id, "erin").await.0, StatusCode::CREATED);
    until_over(&ends_at).await;
    let o = app.archiver().archive(&cid, chrono::Utc::now(), Duration::ZERO).await.unwrap().unwrap();
    assert!(
        matches!(
            o,
            ArchiveOutcome::NotArchivable(flashgrab::service::archive::Blocker::Unpersisted { granted: 1, rows: 0 })
        ),
        "{o}"
    );
    assert!(app.shard_keys_left(&id).await > 0);
    assert_eq!(app.stats(&id).await["claimed"], 1);
    // The command says so with exit code 1; a bad id is 2, an unknown one 3.
    let (code, text) = archive_cli(&app, &["--campaign", &id, "--after-secs", "0"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("1 granted in redis, 0 rows in mysql"), "{text}");
    let (code, text) = archive_cli(&app, &["--campaign", "nope"]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = archive_cli(&app, &["--campaign", "01JD0000000000000000000009"]);
    assert_eq!(code, Some(3), "{text}");
    // The default grace of the command (60 s) is not over yet.
    let (code, text) = archive_cli(&app, &["--campaign", &id]);
    assert_eq!((code, text.contains("not over long enough")), (Some(1), true), "{text}");
    assert!(app.shard_keys_left(&id).await > 0);
}

/// Bytes of Redis memory per grant (docs/OPERATIONS.md, "Sizing"):
/// `MEMORY USAGE` of one shard's keys before and after N grants, plus the
/// users' holdings index keys the relay writes, on the shared cluster under
/// this test's own prefix; fails if a grant costs more than its budget
/// (1 KiB, index included), so a change that bloats the per-grant data is
/// noticed. The figures are printed:
/// `cargo test -p flashgrab --test api redis_memory_per_grant -- --nocapture`.
#[tokio::test]
async fn redis_memory_per_grant_stays_within_its_budget() {
    const N: u64 = 2000;
    // The relay runs (it writes the index), the persist worker does not.
    let app = TestApp::builder().relay(true).start().await;
    let mut body = campaign_body(N);
    body["shards"] = json!(1);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let c = app.stock_campaign(&id).await;
    let k = app.stock.keys().shard(c.shard_buckets[0], &id, 0);
    let usage = |keys: Vec<String>| {
        let mut conn = app.stock.connection();
        async move {
            let mut total = 0u64;
            for key in keys {
                let n: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                total += n.unwrap_or(0);
            }
            total
        }
    };
    let shard_keys =
        || vec![k.hash.clone(), k.holders.clone(), k.coupons.clone(), k.idem.clone(), k.xout.clone(), k.xin.clone()];
    let before = usage(shard_keys()).await;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let app = app.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(16) {
                // Half the claims keyed, like a typical app's retries.
                let key = (i % 2 == 0).then(|| format!("order-{i:08}"));
                let (s, b) = app.claim_on(0, &id, &format!("user-{i:08}"), key.as_deref()).await;
                assert_eq!(s, StatusCode::CREATED, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = usage(shard_keys()).await;
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / N as f64;
    app.wait_relayed(30).await;
    let index_keys: Vec<String> = (0..N).map(|i| app.stock.keys().held(&format!("user-{i:08}"))).collect();
    let index = usage(index_keys).await;
    println!(
        "{N} grants (half keyed): shard keys {before} -> {after} bytes = {:.0} B/grant; holdings index {index} bytes = {:.0} B/grant ({N} users, one coupon each)",
        per(after, before),
        per(index, 0),
    );
    let total = per(after + index, before);
    assert!(total < 1024.0, "a grant costs {total:.0} bytes of Redis memory");
    for (name, key) in [("holders", &k.holders), ("coupons", &k.coupons), ("idem", &k.idem)] {
        println!("  {name}: {} bytes", usage(vec![key.clone()]).await);
    }
    let done = app.archiver().archive(&CampaignId::parse(&id).unwrap(), chrono::Utc::now(), Duration::ZERO).await;
    println!("  (not archivable while live: {:?})", done.map(|o| o.map(|o| o.to_string())));
}

#[tokio::test]
async fn serve_archives_by_itself_after_the_grace_period() {
    // The first instance runs the pipeline, without the archiver.
    let app = TestApp::builder().pipeline().configure(|s| s.archive_after = None).start().await;
    let mut body = campaign_body(4);
    let ends_at = at(2);
    body["ends_at"] = json!(ends_at);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.claim(&id, "frank").await.0, StatusCode::CREATED);
    app.wait_persisted(&id, 1, 20).await;
    until_over(&ends_at).await;
    assert!(app.shard_keys_left(&id).await > 0);
    // Past the grace of one second (the first pass runs at start).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // An instance with a grace of one second archives it on its first pass.
    let _archiver =
        TestApp::builder().alongside(&app).configure(|s| s.archive_after = Some(Duration::from_secs(1))).start().await;
    let cid = CampaignId::parse(&id).unwrap();
    wait_until(Duration::from_secs(15), "serve archived the campaign", || async {
        app.state.db.archive_state(&cid).await.unwrap().is_some()
    })
    .await;
    wait_until(Duration::from_secs(5), "the keys deleted", || async { app.shard_keys_left(&id).await == 0 }).await;
    let st = app.stats(&id).await;
    assert_eq!((st["claimed"].as_u64(), st["remaining"].as_u64()), (Some(1), Some(3)), "{st}");
    assert!(app.reconcile(&id, false).await.matched());
}
