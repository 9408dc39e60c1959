//! The "drop under pressure" fixture every fault test runs its fault in,
//! and the invariants it checks at rest.
//!
//! A fault proves little against a campaign of a million units claimed
//! once by fresh users: nothing sells out, nobody reaches a limit, no stock
//! moves between shards. Here the drop is small and contested, so the fault
//! lands while the invariants are under pressure:
//! - [`DROP`]: 60 units over 6 shards (10 each): home shards run dry and
//!   borrow from the others (journaled transfers in flight);
//! - a pool of 24 users for 16 concurrent workers, limit 3: users come back,
//!   race themselves and hit their limit (24 x 3 = 72 > 60, so the drop
//!   always sells out, and a user's grant beyond 3 is a bug);
//! - [`Pressure`] claims until every answer is 409/410 for a while, and
//!   records every answer (201 coupon ids with their user, what 409s point
//!   at, 410/503/connection error counts, anything else as unexpected).
//!
//! Its pace is set by the test: slow while the fault is put in place (so the
//! sell-out comes after it), fast once the fault is there (so the sell-out
//! happens during it). [`assert_invariants_at_rest`] then checks the
//! history against Redis and MySQL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashgrab::domain::Campaign;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::app::*;

/// Shape of a contested drop.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub stock: u64,
    pub shards: u32,
    pub limit: u32,
    /// Distinct users claiming (fewer than the claims: they come back).
    pub users: usize,
    /// Requests in flight at once.
    pub width: usize,
}

pub const DROP: Terms = Terms { stock: 60, shards: 6, limit: 3, users: 24, width: 16 };

/// Pace of each worker between two answers while the fault is put in place
/// (16 workers: about 16 claims/s, so a fault that takes a second or two to
/// set up still finds stock left).
pub const SLOW: Duration = Duration::from_millis(1000);
/// Pace once the fault is in place: the drop sells out within a second.
pub const FAST: Duration = Duration::from_millis(5);

/// Creates the contested campaign; returns its id.
pub async fn drop_campaign(app: &TestApp, t: Terms) -> String {
    let mut body = campaign_body(t.stock);
    body["shards"] = json!(t.shards);
    body["per_user_limit"] = json!(t.limit);
    let c = app.create_campaign(body).await;
    assert_eq!(c["per_user_limit"], t.limit, "{c}");
    c["id"].as_str().unwrap().to_owned()
}

/// Every answer the burst got.
#[derive(Debug, Default)]
pub struct History {
    /// (user, coupon id) of every 201.
    pub granted: Vec<(String, String)>,
    /// (user, coupon ids) of every 409: what the user was told they hold.
    pub holding: Vec<(String, Vec<String>)>,
    pub sold_out: u64,
    pub unavailable: u64,
    /// No HTTP answer (connection refused or cut, timeout).
    pub failed: u64,
    /// Any other answer: status and body.
    pub unexpected: Vec<String>,
}

impl History {
    fn merge(&mut self, o: History) {
        self.granted.extend(o.granted);
        self.holding.extend(o.holding);
        self.sold_out += o.sold_out;
        self.unavailable += o.unavailable;
        self.failed += o.failed;
        self.unexpected.extend(o.unexpected);
    }

    pub fn summary(&self) -> String {
        format!(
            "201: {}, 409: {}, 410: {}, 503: {}, no answer: {}, unexpected: {}",
            self.granted.len(),
            self.holding.len(),
            self.sold_out,
            self.unavailable,
            self.failed,
            self.unexpected.len()
        )
    }

    /// The coupon ids answered 201.
    pub fn coupon_ids(&self) -> Vec<String> {
        self.granted.iter().map(|(_, c)| c.clone()).collect()
    }
}

/// State shared by the workers of a [`Pressure`].
struct Shared {
    stop: AtomicBool,
    pace_ms: AtomicU64,
    epoch: Instant,
    /// When (ms since `epoch`) the last answer other than 409/410 came.
    last_busy_ms: AtomicU64,
    /// 409/410 answers since then.
    quiet: AtomicU64,
    saw_sold_out: AtomicBool,
    base: Mutex<String>,
}

/// A burst of claims by a bounded pool of users (see the module note).
pub struct Pressure {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<History>>,
}

impl Pressure {
    /// Starts `t.width` workers claiming at `base` at pace `pace`.
    pub fn start(app: &TestApp, base: &str, campaign: &str, t: Terms, pace: Duration) -> Self {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pace_ms: AtomicU64::new(pace.as_millis() as u64),
            epoch: Instant::now(),
            last_busy_ms: AtomicU64::new(0),
            quiet: AtomicU64::new(0),
            saw_sold_out: AtomicBool::new(false),
            base: Mutex::new(base.to_owned()),
        });
        // Users of this burst only (the user id is also the JWT subject).
        let tag = &ulid::Ulid::new().to_string()[20..];
        let users: Arc<Vec<String>> = Arc::new((0..t.users).map(|i| format!("p{tag}-{i}")).collect());
        let tasks = (0..t.width)
            .map(|w| {
                let (client, jwt, shared, users) = (app.client.clone(), app.jwt.clone(), shared.clone(), users.clone());
                let campaign = campaign.to_owned();
                tokio::spawn(async move { worker(w as u64, client, jwt, shared, users, campaign).await })
            })
            .collect();
        Self { shared, tasks }
    }

    /// Changes the pace of every worker.
    pub fn pace(&self, pace: Duration) {
        self.shared.pace_ms.store(pace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether any claim was answered 410 `sold_out` yet.
    pub fn saw_sold_out(&self) -> bool {
        self.shared.saw_sold_out.load(Ordering::Relaxed)
    }

    /// Waits (at most `secs`) until a claim was answered 410: the drop sold
    /// out, as the service proved it.
    pub async fn wait_sold_out(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.saw_sold_out() {
            assert!(Instant::now() < deadline, "no claim was answered 410 sold_out within {secs} s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Claims go on at full pace until every answer is 409 or 410 for a
    /// second (at least three answers per worker: everybody is at their
    /// limit or the drop is sold out), at most `secs`; then stops and
    /// returns what was answered.
    pub async fn settle(self, secs: u64) -> History {
        self.pace(FAST);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let width = self.tasks.len() as u64;
        loop {
            let now = self.shared.epoch.elapsed().as_millis() as u64;
            let last = self.shared.last_busy_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000 && self.shared.quiet.load(Ordering::Relaxed) >= 3 * width {
                break;
            }
            if Instant::now() >= deadline {
                let h = self.finish().await;
                panic!("claims never settled to 409/410 within {secs} s: {}", h.summary());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.finish().await
    }

    async fn finish(self) -> History {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut all = History::default();
        for t in self.tasks {
            all.merge(t.await.unwrap());
        }
        all
    }
}

async fn worker(
    w: u64,
    client: reqwest::Client,
    jwt: flashgrab::auth::JwtKeys,
    shared: Arc<Shared>,
    users: Arc<Vec<String>>,
    campaign: String,
) -> History {
    let mut h = History::default();
    // xorshift: a user at random per claim, so a user may race themself.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let user = &users[(next() % users.len() as u64) as usize];
        let base = shared.base.lock().unwrap().clone();
        let token = jwt.sign(user, chrono::Utc::now().timestamp() + 600);
        let r = client
            .post(format!("{base}/v1/campaigns/{campaign}/claim"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let mut granted = false;
        let quiet = match r {
            Ok(r) => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                match status {
                    StatusCode::CREATED => {
                        h.granted.push((user.clone(), body["id"].as_str().unwrap().to_owned()));
                        granted = true;
                        false
                    }
                    StatusCode::CONFLICT if body["error"] == "already_claimed" => {
                        h.holding.push((user.clone(), vec![body["coupon_id"].as_str().unwrap().to_owned()]));
                        true
                    }
                    StatusCode::CONFLICT if body["error"] == "limit_reached" => {
                        let ids = body["coupon_ids"].as_array().unwrap();
                        h.holding.push((user.clone(), ids.iter().map(|v| v.as_str().unwrap().to_owned()).collect()));
                        true
                    }
                    StatusCode::GONE if body["error"] == "sold_out" => {
                        h.sold_out += 1;
                        shared.saw_sold_out.store(true, Ordering::Relaxed);
                        true
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {
                        h.unavailable += 1;
                        false
                    }
                    other => {
                        h.unexpected.push(format!("{other} {body}"));
                        false
                    }
                }
            }
            Err(_) => {
                h.failed += 1;
                false
            }
        };
        if quiet {
            shared.quiet.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.last_busy_ms.store(shared.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            shared.quiet.store(0, Ordering::Relaxed);
        }
        let pace = shared.pace_ms.load(Ordering::Relaxed);
        // +-50 % jitter so the workers do not march in step; a failed or
        // refused claim waits at least 20 ms (no hot loop on a dead port).
        let wait = pace / 2 + next() % (pace + 1);
        let floor = if quiet || granted { 1 } else { 20 };
        tokio::time::sleep(Duration::from_millis(wait.max(floor))).await;
    }
    h
}

/// Sum over the shards of `claimed` (claim records), read straight from
/// Redis; `None` while a shard cannot be read.
pub async fn claimed_in_redis(app: &TestApp, c: &Campaign) -> Option<u64> {
    let mut conn = app.stock.connection();
    let mut total = 0;
    for s in 0..c.shards() {
        let k = app.stock.keys().shard(c.shard_buckets[s as usize], c.id.as_str(), s);
        let n: u64 = redis::cmd("HLEN").arg(&k.coupons).query_async(&mut conn).await.ok()?;
        total += n;
    }
    Some(total)
}

/// Waits (at most `secs`) until Redis holds at least `n` grants.
pub async fn wait_claimed(app: &TestApp, c: &Campaign, n: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if claimed_in_redis(app, c).await.is_some_and(|got| got >= n) {
            return;
        }
        assert!(Instant::now() < deadline, "Redis never held {n} grants within {secs} s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One shard as found in Redis at rest.
struct ShardAtRest {
    remaining: i64,
    journaled: u64,
    /// Transfers ever applied to this shard (`xin` is never trimmed).
    received: u64,
    /// coupon id -> user of its claim record.
    records: HashMap<String, String>,
    /// user -> coupon ids of the holders entry, in order.
    holders: HashMap<String, Vec<String>>,
}

async fn read_shard_at_rest(app: &TestApp, c: &Campaign, s: u32) -> ShardAtRest {
    let k = app.stock.keys().shard(c.shard_buckets[s as usize], c.id.as_str(), s);
    let mut conn = app.stock.connection();
    let mut pipe = redis::pipe();
    pipe.cmd("HGET").arg(&k.hash).arg("remaining");
    pipe.cmd("HGETALL").arg(&k.xout);
    pipe.cmd("HGETALL").arg(&k.coupons);
    pipe.cmd("HGETALL").arg(&k.holders);
    pipe.cmd("HLEN").arg(&k.xin);
    #[allow(clippy::type_complexity)]
    let (remaining, xout, coupons, holders, received): (
        Option<i64>,
        HashMap<String, String>,
        HashMap<String, String>,
        HashMap<String, String>,
        u64,
    ) = pipe.query_async(&mut conn).await.unwrap();
    let journaled = xout.values().map(|v| v.split(':').next().unwrap().parse::<u64>().unwrap()).sum();
    let records = coupons
        .into_iter()
        .map(|(id, raw)| {
            let r: serde_json::Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(r["id"], id.as_str(), "shard {s}: record stored under another coupon id: {raw}");
            (id, r["user_id"].as_str().unwrap().to_owned())
        })
        .collect();
    let holders = holders.into_iter().map(|(u, ids)| (u, ids.split(',').map(str::to_owned).collect())).collect();
    ShardAtRest { remaining: remaining.expect("the shard exists"), journaled, received, records, holders }
}

/// What Redis holds at rest, once checked.
pub struct RedisAtRest {
    /// Every claim record: coupon id -> user.
    pub records: HashMap<String, String>,
    /// Transfers applied over the campaign's life.
    pub transfers: u64,
}

/// Conservation and "at most limit per user" in Redis, shard by shard.
pub async fn assert_redis_at_rest(app: &TestApp, c: &Campaign) -> RedisAtRest {
    let mut records = HashMap::new();
    let (mut remaining, mut journaled, mut transfers) = (0i64, 0u64, 0u64);
    let mut per_user: HashMap<String, u64> = HashMap::new();
    for s in 0..c.shards() {
        let sh = read_shard_at_rest(app, c, s).await;
        assert!(sh.remaining >= 0, "shard {s}: remaining {} < 0", sh.remaining);
        remaining += sh.remaining;
        journaled += sh.journaled;
        transfers += sh.received;
        let mut held = HashSet::new();
        for (user, ids) in &sh.holders {
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "shard {s}: holder entry of {user} names a coupon twice: {ids:?}");
            for id in ids {
                assert_eq!(
                    sh.records.get(id),
                    Some(user),
                    "shard {s}: {user} holds {id}, which is not a claim record of theirs on the shard"
                );
                held.insert(id.clone());
            }
            *per_user.entry(user.clone()).or_default() += ids.len() as u64;
        }
        for id in sh.records.keys() {
            assert!(held.contains(id), "shard {s}: claim record {id} is held by no user");
        }
        for (id, user) in sh.records {
            assert!(records.insert(id.clone(), user).is_none(), "coupon {id} is a record on two shards");
        }
    }
    let claimed = records.len() as u64;
    assert_eq!(
        remaining as u64 + journaled + claimed,
        c.total_stock,
        "conservation in Redis: remaining {remaining} + journaled {journaled} + claimed {claimed} != total_stock {}",
        c.total_stock
    );
    let over: Vec<_> = per_user.iter().filter(|(_, n)| **n > u64::from(c.per_user_limit)).collect();
    assert!(over.is_empty(), "users holding more than {} coupons in Redis: {over:?}", c.per_user_limit);
    RedisAtRest { records, transfers }
}

/// "At most limit per user" in MySQL (GROUP BY user_id).
pub async fn assert_mysql_limit(app: &TestApp, c: &Campaign) {
    let over: Vec<(String, i64)> = sqlx::query_as(
        "SELECT user_id, COUNT(*) FROM coupons WHERE campaign_id = ? GROUP BY user_id HAVING COUNT(*) > ?",
    )
    .bind(c.id.as_str())
    .bind(i64::from(c.per_user_limit))
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert!(over.is_empty(), "users with more than {} rows in MySQL: {over:?}", c.per_user_limit);
}

/// The end state of a drop under pressure, after the fault: what
/// [`super::assert_exactly_once`] checks (conservation and the limit in
/// Redis and MySQL, rows == grants, reconcile), plus the history: no
/// unexpected answer, every 201 is its user's claim record and row, no
/// user was answered 201 more than the limit, every 409 points at coupons
/// the user really holds, and the drop sold out: every unit was granted.
pub async fn assert_invariants_at_rest(app: &TestApp, campaign: &str, h: &History) {
    assert!(h.unexpected.is_empty(), "unexpected answers ({}): {:?}", h.summary(), h.unexpected);
    assert!(h.sold_out > 0, "the drop never sold out: {}", h.summary());
    super::assert_exactly_once(app, campaign, &h.coupon_ids()).await;

    let c = app.stock_campaign(campaign).await;
    let RedisAtRest { records, transfers } = assert_redis_at_rest(app, &c).await;
    eprintln!("at rest: {}; {transfers} transfers between shards", h.summary());
    // The fixture did its job: users came back to their limit, stock moved.
    assert!(!h.holding.is_empty(), "no user reached their limit: {}", h.summary());
    assert!(transfers > 0, "no stock moved between shards: {}", h.summary());
    let rows: HashMap<String, String> =
        app.state.db.campaign_coupons(campaign).await.unwrap().into_iter().map(|r| (r.id, r.user_id)).collect();
    let mut answered: HashMap<&String, u64> = HashMap::new();
    for (user, id) in &h.granted {
        assert_eq!(
            records.get(id),
            Some(user),
            "coupon {id} answered 201 to {user} is not their claim record in Redis"
        );
        assert_eq!(rows.get(id), Some(user), "coupon {id} answered 201 to {user} is not their row in MySQL");
        *answered.entry(user).or_default() += 1;
    }
    let over: Vec<_> = answered.iter().filter(|(_, n)| **n > u64::from(c.per_user_limit)).collect();
    assert!(over.is_empty(), "users answered 201 more than {} times: {over:?}", c.per_user_limit);
    for (user, ids) in &h.holding {
        for id in ids {
            assert_eq!(records.get(id), Some(user), "a 409 told {user} they hold {id}, which is not theirs in Redis");
        }
    }
    // users x limit > stock: every answer 409/410 means every unit is
    // granted (none left on a shard, none stranded in a transfer journal).
    assert_eq!(
        records.len() as u64,
        c.total_stock,
        "the drop sold out but not every unit was granted: {}",
        h.summary()
    );
}
