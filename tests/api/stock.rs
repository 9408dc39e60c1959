//! Stock moving between shards (src/stock/rebalance.rs): the sold-out proof
//! under a crowd, transfers interrupted by a crash and recovered, stats that
//! count a unit once. The protocol itself is model-checked by
//! `scripts/model-check` (src/stock/rebalance.pml); these tests run it.

use std::time::{Duration, Instant};

use flashgrab::domain::Campaign;
use flashgrab::stock::{Durability, StockError, StockStore};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::cluster::PrivateCluster;

fn campaign_with(stock: u64, shards: u64) -> Value {
    let mut b = campaign_body(stock);
    b["shards"] = json!(shards);
    b
}

/// `n` instances sharing one prefix and database, with room for a crowd
/// (no shedding: a 503 would only be retried).
async fn crowd_apps(n: usize) -> TestApp {
    TestApp::builder()
        .instances(n)
        .configure(|s| {
            s.protect.max_in_flight = 100_000;
            s.protect.claim_rate = None;
            // Two cores shared with builds: a slow answer is not an outage here.
            s.redis_timeout = Duration::from_secs(10);
            s.protect.breaker_failures = 100_000;
        })
        .start()
        .await
}

/// One claim per user, all at once, spread over the instances; 503s are
/// retried (bounded). Returns (granted, sold_out) counts.
async fn crowd(app: &TestApp, campaign: &str, users: usize, tag: &str) -> (usize, usize) {
    let tasks: Vec<_> = (0..users)
        .map(|i| {
            let app = app.clone();
            let campaign = campaign.to_owned();
            let user = format!("{tag}-{i}");
            tokio::spawn(async move {
                for _ in 0..200 {
                    let got = app.claim_on(i, &campaign, &user, None).await;
                    if got.0 != StatusCode::SERVICE_UNAVAILABLE {
                        return got;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{user} got 503 two hundred times in a row");
            })
        })
        .collect();
    let (mut granted, mut sold_out) = (0, 0);
    for t in tasks {
        let got = t.await.unwrap();
        match got.0.as_u16() {
            201 => granted += 1,
            410 => {
                assert_error(&got, 410, "sold_out");
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {}", got.1),
        }
    }
    (granted, sold_out)
}

/// The campaign's stats (a 503 is retried: a backend may be busy).
async fn stats(app: &TestApp, id: &str) -> Value {
    for _ in 0..50 {
        let r = app.get_admin(&format!("/v1/campaigns/{id}/stats")).await;
        let (status, body) = parts(r).await;
        if status == StatusCode::OK {
            return body;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stats answered 503 fifty times");
}

/// Stats at rest: every unit counted once, nothing in flight.
async fn assert_at_rest(app: &TestApp, id: &str, claimed: u64) -> Value {
    let st = stats(app, id).await;
    assert_eq!(st["claimed"], claimed, "{st}");
    assert_eq!(st["remaining"].as_u64().unwrap() + claimed, st["total_stock"].as_u64().unwrap(), "{st}");
    for s in st["shards"].as_array().unwrap() {
        assert_eq!(s["in_flight"], 0, "{st}");
    }
    st
}

/// 16 shards holding one unit each and a crowd far larger than the stock,
/// on four instances at once: nearly every claim lands on a dry shard, so
/// units move back and forth between shards during the whole tail of the
/// drop while other claims scan for stock. A `sold_out` concluded while a
/// unit was moving between two shards is broadcast and every instance then
/// answers 410 from memory with that unit still in Redis: never allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_shards_sell_out_completely_under_a_crowd() {
    let app = crowd_apps(4).await;
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 4 || (rounds < 40 && started.elapsed() < Duration::from_secs(15)) {
        let id = app.create_campaign(campaign_with(16, 16)).await["id"].as_str().unwrap().to_owned();
        let (granted, sold_out) = crowd(&app, &id, 1500, &format!("r{rounds}")).await;
        let st = stats(&app, &id).await;
        assert_eq!(
            granted, 16,
            "round {rounds}: {sold_out} answered sold_out while {} units remained: {st}",
            st["remaining"]
        );
        assert_at_rest(&app, &id, 16).await;
        rounds += 1;
    }
    eprintln!("{rounds} drops of 16 units on 16 shards sold out completely");
}

/// Runs `lua/give.lua` for a transfer by hand: a process that dies right
/// after the give, before deleting the journal entry.
async fn give_only(stock: &StockStore, c: &Campaign, dest: u32, id: &str, units: u64) {
    let k = stock.keys().shard(c.shard_buckets[dest as usize], c.id.as_str(), dest);
    let applied: i64 = redis::Script::new(include_str!("../../lua/give.lua"))
        .key(&k.hash)
        .key(&k.xin)
        .arg(id)
        .arg(units)
        .invoke_async(&mut stock.connection())
        .await
        .unwrap();
    assert_eq!(applied, 1);
}

/// Journal entries left on every shard of `c`.
async fn journaled(stock: &StockStore, c: &Campaign) -> usize {
    let mut n = 0;
    for s in 0..c.shards() {
        n += stock.read_shard(c, s).await.unwrap().pending.len();
    }
    n
}

/// A transfer interrupted after `take` (units in flight) and one after
/// `give` (landed, journal entry not deleted): the stats count every unit
/// once. A new instance lands both at startup, without anyone borrowing,
/// and the drop then sells out completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_transfers_are_counted_once_and_recovered_at_startup() {
    let app = spawn_app().await;
    let id = app.create_campaign(campaign_with(6, 3)).await["id"].as_str().unwrap().to_owned();
    let c = app.stock_campaign(&id).await;
    // Dies after take: 1 unit of shard 0 in flight to shard 1.
    let (_, taken) = app.stock.begin_transfer(&c, 0, 1, 1).await.unwrap();
    assert_eq!(taken, 1);
    // Dies after give: 1 unit of shard 2 already on shard 1, entry left.
    let (tid, taken) = app.stock.begin_transfer(&c, 2, 1, 1).await.unwrap();
    assert_eq!(taken, 1);
    give_only(&app.stock, &c, 1, &tid, 1).await;

    let st = stats(&app, &id).await;
    assert_eq!(st["remaining"], 6, "every unit counted once: {st}");
    assert_eq!(st["shards"][0]["in_flight"], 1, "{st}");
    assert_eq!(st["shards"][2]["in_flight"], 0, "a landed transfer is not in flight: {st}");
    assert_eq!(journaled(&app.stock, &c).await, 2);

    // A new instance (the old one "restarted"): its startup pass lands both
    // once they are old enough not to be live transfers (2 s, Redis time).
    let mut conn = app.stock.connection();
    let taken_at: u64 = {
        let (now, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        now
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        if now >= taken_at + 3 {
            break;
        }
        assert!(Instant::now() < deadline, "redis time does not move");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = TestApp::builder().alongside(&app).start().await;
    wait_until(Duration::from_secs(8), "the restarted instance recovered the transfers", || async {
        journaled(&restarted.stock, &c).await == 0
    })
    .await;
    let st = assert_at_rest(&restarted, &id, 0).await;
    assert_eq!(st["remaining"], 6, "{st}");
    assert_eq!(st["shards"][1]["remaining"], 4, "both transfers landed on shard 1 once: {st}");
    // ... and the recovery set is empty again.
    let mut conn = restarted.stock.connection();
    for b in 0..restarted.stock.keys().buckets() {
        let n: u64 =
            redis::cmd("SCARD").arg(restarted.stock.keys().pending_transfers(b)).query_async(&mut conn).await.unwrap();
        assert_eq!(n, 0, "bucket {b} still lists shards with transfers");
    }

    let (granted, _) = crowd(&restarted, &id, 40, "after-restart").await;
    assert_eq!(granted, 6);
    assert_at_rest(&restarted, &id, 6).await;
}

/// Reconcile lands what a dead process left too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lands_interrupted_transfers() {
    let app = spawn_app().await;
    let id = app.create_campaign(campaign_with(4, 2)).await["id"].as_str().unwrap().to_owned();
    let c = app.stock_campaign(&id).await;
    let (tid, _) = app.stock.begin_transfer(&c, 0, 1, 1).await.unwrap();
    give_only(&app.stock, &c, 1, &tid, 1).await;
    assert_eq!(journaled(&app.stock, &c).await, 1);
    assert!(app.reconcile(&id, false).await.matched());
    assert_eq!(journaled(&app.stock, &c).await, 0);
    assert_at_rest(&app, &id, 0).await;
}

/// The same crowd on a private cluster one master of which stalls for 3 ms
/// every few milliseconds (a busy script): commands of different
/// connections that arrive during a stall run in any order afterwards,
/// which is what opens the window of a scan missing a moving unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_shards_sell_out_completely_with_a_stalling_master() {
    let cluster = PrivateCluster::start_with(3, 1, 5000).await;
    let nodes = cluster.nodes();
    let app = TestApp::builder()
        .instances(4)
        .configure(move |s| {
            s.redis_nodes = nodes.clone();
            s.protect.max_in_flight = 100_000;
            s.protect.claim_rate = None;
            s.redis_timeout = Duration::from_secs(10);
            s.protect.breaker_failures = 100_000;
        })
        .start()
        .await;
    let master = cluster.ports[(0..6).find(|i| !cluster.replicas().contains(i)).unwrap()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let staller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{master}")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let stall = "local t = redis.call('TIME'); local s = t[1] * 1000000 + t[2]; \
                         repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 3000; return 0";
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: redis::RedisResult<i64> = redis::cmd("EVAL").arg(stall).arg(0).query_async(&mut conn).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || (rounds < 40 && started.elapsed() < Duration::from_secs(15)) {
        let id = app.create_campaign(campaign_with(16, 16)).await["id"].as_str().unwrap().to_owned();
        let (granted, sold_out) = crowd(&app, &id, 1500, &format!("s{rounds}")).await;
        let st = stats(&app, &id).await;
        assert_eq!(
            granted, 16,
            "round {rounds}: {sold_out} answered sold_out while {} units remained: {st}",
            st["remaining"]
        );
        assert_at_rest(&app, &id, 16).await;
        rounds += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    staller.await.unwrap();
    eprintln!("{rounds} drops of 16 units on 16 shards sold out completely with a stalling master");
}

/// `replicated` mode: with every replica frozen, a transfer stops right
/// after its take (journaled, not given) and one that got past its take
/// stops after its give (not deleted, not given twice); once the replicas
/// are back, recovery finishes both, and every unit is counted once
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_transfers_wait_for_a_replica_at_every_step() {
    let cluster = PrivateCluster::start_with(3, 1, 5000).await;
    let nodes = cluster.nodes();
    let app = TestApp::builder()
        .configure(move |s| {
            s.redis_nodes = nodes.clone();
            s.durability = Durability::Replicated { wait: Duration::from_millis(1000) };
        })
        .start()
        .await;
    let id = app.create_campaign(campaign_with(6, 3)).await["id"].as_str().unwrap().to_owned();
    let c = app.stock_campaign(&id).await;
    let before = app.stock.read_shard(&c, 1).await.unwrap().remaining;

    // A transfer whose take is acknowledged, then the replicas freeze. (A
    // wait of 1 s, not less: on 2 busy cores a healthy replica of a fresh
    // cluster missed 100 ms once in a clean-clone CI run.)
    let (late, taken) = app.stock.begin_transfer(&c, 2, 1, 1).await.unwrap();
    assert_eq!(taken, 1);
    let replicas = cluster.replicas();
    assert_eq!(replicas.len(), 3);
    cluster.signal(&replicas, "-STOP");

    let early = match app.stock.begin_transfer(&c, 0, 1, 1).await {
        Err(StockError::TransferNotReplicated { id, step: "take", .. }) => id,
        other => panic!("a take no replica acknowledged must stop the transfer: {other:?}"),
    };
    match app.stock.finish_transfer(&c, 2, 1, &late, 1).await {
        Err(StockError::TransferNotReplicated { step: "give", .. }) => {}
        other => panic!("a give no replica acknowledged must stop before the journal delete: {other:?}"),
    }
    // Nothing was given for the first; the second landed once, its entry kept.
    assert_eq!(app.stock.read_shard(&c, 1).await.unwrap().remaining, before + 1);
    assert_eq!(app.stock.read_shard(&c, 0).await.unwrap().pending.len(), 1);
    assert_eq!(app.stock.read_shard(&c, 2).await.unwrap().pending.len(), 1);
    // Recovery with the replicas still frozen does not move the unit either.
    assert!(app.stock.recover(&c).await.is_err());
    assert_eq!(app.stock.read_shard(&c, 1).await.unwrap().remaining, before + 1);
    let st = stats(&app, &id).await;
    assert_eq!(st["remaining"], 6, "{st}");

    cluster.signal(&replicas, "-CONT");
    // The replicas catch up (bounded; long on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match app.stock.recover(&c).await {
            Ok(_) if journaled(&app.stock, &c).await == 0 => break,
            r => assert!(Instant::now() < deadline, "recovery never completed after the replicas came back: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.stock.read_shard(&c, 1).await.unwrap().remaining, before + 2, "{early} landed once, the other once");
    assert_at_rest(&app, &id, 0).await;
}
