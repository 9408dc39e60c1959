//! Benchmarks of the claim path.
//!
//! - `pure`: the CPU work a claim does besides I/O: routing a user to a
//!   shard, building the shard's key names, computing a key's slot, and
//!   verifying (and, for the harness, signing) a user JWT.
//! - `redis`: the claim script against the local Redis Cluster
//!   (127.0.0.1:7000..): one `claim_on_shard` round trip at a time (latency),
//!   then 64 claims in flight on one multiplexed connection (throughput).
//!   Each has a baseline measured in the same run: the same round trips with
//!   a plain HGET of the shard hash instead of the script.
//!   Every claim is a real grant: a fresh user id on a campaign of 10^9
//!   coupons, written straight through `StockStore` under a key prefix unique
//!   to the run (`benchNNNNNN`). The keys are deleted at the end (SCAN +
//!   UNLINK on every master). Without a cluster the group is skipped with a
//!   message.
//!
//! Run: `cargo bench --bench claim` (or `-- pure` / `-- redis`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashgrab::auth::JwtKeys;
use flashgrab::domain::campaign::{AppliesTo, Campaign, CouponTerms, Discount, home_shard};
use flashgrab::domain::{CampaignId, CouponId, UserId};
use flashgrab::stock::keys::key_slot;
use flashgrab::stock::placement::place_shards;
use flashgrab::stock::{KeyLayout, ShardClaim, StockStore};
use futures_util::StreamExt;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";
const NODES: [&str; 3] = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001", "redis://127.0.0.1:7002"];
const SHARDS: u32 = 12;
const IN_FLIGHT: usize = 64;

fn pure(c: &mut Criterion) {
    let mut g = c.benchmark_group("pure");
    g.bench_function("home_shard", |b| b.iter(|| home_shard(black_box("user-0123456789"), black_box(SHARDS))));
    let layout = KeyLayout::new("bench");
    let campaign = CampaignId::generate();
    g.bench_function("shard_keys", |b| {
        b.iter(|| layout.shard(black_box(17), black_box(campaign.as_str()), black_box(5)))
    });
    let key = layout.shard(17, campaign.as_str(), 5).hash;
    g.bench_function("key_slot", |b| b.iter(|| key_slot(black_box(key.as_bytes()))));
    let keys = JwtKeys::new(SECRET);
    let now = Utc::now().timestamp();
    let token = keys.sign("user-0123456789", now + 3600);
    g.bench_function("jwt_verify", |b| b.iter(|| keys.verify(black_box(&token), now).expect("valid token")));
    g.bench_function("jwt_sign", |b| b.iter(|| keys.sign(black_box("user-0123456789"), black_box(now + 3600))));
    g.finish();
}

/// A live campaign of 10^9 coupons written straight into the store.
async fn bench_campaign(store: &StockStore) -> Result<Campaign, String> {
    let map = store.slot_map().await.map_err(|e| e.to_string())?;
    let shard_buckets = place_shards(store.keys(), &map, SHARDS, rand::random()).map_err(|e| e.to_string())?;
    let now = Utc::now();
    let c = Campaign {
        id: CampaignId::generate(),
        name: "bench".into(),
        total_stock: 1_000_000_000,
        per_user_limit: 1,
        starts_at: now - chrono::Duration::minutes(1),
        ends_at: now + chrono::Duration::hours(1),
        closed_at: None,
        coupon: CouponTerms {
            discount: Discount::Fixed { amount_cents: 500 },
            min_spend_cents: 0,
            applies_to: AppliesTo::default(),
            valid_for_days: Some(7),
            valid_until: None,
            valid_from: None,
        },
        shard_buckets,
        created_at: now,
        tally: Default::default(),
    };
    store.init_campaign(&c).await.map_err(|e| e.to_string())?;
    Ok(c)
}

async fn connect(prefix: &str) -> Result<StockStore, String> {
    // Fail fast (and skip) when nothing listens on the first node.
    tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect("127.0.0.1:7000"))
        .await
        .map_err(|_| "127.0.0.1:7000 did not accept a connection within 1 s".to_owned())?
        .map_err(|e| format!("127.0.0.1:7000: {e}"))?;
    let nodes: Vec<String> = NODES.iter().map(|s| (*s).to_owned()).collect();
    let store = StockStore::connect(&nodes, prefix, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
    store.ping().await.map_err(|e| e.to_string())?;
    Ok(store)
}

/// One claim as a brand-new user, on that user's home shard; panics unless
/// it is a grant, so the figures are those of real grants.
async fn claim_once(store: &StockStore, c: &Campaign, next_user: &AtomicU64) {
    let n = next_user.fetch_add(1, Ordering::Relaxed);
    let user = UserId::parse(&format!("bu{n}")).expect("short ascii id");
    let shard = home_shard(user.as_str(), c.shards());
    let r = store.claim_on_shard(c, shard, &user, &CouponId::generate(), None).await;
    assert!(matches!(r, Ok(ShardClaim::Granted(_))), "expected a grant, got {r:?}");
}

/// The baseline of a claim: a round trip on the same route (same cluster
/// connection, same shard hashes, spread over every shard) with a trivial
/// command instead of the script.
async fn hget_once(store: &StockStore, hashes: &[String], next: &AtomicU64) {
    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
    let mut conn = store.connection();
    let v: Option<u64> = redis::cmd("HGET")
        .arg(&hashes[i % hashes.len()])
        .arg("remaining")
        .query_async(&mut conn)
        .await
        .expect("HGET on the bench campaign");
    assert!(v.is_some(), "the bench campaign's shard has no remaining field");
}

/// Runs `iters` operations with `IN_FLIGHT` of them in flight at any time
/// (one task, one multiplexed connection) and returns the wall time.
async fn in_flight<F, Fut>(iters: u64, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    futures_util::stream::iter(0..iters).map(|_| op()).buffer_unordered(IN_FLIGHT).for_each(|()| async {}).await;
    start.elapsed()
}

/// Deletes every key of the run: SCAN each master for the prefix's tags and
/// UNLINK what it finds. Returns the number of keys removed.
/// (`SCAN` on a master sees only its own keys; replicas follow.)
async fn delete_keys(store: &StockStore, prefix: &str) -> Result<u64, String> {
    let map = store.slot_map().await.map_err(|e| e.to_string())?;
    let pattern = format!("{{{prefix}:*");
    let mut removed = 0u64;
    for master in map.masters() {
        let client = redis::Client::open(format!("redis://{master}")).map_err(|e| e.to_string())?;
        let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if !keys.is_empty() {
                // One UNLINK per key, pipelined: a multi-key UNLINK must
                // stay within one slot and these keys span many.
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("UNLINK").arg(k);
                }
                let n: Vec<u64> = pipe.query_async(&mut conn).await.map_err(|e| e.to_string())?;
                removed += n.iter().sum::<u64>();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

fn redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let prefix = format!("bench{:06}", rand::random::<u32>() % 1_000_000);
    let setup = rt.block_on(async {
        let store = connect(&prefix).await?;
        let campaign = bench_campaign(&store).await?;
        Ok::<_, String>((store, campaign))
    });
    let (store, campaign) = match setup {
        Ok(s) => s,
        Err(e) => {
            println!("redis group skipped: no Redis Cluster on 127.0.0.1:7000 ({e})");
            return;
        }
    };
    println!("redis group: campaign {} ({} shards, stock 10^9), key prefix {prefix}", campaign.id, campaign.shards());
    let next_user = AtomicU64::new(0);

    let hashes: Vec<String> = (0..campaign.shards())
        .map(|s| store.keys().shard(campaign.shard_buckets[s as usize], campaign.id.as_str(), s).hash)
        .collect();
    let next_read = AtomicU64::new(0);

    let mut g = c.benchmark_group("redis");
    g.sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    g.bench_function("hget_sequential_baseline", |b| b.to_async(&rt).iter(|| hget_once(&store, &hashes, &next_read)));
    g.bench_function("claim_on_shard_sequential", |b| {
        b.to_async(&rt).iter(|| claim_once(&store, &campaign, &next_user))
    });
    g.bench_function(format!("hget_{IN_FLIGHT}_in_flight_baseline"), |b| {
        b.to_async(&rt).iter_custom(|iters| in_flight(iters, || hget_once(&store, &hashes, &next_read)))
    });
    g.bench_function(format!("claim_on_shard_{IN_FLIGHT}_in_flight"), |b| {
        b.to_async(&rt).iter_custom(|iters| in_flight(iters, || claim_once(&store, &campaign, &next_user)))
    });
    g.finish();

    let granted = next_user.load(Ordering::Relaxed);
    match rt.block_on(delete_keys(&store, &prefix)) {
        Ok(n) => println!("redis group: {granted} grants; deleted {n} keys of prefix {prefix}"),
        Err(e) => println!(
            "redis group: {granted} grants; could not delete the keys of prefix {prefix} ({e}): \
             they remain (pattern {{{prefix}:*)"
        ),
    }
}

criterion_group!(benches, pure, redis);
criterion_main!(benches);
