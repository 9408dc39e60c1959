//! A claim script call that runs twice. The cluster client resends a call
//! after a dropped connection or an I/O error (`.retries(3)`), and the
//! master may already have executed the first copy: the second run must
//! answer the first outcome and change nothing (DESIGN.md, "Failure model,
//! made precise").
//!
//! The connection-kill burst runs on a private cluster (own redis-server
//! processes): killing every client connection of the shared masters in a
//! loop would break every other test running meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashgrab::domain::{CouponId, UserId};
use flashgrab::stock::{Durability, ShardClaim, StockStore};
use redis::Value;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::app::*;
use crate::support::cluster::PrivateCluster;

/// Everything a claim can change on a shard, as plain data.
async fn shard_state(app: &TestApp, campaign: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let c = app.stock_campaign(campaign).await;
    let k = app.stock.keys().shard(c.shard_buckets[0], campaign, 0);
    let mut conn = app.stock.connection();
    let mut out = Vec::new();
    for key in [&k.hash, &k.holders, &k.coupons, &k.idem] {
        let all: BTreeMap<String, String> = redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.unwrap();
        out.push((key.clone(), all));
    }
    let xlen: u64 = redis::cmd("XLEN").arg(&k.outbox).query_async(&mut conn).await.unwrap();
    out.push((k.outbox.clone(), BTreeMap::from([("xlen".to_owned(), xlen.to_string())])));
    out
}

/// Runs `lua/claim.lua` once on shard 0 of `campaign` for `claims`
/// (user, coupon id, key), exactly as the store sends it.
async fn run_claim_script(app: &TestApp, campaign: &str, claims: &[(String, String, String)]) -> Value {
    let c = app.stock_campaign(campaign).await;
    let k = app.stock.keys().shard(c.shard_buckets[0], campaign, 0);
    let script = redis::Script::new(include_str!("../../lua/claim.lua"));
    let mut inv = script.key(&k.hash);
    inv.key(&k.holders).key(&k.coupons).key(&k.idem).key(&k.outbox).arg(campaign).arg(0);
    for (user, coupon, key) in claims {
        inv.arg(user).arg(coupon).arg(key);
    }
    inv.invoke_async(&mut app.stock.connection()).await.unwrap()
}

fn codes(v: &Value) -> Vec<i64> {
    let Value::Array(replies) = v else { panic!("not an array: {v:?}") };
    replies
        .iter()
        .map(|r| match r {
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(code)) => *code,
                other => panic!("no code: {other:?}"),
            },
            other => panic!("not a reply: {other:?}"),
        })
        .collect()
}

/// One batch (a user at the limit of 3 and past it, a keyed claim and its
/// replay in the same batch, the stock selling out inside the batch), run
/// twice: the same answers, the same state. Then run again after the close:
/// the grants are still answered as granted, the replay as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_batch_run_twice_answers_the_same_and_changes_nothing() {
    let app = spawn_app().await;
    let mut body = campaign_body(4);
    body["shards"] = json!(1);
    body["per_user_limit"] = json!(3);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let claim = |user: &str, key: &str| (user.to_owned(), CouponId::generate().to_string(), key.to_owned());
    let batch = vec![
        claim("u1", ""),
        claim("u1", ""),
        claim("u1", ""),
        claim("u1", ""),
        claim("u2", "k"),
        claim("u2", "k"),
        claim("u3", ""),
        claim("u4", "k"),
    ];
    let first = run_claim_script(&app, &id, &batch).await;
    assert_eq!(codes(&first), vec![1, 1, 1, 3, 1, 2, 6, 6]);
    let after_first = shard_state(&app, &id).await;

    let second = run_claim_script(&app, &id, &batch).await;
    assert_eq!(second, first, "a re-run answers exactly what the first run answered");
    assert_eq!(shard_state(&app, &id).await, after_first, "a re-run changes nothing");
    let st = app.stats(&id).await;
    assert_eq!((st["remaining"].as_u64(), st["claimed"].as_u64()), (Some(0), Some(4)), "{st}");

    // After the close the grants of the batch are still what they were.
    let closed = parts(app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await).await;
    assert_eq!(closed.0, StatusCode::OK, "{}", closed.1);
    let third = run_claim_script(&app, &id, &batch).await;
    assert_eq!(codes(&third), vec![1, 1, 1, 5, 1, 2, 5, 5]);
    let (Value::Array(a), Value::Array(b)) = (&first, &third) else { unreachable!() };
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(a[i], b[i], "claim {i}: the same record");
    }
    let mut state = shard_state(&app, &id).await;
    state[0].1.remove("closed");
    let mut expected = after_first.clone();
    expected[0].1.remove("closed");
    assert_eq!(state, expected);
}

/// The same through the store in `replicated` mode (script and WAIT in one
/// pipeline): the re-run is answered granted with the first record, after
/// a WAIT that a replica acknowledged, and the unit is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_claim_run_twice_is_granted_once() {
    let app = spawn_app().await;
    let mut body = campaign_body(5);
    body["shards"] = json!(1);
    body["per_user_limit"] = json!(3);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let c = app.stock_campaign(&id).await;
    let nodes: Vec<String> = redis_nodes().split(',').map(str::to_owned).collect();
    let store = StockStore::connect(&nodes, &app.prefix, Duration::from_secs(3))
        .await
        .unwrap()
        .with_durability(Durability::Replicated { wait: Duration::from_secs(2) })
        .with_claim_batch(1);
    let user = UserId::parse("twice").unwrap();
    let coupon = CouponId::generate();
    let first = store.claim_on_shard(&c, 0, &user, &coupon, None).await.unwrap();
    let ShardClaim::Granted(record) = &first else { panic!("{first:?}") };
    assert_eq!(record.id, coupon.as_str());
    let second = store.claim_on_shard(&c, 0, &user, &coupon, None).await.unwrap();
    assert_eq!(second, first, "the re-run answers the first grant");
    let st = app.stats(&id).await;
    assert_eq!((st["remaining"].as_u64(), st["claimed"].as_u64()), (Some(4), Some(1)), "{st}");
    let held = app.stock.user_coupons(&c, &user).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
}

// ---------------------------------------------------------------------------
// A burst while every client connection of every master is killed in a loop.
// ---------------------------------------------------------------------------

/// Until stopped, for at most `KILLING`: `CLIENT KILL TYPE normal` on every
/// master, every few milliseconds (the killer's own connection is skipped).
/// Bounded so that a slow machine still finishes the burst once the kills
/// stop. Returns how many connections were killed.
fn kill_connections(ports: Vec<u16>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    const KILLING: Duration = Duration::from_secs(8);
    tokio::spawn(async move {
        let mut conns = Vec::new();
        for p in &ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap();
            conns.push(client.get_multiplexed_async_connection().await.unwrap());
        }
        let mut killed = 0u64;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < KILLING {
            for c in &mut conns {
                let n: u64 =
                    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query_async(c).await.unwrap_or(0);
                killed += n;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        killed
    })
}

/// Limit 3, users coming back for more, the stock selling out, while every
/// client connection of every master is killed in a loop: the client
/// resends script calls whose first copy may have run. At rest nothing was
/// granted twice: `remaining + claimed == total_stock`, no user lists a
/// coupon twice or holds more than 3, every 201 is in Redis, and MySQL has
/// exactly one row per grant (reconcile matches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_3_burst_under_connection_kills_grants_nothing_twice() {
    let cluster = PrivateCluster::start().await;
    let nodes = cluster.nodes();
    let app = TestApp::builder()
        .pipeline()
        .configure(move |s| {
            s.redis_nodes = nodes.clone();
            s.redis_timeout = Duration::from_millis(1000);
        })
        .start()
        .await;
    const STOCK: u64 = 1200;
    const USERS: usize = 500;
    let mut body = campaign_body(STOCK);
    body["shards"] = json!(3);
    body["per_user_limit"] = json!(3);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let killer = kill_connections(cluster.ports.clone(), stop.clone());
    let unavailable = Arc::new(AtomicU64::new(0));
    // 16 workers; each takes users in turn and claims for them until the
    // user is refused (limit) or the stock is gone. 503s are retried.
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (app, id, unavailable) = (app.clone(), id.clone(), unavailable.clone());
            tokio::spawn(async move {
                let mut granted: Vec<(String, String)> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                for u in (w..USERS).step_by(16) {
                    let user = format!("r{u}");
                    loop {
                        assert!(Instant::now() < deadline, "the burst did not finish");
                        let r = app
                            .client
                            .post(app.url(&format!("/v1/campaigns/{id}/claim")))
                            .bearer_auth(app.token(&user))
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        let Ok(r) = r else { continue };
                        match r.status() {
                            StatusCode::CREATED => {
                                let b: serde_json::Value = r.json().await.unwrap();
                                granted.push((user.clone(), b["id"].as_str().unwrap().to_owned()));
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {
                                unavailable.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            StatusCode::CONFLICT | StatusCode::GONE => break,
                            other => panic!("claim for {user}: {other} {}", r.text().await.unwrap_or_default()),
                        }
                    }
                }
                granted
            })
        })
        .collect();
    let mut answered: Vec<(String, String)> = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let killed = killer.await.unwrap();
    // How many kills land depends on how long the burst lasts (it ran in
    // 2 s on a loaded CI machine and 38 landed): the test needs kills
    // during the burst, not a number of them.
    assert!(killed >= 5, "the connections were killed ({killed})");
    eprintln!(
        "killed {killed} connections, {} answers 503, {} answers 201",
        unavailable.load(Ordering::Relaxed),
        answered.len()
    );

    // At rest, in Redis (the breaker may still be open for a moment).
    let c = app.stock_campaign(&id).await;
    crate::support::wait::wait_until(Duration::from_secs(10), "stats answering after the kills stopped", || async {
        app.get_admin(&format!("/v1/campaigns/{id}/stats")).await.status() == StatusCode::OK
    })
    .await;
    let st = app.stats(&id).await;
    let claimed = st["claimed"].as_u64().unwrap();
    assert_eq!(st["remaining"].as_u64().unwrap() + claimed, STOCK, "stock not conserved: {st}");
    assert_eq!(claimed, STOCK, "the burst sold out: {st}");
    let records = app.stock.campaign_records(&c).await.unwrap();
    let in_redis: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *per_user.entry(r.user_id.as_str()).or_default() += 1;
    }
    for u in 0..USERS {
        let user = UserId::parse(&format!("r{u}")).unwrap();
        let k = app.stock.keys().shard(
            c.shard_buckets[flashgrab::domain::campaign::home_shard(user.as_str(), c.shards()) as usize],
            &id,
            flashgrab::domain::campaign::home_shard(user.as_str(), c.shards()),
        );
        let held: Option<String> = redis::cmd("HGET")
            .arg(&k.holders)
            .arg(user.as_str())
            .query_async(&mut app.stock.connection())
            .await
            .unwrap();
        let held: Vec<&str> = held.as_deref().map(|h| h.split(',').collect()).unwrap_or_default();
        let unique: HashSet<&&str> = held.iter().collect();
        assert_eq!(unique.len(), held.len(), "{user} lists a coupon twice: {held:?}");
        assert!(held.len() <= 3, "{user} holds {held:?}");
        assert_eq!(per_user.get(user.as_str()).copied().unwrap_or(0), held.len(), "{user}: records vs holder entry");
    }
    let mut answered_per_user: HashMap<&str, usize> = HashMap::new();
    for (user, coupon) in &answered {
        assert!(in_redis.contains(coupon.as_str()), "{coupon} was answered 201 but is not in Redis");
        *answered_per_user.entry(user.as_str()).or_default() += 1;
    }
    assert!(answered_per_user.values().all(|n| *n <= 3), "a user got more than three 201s");
    let unique_answers: HashSet<&String> = answered.iter().map(|(_, c)| c).collect();
    assert_eq!(unique_answers.len(), answered.len(), "the same coupon answered 201 twice");

    // And in MySQL.
    app.wait_persisted(&id, claimed, 60).await;
    let rows = app.state.db.campaign_coupons(&id).await.unwrap();
    assert_eq!(rows.len() as u64, claimed);
    let report = app.reconcile(&id, false).await;
    assert!(report.matched(), "{report}");
}
