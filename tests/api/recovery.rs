//! `reconcile --repair` after a failover that lost writes (`fast` mode).
//!
//! A failover is simulated deterministically: the grants are taken out of
//! Redis exactly as a promoted replica that never received them would look
//! (no record, no holder entry, no idempotency key, the unit back in
//! stock), after the pipeline had persisted them. The real failover is in
//! tests/faults. What must hold: reconcile reports the rows Redis lost;
//! the repair writes them back so that nobody can claim again and no unit
//! is sold twice; a unit that was sold again before the repair is reported
//! as an oversell.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use flashgrab::domain::CouponRecord;

/// Takes `r` out of Redis as a failover that lost it would have left the
/// shard: record, holder entry and idempotency key gone, unit back.
async fn lose(app: &TestApp, r: &CouponRecord) {
    let c = app.stock_campaign(&r.campaign_id).await;
    let k = app.stock.keys().shard(c.shard_buckets[r.shard as usize], &r.campaign_id, r.shard);
    let script = redis::Script::new(
        r"
        redis.call('HDEL', KEYS[3], ARGV[1])
        local held = redis.call('HGET', KEYS[2], ARGV[2]) or ''
        local left = {}
        for id in string.gmatch(held, '[^,]+') do
          if id ~= ARGV[1] then left[#left + 1] = id end
        end
        if #left == 0 then redis.call('HDEL', KEYS[2], ARGV[2])
        else redis.call('HSET', KEYS[2], ARGV[2], table.concat(left, ',')) end
        if ARGV[3] ~= '' then redis.call('HDEL', KEYS[4], ARGV[2] .. '\n' .. ARGV[3]) end
        return redis.call('HINCRBY', KEYS[1], 'remaining', 1)
        ",
    );
    let mut inv = script.key(&k.hash);
    inv.key(&k.holders).key(&k.coupons).key(&k.idem);
    inv.arg(&r.id).arg(&r.user_id).arg(r.idempotency_key.as_deref().unwrap_or(""));
    let _: i64 = inv.invoke_async(&mut app.stock.connection()).await.unwrap();
}

/// Moves one unit from shard `from` to shard `to` (as a borrow would).
async fn move_unit(app: &TestApp, campaign: &str, from: u32, to: u32) {
    let c = app.stock_campaign(campaign).await;
    let mut conn = app.stock.connection();
    for (s, by) in [(from, -1), (to, 1)] {
        let k = app.stock.keys().shard(c.shard_buckets[s as usize], campaign, s);
        let _: i64 = redis::cmd("HINCRBY").arg(&k.hash).arg("remaining").arg(by).query_async(&mut conn).await.unwrap();
    }
}

async fn records(app: &TestApp, campaign: &str) -> Vec<CouponRecord> {
    let c = app.stock_campaign(campaign).await;
    app.stock.campaign_records(&c).await.unwrap()
}

fn ids_of(v: &serde_json::Value) -> HashSet<String> {
    v["coupons"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_gives_redis_back_the_grants_a_failover_lost() {
    let app = spawn_pipeline_app().await;
    let mut body = campaign_body(10);
    body["shards"] = json!(2);
    body["per_user_limit"] = json!(2);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let mut granted = HashSet::new();
    for key in ["a", "b"] {
        let got = app.claim_on(0, &id, "keyed", Some(key)).await;
        assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
        granted.insert(got.1["id"].as_str().unwrap().to_owned());
    }
    for u in 1..=4 {
        for _ in 0..2 {
            let got = app.claim(&id, &format!("u{u}")).await;
            assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
            granted.insert(got.1["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(granted.len(), 10);
    app.wait_persisted(&id, 10, 60).await;
    let u1_before = ids_of(&app.my_coupons("u1", "").await);

    // The failover: three persisted grants vanish from Redis (keyed's "a",
    // both of u1's); one freed unit was then moved to the other shard.
    let all = records(&app, &id).await;
    let lost: Vec<&CouponRecord> = all
        .iter()
        .filter(|r| r.user_id == "u1" || (r.user_id == "keyed" && r.idempotency_key.as_deref() == Some("a")))
        .collect();
    assert_eq!(lost.len(), 3);
    for r in &lost {
        lose(&app, r).await;
    }
    let u1_shard = lost.iter().find(|r| r.user_id == "u1").unwrap().shard;
    move_unit(&app, &id, u1_shard, 1 - u1_shard).await;
    assert_eq!(app.stats(&id).await["remaining"], 3);

    let report = app.reconcile(&id, false).await;
    assert!(!report.matched(), "{report}");
    let forgotten: HashSet<&str> = report.forgotten.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(forgotten, lost.iter().map(|r| r.id.as_str()).collect(), "{report}");
    assert!(report.extra.is_empty() && report.missing.is_empty(), "{report}");
    assert!(report.to_string().contains("lost in redis:    3"), "{report}");

    let repaired = app.reconcile(&id, true).await;
    assert_eq!(repaired.restored, 3, "{repaired}");
    assert!(repaired.resold.is_empty() && repaired.oversold == 0, "{repaired}");
    assert!(repaired.matched(), "{repaired}");
    let st = app.stats(&id).await;
    assert_eq!((st["remaining"].as_u64(), st["claimed"].as_u64()), (Some(0), Some(10)), "{st}");
    // A second repair finds nothing to do.
    let again = app.reconcile(&id, true).await;
    assert!(again.forgotten.is_empty() && again.matched(), "{again}");
    assert_eq!(app.stats(&id).await["remaining"], 0);

    // The second wave, by the same users: nothing is granted twice, and the
    // keyed retry finds its coupon again.
    let lost_a = lost.iter().find(|r| r.user_id == "keyed").unwrap();
    let replay = app.claim_on(0, &id, "keyed", Some("a")).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.1);
    assert_eq!(replay.1["id"], lost_a.id.as_str());
    assert_error(&app.claim_on(0, &id, "keyed", None).await, 409, "limit_reached");
    for u in 1..=4 {
        // A key makes the claim reach Redis even where the sell-out is
        // remembered: the holder entry is what refuses it.
        let got = app.claim_on(0, &id, &format!("u{u}"), Some("second-wave")).await;
        assert_error(&got, 409, "limit_reached");
    }
    assert_eq!(ids_of(&app.my_coupons("u1", "").await), u1_before);
    let st = app.stats(&id).await;
    assert_eq!((st["remaining"].as_u64(), st["claimed"].as_u64()), (Some(0), Some(10)), "{st}");
    assert_eq!(app.state.db.campaign_coupons(&id).await.unwrap().len(), 10);
    assert!(app.reconcile(&id, false).await.matched());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_reports_a_unit_that_was_sold_again_after_the_loss() {
    let app = spawn_pipeline_app().await;
    let mut body = campaign_body(4);
    body["shards"] = json!(2);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    for u in 0..4 {
        assert_eq!(app.claim(&id, &format!("s{u}")).await.0, StatusCode::CREATED);
    }
    app.wait_persisted(&id, 4, 60).await;
    let all = records(&app, &id).await;
    let victim = all.iter().find(|r| r.user_id == "s0").unwrap().clone();
    lose(&app, &victim).await;
    // Before anyone repairs, s0 claims again: Redis has forgotten the first
    // coupon, so the unit it freed is granted a second time.
    let second = app.claim_on(0, &id, "s0", Some("after-the-failover")).await;
    assert_eq!(second.0, StatusCode::CREATED, "{}", second.1);
    app.wait_persisted(&id, 5, 60).await;

    let repaired = app.reconcile(&id, true).await;
    assert_eq!(repaired.restored, 1, "{repaired}");
    assert_eq!(repaired.resold, vec![victim.id.clone()], "{repaired}");
    assert_eq!(repaired.oversold, 1, "{repaired}");
    assert_eq!(repaired.over_limit, vec![("s0".to_owned(), 2)], "{repaired}");
    assert!(repaired.agrees() && !repaired.matched(), "{repaired}");
    let text = repaired.to_string();
    assert!(text.contains("OVERSOLD by 1") && text.contains("over limit s0 holds 2"), "{text}");
    // Redis holds both again: s0 can claim no third one.
    assert_error(&app.claim_on(0, &id, "s0", Some("third")).await, 409, "already_claimed");
    let st = app.stats(&id).await;
    assert_eq!((st["remaining"].as_u64(), st["claimed"].as_u64()), (Some(0), Some(5)), "{st}");
}
