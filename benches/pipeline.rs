//! Benchmark of the claim pipeline (Redis outbox -> relay -> RabbitMQ ->
//! persist worker -> MySQL), with its baseline measured in the same run:
//!
//! 1. baseline: plain 500-row INSERT statements into the same MariaDB, one
//!    connection, autocommit (what the database alone can take);
//! 2. drain: N claims granted with the pipeline stopped, then the relay and
//!    the persist worker started: rows/s until all N are in MySQL;
//! 3. lag: claims granted at a fixed rate for a few seconds with the
//!    pipeline running; grant-to-row lag (`persisted_at - claimed_at`, both
//!    stamped by the servers) over every row: p50, p99, max.
//!
//! Run: `cargo bench --bench pipeline` (needs `scripts/stack up`).
//! Knobs (env): FG_BENCH_ROWS (default 200000), FG_BENCH_RATE (claims/s,
//! default 20000), FG_BENCH_SECS (default 10). Claims are made directly on
//! the stock store (no HTTP): this measures the pipeline, not the front end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashgrab::config::Settings;
use flashgrab::db::Db;
use flashgrab::domain::campaign::CreateCampaignRequest;
use flashgrab::domain::{CouponId, CouponRecord, UserId};
use flashgrab::startup::Application;
use sqlx::{MySql, QueryBuilder, Row};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn settings(prefix: &str, db: &str, pipeline: bool) -> Settings {
    let vars: HashMap<&str, String> = HashMap::from([
        ("FLASHGRAB_LISTEN", "127.0.0.1:0".to_owned()),
        ("FLASHGRAB_MYSQL_URL", format!("mysql://root@127.0.0.1:3306/{db}")),
        ("FLASHGRAB_ADMIN_TOKEN", "bench-admin-token-0123456789".to_owned()),
        ("FLASHGRAB_USER_JWT_SECRET", "bench-secret-0123456789abcdef0123456789".to_owned()),
        ("FLASHGRAB_KEY_PREFIX", prefix.to_owned()),
        ("FLASHGRAB_REDIS_TIMEOUT_MS", "5000".to_owned()),
    ]);
    let mut s = Settings::load(None, |k| vars.get(k).cloned(), false).expect("bench settings");
    s.run_relay = pipeline;
    s.run_persist = pipeline;
    s
}

fn names(tag: &str) -> (String, String) {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    (format!("b{tag}{}", &id[18..]), format!("fg_bench_{tag}_{id}"))
}

fn campaign_request(stock: u64) -> CreateCampaignRequest {
    let now = chrono::Utc::now();
    serde_json::from_value(serde_json::json!({
        "name": "pipeline bench", "total_stock": stock, "shards": 12,
        "starts_at": (now - chrono::Duration::seconds(1)).to_rfc3339(),
        "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "coupon": {"discount": {"type": "fixed", "amount_cents": 100}, "valid_for_days": 1}
    }))
    .unwrap()
}

/// Deletes every Redis key of a bench campaign and its prefix's outboxes.
async fn purge_keys(stock: &flashgrab::stock::StockStore, c: &flashgrab::domain::Campaign) {
    let mut conn = stock.connection();
    for s in 0..c.shards() {
        let k = stock.keys().shard(c.shard_buckets[s as usize], c.id.as_str(), s);
        for key in [&k.hash, &k.holders, &k.coupons, &k.idem, &k.xout, &k.xin] {
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(key).query_async(&mut conn).await;
        }
    }
    for b in 0..stock.keys().buckets() {
        let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(stock.keys().outbox(b)).query_async(&mut conn).await;
    }
}

async fn drop_db(db: &Db, name: &str) {
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`"))).execute(db.pool()).await;
}

async fn delete_queues(prefix: &str) {
    let Ok(conn) =
        lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", lapin::ConnectionProperties::default())
            .await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let t = flashgrab::queue::topology::Topology::new(prefix);
        for q in [&t.claims_queue, &t.dead_letter_queue] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// 1. Plain multi-row INSERTs, 500 rows each, autocommit, one connection.
async fn baseline(rows: u64) -> f64 {
    let (_, db_name) = names("base");
    let db = Db::connect(&format!("mysql://root@127.0.0.1:3306/{db_name}"), 1, Duration::from_secs(60)).await.unwrap();
    db.migrate().await.unwrap();
    let campaign = flashgrab::domain::CampaignId::generate().to_string();
    let now = chrono::Utc::now();
    let records: Vec<CouponRecord> = (0..rows)
        .map(|i| CouponRecord {
            id: CouponId::generate().to_string(),
            campaign_id: campaign.clone(),
            user_id: format!("user-{i}"),
            shard: (i % 12) as u32,
            claimed_at_ms: now.timestamp_millis(),
            valid_from_ms: now.timestamp_millis(),
            valid_until_ms: now.timestamp_millis() + 86_400_000,
            idempotency_key: None,
        })
        .collect();
    let start = Instant::now();
    for chunk in records.chunks(500) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO coupons (id, campaign_id, user_id, shard, claimed_at, valid_from, valid_until) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(&r.id)
                .push_bind(&r.campaign_id)
                .push_bind(&r.user_id)
                .push_bind(r.shard)
                .push_bind(r.claimed_at())
                .push_bind(r.valid_from())
                .push_bind(r.valid_until());
        });
        q.build().execute(db.pool()).await.unwrap();
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    drop_db(&db, &db_name).await;
    rate
}

/// Grants `n` claims directly on the stock store, `width` at a time.
async fn grant(app: &Application, campaign: &flashgrab::domain::Campaign, n: u64, width: usize) -> u64 {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..width)
        .map(|_| {
            let (stock, c, next) = (app.state().stock.clone(), campaign.clone(), next.clone());
            tokio::spawn(async move {
                let mut granted = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return granted;
                    }
                    let user = UserId::parse(&format!("u{i}")).unwrap();
                    // Retry what the API answers with 503 (contention while
                    // borrowing stock, a timeout), as a client would.
                    for _ in 0..50 {
                        match stock.claim(&c, &user, &CouponId::generate(), None).await {
                            Ok(flashgrab::stock::ClaimOutcome::Granted(_)) => {
                                granted += 1;
                                break;
                            }
                            Ok(flashgrab::stock::ClaimOutcome::Contended) | Err(_) => {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Ok(other) => panic!("user {user} got {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn wait_rows(db: &Db, campaign: &flashgrab::domain::CampaignId, n: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let have = db.count_persisted(campaign).await.unwrap();
        if have >= n {
            return start.elapsed();
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("    ... {have}/{n} rows");
            last_print = Instant::now();
        }
        assert!(start.elapsed() < limit, "only {have} of {n} rows after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 2. Backlog drain.
async fn drain(rows: u64) -> (f64, f64) {
    let (prefix, db_name) = names("drain");
    let quiet = Application::build(&settings(&prefix, &db_name, false)).await.expect("stack up?");
    let view = quiet
        .state()
        .campaigns
        .create(campaign_request(rows).validate(chrono::Utc::now()).unwrap(), chrono::Utc::now())
        .await
        .unwrap();
    let c = (*view.campaign).clone();
    let start = Instant::now();
    let granted = grant(&quiet, &c, rows, 256).await;
    let grant_rate = granted as f64 / start.elapsed().as_secs_f64();
    assert_eq!(granted, rows);
    let db = quiet.state().db.clone();
    let live = Application::build(&settings(&prefix, &db_name, true)).await.unwrap();
    tokio::spawn(live.run_until(std::future::pending()));
    let took = wait_rows(&db, &c.id, rows, Duration::from_secs(600)).await;
    let rate = rows as f64 / took.as_secs_f64();
    purge_keys(&quiet.state().stock, &c).await;
    drop_db(&db, &db_name).await;
    delete_queues(&prefix).await;
    (grant_rate, rate)
}

/// 3. Lag at a fixed claim rate.
async fn lag(rate: u64, secs: u64) -> (u64, Vec<i64>) {
    let (prefix, db_name) = names("lag");
    let app = Application::build(&settings(&prefix, &db_name, true)).await.unwrap();
    let stock = rate * secs * 2;
    let view = app
        .state()
        .campaigns
        .create(campaign_request(stock).validate(chrono::Utc::now()).unwrap(), chrono::Utc::now())
        .await
        .unwrap();
    let c = (*view.campaign).clone();
    let store = app.state().stock.clone();
    let db = app.state().db.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    // Open loop: every millisecond, start rate/1000 claims (bounded in flight).
    let permits = Arc::new(tokio::sync::Semaphore::new(512));
    let per_tick = (rate as f64 / 1000.0).max(1.0);
    let mut owed = 0.0;
    let mut i = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            i += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
            let (store, c) = (store.clone(), c.clone());
            handles.push(tokio::spawn(async move {
                let user = UserId::parse(&format!("lag{i}")).unwrap();
                let r = store.claim(&c, &user, &CouponId::generate(), None).await;
                drop(permit);
                matches!(r, Ok(flashgrab::stock::ClaimOutcome::Granted(_)))
            }));
        }
    }
    let mut granted = 0;
    for h in handles {
        granted += u64::from(h.await.unwrap());
    }
    wait_rows(&db, &c.id, granted, Duration::from_secs(300)).await;
    let rows = sqlx::query(
        "SELECT TIMESTAMPDIFF(MICROSECOND, claimed_at, persisted_at) AS lag_us FROM coupons WHERE campaign_id = ?",
    )
    .bind(c.id.as_str())
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut lags: Vec<i64> = rows.iter().map(|r| r.try_get::<i64, _>("lag_us").unwrap()).collect();
    lags.sort_unstable();
    purge_keys(&store, &c).await;
    drop_db(&db, &db_name).await;
    delete_queues(&prefix).await;
    (granted, lags)
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; nothing to list.
    }
    let rows = env_num("FG_BENCH_ROWS", 200_000);
    let rate = env_num("FG_BENCH_RATE", 20_000);
    let secs = env_num("FG_BENCH_SECS", 10);
    println!("pipeline bench: rows={rows} rate={rate}/s secs={secs}");

    let only = std::env::var("FG_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "drain" {
        let base = baseline(rows).await;
        println!("baseline  plain 500-row INSERT, 1 connection:  {base:>10.0} rows/s");
        let (grant_rate, drained) = drain(rows).await;
        println!(
            "drain     relay + persist of a {rows}-claim backlog: {drained:>10.0} rows/s  ({:.2} x baseline; claims were granted at {grant_rate:.0}/s)",
            drained / base
        );
    }
    if !(only.is_empty() || only == "lag") {
        return;
    }
    let (granted, lags) = lag(rate, secs).await;
    println!(
        "lag       at {:.0} claims/s for {secs} s ({granted} grants): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        granted as f64 / secs as f64,
        pct(&lags, 0.50),
        pct(&lags, 0.99),
        pct(&lags, 1.0)
    );
}
