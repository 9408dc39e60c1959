//! One bad record never takes good claims with it (DESIGN.md, "Failure
//! model"): claims of campaigns whose coupons the pipeline cannot store,
//! and rows MySQL refuses, pile up in the outbox next to good claims while
//! RabbitMQ is stopped, so that they travel in the same messages once it
//! is back. Every 201 of the good claims reaches MySQL; each bad record is
//! in the dead-letter queue alone, with its reason; `flashgrab dlq list`
//! shows them; after the cause is fixed `flashgrab dlq replay` brings them
//! back and they are stored, exactly once.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use flashgrab::domain::{Campaign, CampaignId, CouponTerms, Discount};
use flashgrab::persist::dlq::{self, DlqListing};
use flashgrab::queue::topology::{CLAIM_ROUTING_KEY, Topology};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::*;

const AMQP_TIMEOUT: Duration = Duration::from_secs(5);

fn amqp_url() -> String {
    std::env::var("FLASHGRAB_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A campaign the API would refuse, written straight to Redis and MySQL (as
/// one created before the API checked the range would be): live now.
async fn unstorable_campaign(
    app: &TestApp,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
) -> String {
    let id = CampaignId::generate();
    let map = app.stock.slot_map().await.unwrap();
    let shard_buckets = flashgrab::stock::placement::place_shards(app.stock.keys(), &map, 2, 7).unwrap();
    let now = Utc::now();
    let c = Campaign {
        id: id.clone(),
        name: "unstorable".into(),
        total_stock: 100,
        per_user_limit: 1,
        starts_at: now - chrono::Duration::seconds(5),
        ends_at: now + chrono::Duration::hours(1),
        closed_at: None,
        coupon: CouponTerms {
            discount: Discount::Fixed { amount_cents: 500 },
            min_spend_cents: 0,
            applies_to: Default::default(),
            valid_for_days: valid_until.is_none().then_some(7),
            valid_until,
            valid_from,
        },
        shard_buckets,
        created_at: now,
        tally: Default::default(),
    };
    app.stock.init_campaign(&c).await.unwrap();
    app.state.db.insert_campaign(&c).await.unwrap();
    id.to_string()
}

/// Claims as each user (concurrently); the coupon ids answered 201.
async fn grant_all(app: &TestApp, campaign: &str, users: &[String]) -> Vec<String> {
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (app, campaign, u) = (app.clone(), campaign.to_owned(), u.clone());
            // Keyed, so a 503 ("maybe granted") of a cluster still settling
            // after an earlier test's failover is asked again without
            // granting twice: the retry answers the first outcome.
            let key = format!("{campaign}-{i}-{u}");
            tokio::spawn(async move {
                for _ in 0..100 {
                    let got = app.claim_on(0, &campaign, &u, Some(&key)).await;
                    if got.0 != StatusCode::SERVICE_UNAVAILABLE {
                        return got;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("{u}: still 503 after 10 s");
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status} {body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// The number in a line such as "replayed 37 messages" after `prefix`.
fn count_after(text: &str, prefix: &str) -> u64 {
    let rest = text.strip_prefix(prefix).unwrap_or_else(|| panic!("want {prefix:?} first: {text}"));
    rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count: {text}"))
}

async fn rows(app: &TestApp, campaign: &str) -> Vec<String> {
    app.state.db.campaign_coupons(campaign).await.unwrap().into_iter().map(|r| r.id).collect()
}

/// Polls until the campaign has exactly `want` rows (bounded).
async fn wait_rows(app: &TestApp, campaign: &str, want: usize, secs: u64) -> Vec<String> {
    support::wait::wait_for(Duration::from_secs(secs), &format!("campaign {campaign} with {want} rows"), || async {
        let got = rows(app, campaign).await;
        if got.len() == want { Ok(got) } else { Err(format!("{} rows", got.len())) }
    })
    .await
}

/// Polls the dead-letter queue until the coupon ids it holds are exactly
/// `want` (bounded). The pipeline is at least once: a message redelivered
/// to the worker (e.g. re-sent by a relay after the broker came back) can
/// be dead-lettered twice, so ids count, not messages.
async fn wait_dead_letters(prefix: &str, want: &HashSet<String>, secs: u64) -> DlqListing {
    let what = format!("the dead-letter queue holding exactly {want:?}");
    support::wait::wait_for(Duration::from_secs(secs), &what, || async {
        match dlq::list(&amqp_url(), prefix, 10_000, AMQP_TIMEOUT).await {
            Ok(l) if ids_by_reason(&l).into_values().flatten().collect::<HashSet<_>>() == *want => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Coupon ids of the listed records, per reason.
fn ids_by_reason(l: &DlqListing) -> BTreeMap<String, HashSet<String>> {
    let mut out: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for d in &l.first {
        for r in &d.records {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            out.entry(d.reason.clone()).or_default().insert(v["id"].as_str().unwrap_or("?").to_owned());
        }
    }
    out
}

/// `flashgrab dlq <args>` with only the settings it needs.
fn dlq_binary(args: &[&str], prefix: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flashgrab"))
        .arg("dlq")
        .args(args)
        .env_clear()
        .env("FLASHGRAB_AMQP_URL", amqp_url())
        .env("FLASHGRAB_KEY_PREFIX", prefix)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// A claims message as a relay would send it, mixing good and bad records.
async fn publish_raw(prefix: &str, body: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "rabbitmq is not back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let t = Topology::new(prefix);
    let confirm = ch
        .basic_publish(
            t.claims_exchange.as_str().into(),
            CLAIM_ROUTING_KEY.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack() && confirm.take_message().is_none());
    let _ = conn.close(200, "bye".into()).await;
}

fn record(id: &str, campaign: &str, user: &str, valid_until_ms: i64) -> String {
    let now = Utc::now().timestamp_millis();
    json!({"id": id, "campaign_id": campaign, "user_id": user, "shard": 0,
           "claimed_at_ms": now, "valid_from_ms": now, "valid_until_ms": valid_until_ms})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_alone_and_replayed_after_the_fix() {
    let _guard = STACK.lock().await;
    let app = spawn_pipeline_app().await;
    let mut body = campaign_body(400);
    body["per_user_limit"] = json!(2);
    body["shards"] = json!(4);
    let normal = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let far = "9999-12-31T23:59:59.999Z".parse().unwrap();
    let too_late = unstorable_campaign(&app, None, Some(far)).await;
    let too_early = unstorable_campaign(&app, Some("1969-07-20T20:17:40Z".parse().unwrap()), None).await;
    // Rows of users "poison-*" are refused by MySQL itself, for good (3819 /
    // 4025), until the "schema fix" below.
    sqlx::query("ALTER TABLE coupons ADD CONSTRAINT fg_test_poison CHECK (user_id NOT LIKE 'poison-%')")
        .execute(app.state.db.pool())
        .await
        .unwrap();
    // The pipeline is up and running before the broker stops.
    let mut good = grant_all(&app, &normal, &["warm-0".into(), "warm-1".into()]).await;
    wait_rows(&app, &normal, 2, 30).await;

    let rabbit = RabbitGuard;
    rabbitmqctl("stop_app");
    let users = |tag: &str, n: usize| (0..n).map(|i| format!("{tag}-{i}")).collect::<Vec<_>>();
    // Good users, some of them twice (per_user_limit 2).
    let mut twice = users("good", 120);
    twice.extend(users("good", 40));
    good.extend(grant_all(&app, &normal, &twice).await);
    let poison = grant_all(&app, &normal, &users("poison", 20)).await;
    let late = grant_all(&app, &too_late, &users("late", 15)).await;
    let early = grant_all(&app, &too_early, &users("early", 15)).await;
    good.extend(grant_all(&app, &normal, &users("good2", 30)).await);
    rabbitmqctl("start_app");
    drop(rabbit);

    // And one message as an older relay would have packed it: a good record
    // (of a campaign with no shards, so only MySQL knows it), a record whose
    // time MySQL could hold but the pipeline does not accept, one that is
    // not a claim record, and a good one already stored (a redelivery).
    let stray = CampaignId::generate().to_string();
    let stray_good = CampaignId::generate().to_string();
    let stray_bad = CampaignId::generate().to_string();
    let day = 86_400_000;
    let mixed = flashgrab::queue::claims_body(&[
        &record(&stray_good, &stray, "stray-good", Utc::now().timestamp_millis() + day),
        &record(&stray_bad, &stray, "stray-bad", 253_402_300_799_999),
        r#"{"id":"not-a-record"}"#,
        &serde_json::to_string(&app.state.db.campaign_coupons(&normal).await.unwrap()[0].to_record()).unwrap(),
    ]);
    publish_raw(&app.prefix, &mixed).await;

    // Every 201 of the good claims is in MySQL, once; nothing else is.
    let stored = wait_rows(&app, &normal, good.len(), 90).await;
    assert_eq!(stored.iter().collect::<HashSet<_>>(), good.iter().collect::<HashSet<_>>(), "rows are the good 201s");
    assert_eq!(wait_rows(&app, &stray, 1, 30).await, std::slice::from_ref(&stray_good));

    // Each bad record is dead-lettered alone, with its reason.
    let bad_ids: HashSet<String> =
        poison.iter().chain(&late).chain(&early).cloned().chain([stray_bad.clone(), "not-a-record".into()]).collect();
    let listing = wait_dead_letters(&app.prefix, &bad_ids, 60).await;
    let bad = bad_ids.len() as u64;
    assert!(listing.messages >= bad && listing.claims == listing.messages, "one record per message: {listing}");
    assert!(listing.first.iter().all(|d| d.records.len() == 1), "{listing}");
    let by_reason = ids_by_reason(&listing);
    let reason_of = |id: &str| by_reason.iter().find(|(_, ids)| ids.contains(id)).map(|(r, _)| r.clone());
    for id in &late {
        let r = reason_of(id).unwrap();
        assert!(r.starts_with("valid_until_ms outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z"), "{r}");
    }
    for id in &early {
        let r = reason_of(id).unwrap();
        assert!(r.starts_with("valid_from_ms outside"), "{r}");
    }
    for id in &poison {
        let r = reason_of(id).unwrap();
        assert!(r.starts_with("mysql refused the row") && r.contains("fg_test_poison"), "{r}");
    }
    assert!(reason_of(&stray_bad).unwrap().starts_with("valid_until_ms outside"));
    assert!(reason_of("not-a-record").unwrap().starts_with("not a claim record"));
    assert!(rows(&app, &too_late).await.is_empty() && rows(&app, &too_early).await.is_empty());
    let per_reason: u64 = listing.by_reason.iter().map(|(_, n)| n).sum();
    assert_eq!(per_reason, listing.messages);

    // What the operator sees: counts per reason, the first records.
    let (code, text) = dlq_binary(&["list", "--limit", "3"], &app.prefix);
    assert_eq!(code, Some(1), "{text}");
    let queue = Topology::new(&app.prefix).dead_letter_queue;
    // At least once: a message the relay re-sent after the broker came back
    // can be dead-lettered again after the listing above, so counts only grow.
    let listed = count_after(&text, &format!("dead-letter queue {queue}: "));
    assert!(listed >= listing.messages, "{text}");
    assert!(text.contains("messages per reason:") && text.contains("  valid_until_ms outside"), "{text}");
    assert!(text.contains("  mysql refused the row: error ") && text.contains("first 3 records:"), "{text}");
    // Listing takes nothing away.
    assert!(dlq::list(&amqp_url(), &app.prefix, 0, AMQP_TIMEOUT).await.unwrap().messages >= listed);

    // The schema fix, then the replay: the refused rows are stored; what is
    // still unstorable comes back to the dead-letter queue with its reason.
    sqlx::query("ALTER TABLE coupons DROP CONSTRAINT fg_test_poison").execute(app.state.db.pool()).await.unwrap();
    let (code, text) = dlq_binary(&["replay"], &app.prefix);
    assert_eq!(code, Some(0), "{text}");
    assert!(count_after(&text, "replayed ") >= listed, "{text}");
    let all: HashSet<String> = good.iter().chain(&poison).cloned().collect();
    let stored = wait_rows(&app, &normal, all.len(), 60).await;
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), all, "the replayed rows are stored once");
    let unstorable: HashSet<String> = bad_ids.iter().filter(|id| !poison.contains(id)).cloned().collect();
    // Every unstorable record is back. A poison record the worker was still
    // refusing while the fix and the replay ran (a redelivery: at least
    // once) can be dead-lettered after the replay took the queue, with the
    // old reason: only poison ids may carry it, and they are stored already.
    let what = format!("the dead-letter queue back to {unstorable:?} (plus late poison)");
    support::wait::wait_for(Duration::from_secs(60), &what, || async {
        let l = dlq::list(&amqp_url(), &app.prefix, 10_000, AMQP_TIMEOUT).await.map_err(|e| e.to_string())?;
        let (late, other): (Vec<_>, Vec<_>) =
            ids_by_reason(&l).into_iter().partition(|(reason, _)| reason.starts_with("mysql"));
        let other: HashSet<String> = other.into_iter().flat_map(|(_, ids)| ids).collect();
        let late_ok = late.iter().flat_map(|(_, ids)| ids).all(|id| poison.contains(id));
        if other == unstorable && late_ok { Ok(l) } else { Err(format!("{l:?}")) }
    })
    .await;
    // Replaying again changes nothing in MySQL (late poison records are
    // stored once), and leaves exactly the unstorable ones.
    assert_eq!(dlq_binary(&["replay"], &app.prefix).0, Some(0));
    let back = wait_dead_letters(&app.prefix, &unstorable, 60).await;
    assert!(back.first.iter().all(|d| !d.reason.starts_with("mysql")), "{back}");
    assert_eq!(rows(&app, &normal).await.len(), all.len());
    assert!(app.reconcile(&normal, false).await.matched());
    let (code, text) = dlq_binary(&["list"], "no-such-prefix");
    assert_eq!(code, Some(3), "{text}");
}
