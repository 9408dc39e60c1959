//! The stock store: a campaign's stock split into shards on a Redis Cluster.
//!
//! Data: one hash per shard (remaining, claimed, the campaign window and
//! limit), the holders, the coupon records, the idempotency keys and the
//! transfer journals of that shard, all under one hash tag so that the claim
//! script touches a single slot (no CROSSSLOT, ever). Key names: [`keys`].
//!
//! Invariants kept here: a grant happens only inside `lua/claim.lua`, which
//! decrements, records the holder and appends to the outbox in one atomic
//! step; stock only moves between shards through the journaled transfer of
//! [`rebalance`], so `remaining + in_flight + claimed == total_stock` always.
//!
//! Failure modes: every call has a timeout; a Redis error or timeout is a
//! [`StockError`] and the caller answers 503 (never 201 for a claim whose
//! script did not return success). A node restarted or a replica promoted has
//! no scripts: `Script::invoke_async` sees NOSCRIPT, loads and retries.
//!
//! Durability ([`Durability`]): in `fast` mode a grant is answered as soon as
//! the script returned; replication to the replica is asynchronous, so a
//! failover can lose the last grants. In `replicated` mode a grant (or a
//! replay) is answered only after `WAIT 1 <ms>`, pipelined right behind the
//! script to the same node on the same connection: WAIT waits for the
//! replication offset of that connection's last write, which is at least the
//! script's. Fewer than one replica acknowledging is
//! [`StockError::NotReplicated`] (503, "maybe granted": the grant and its
//! outbox record are on the master and are persisted if the master survives).
//! Other writes that must not be undone by a failover (the close, the stock
//! transfers) go through [`StockStore::acked`] (`replication`): the write and
//! the WAIT in one pipeline, [`StockError::NotAcknowledged`] without a replica.

pub mod archive;
pub mod batch;
pub mod broadcast;
mod guard;
pub mod holdings;
pub mod keys;
pub mod placement;
pub mod rebalance;
pub mod reconnect;
pub mod replication;
pub mod restore;
pub mod topup;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::domain::campaign::home_shard;
use crate::domain::{Campaign, CouponId, CouponRecord, UserId};
use crate::protect::Breakers;
pub use keys::{KeyLayout, ShardKeys};
pub use placement::{PlacementError, SlotMap};

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The circuit breaker is open: Redis was unreachable moments ago, so
    /// the call was not even tried (see `protect::breaker`).
    #[error("redis unreachable (circuit breaker open)")]
    BreakerOpen,
    /// `replicated` mode: the grant happened on the master but no replica
    /// acknowledged it within the wait. The claim may survive (it is in the
    /// outbox) or be lost by a failover: the caller answers 503.
    #[error("claim {coupon} was granted but {acked} replicas acknowledged it within {wait:?}")]
    NotReplicated { coupon: String, acked: i64, wait: Duration },
    /// `replicated` mode: a write other than a grant (a close, a stock
    /// transfer) happened on the master but no replica acknowledged it
    /// within the wait (see `replication`). The caller answers 503; the
    /// write is idempotent and is retried.
    #[error("{what}: {acked} replicas acknowledged it within {wait:?}")]
    NotAcknowledged { what: String, acked: i64, wait: Duration },
    /// Too many claims queued for one shard (see `batch`).
    #[error("too many claims queued for one shard")]
    Busy,
    /// `replicated` mode: a step of a stock transfer ran on the master but
    /// no replica acknowledged it in time; the transfer stopped there (it
    /// stays journaled and is finished by a later recovery).
    #[error("transfer {id}: {step} was not acknowledged by a replica within {wait:?} ({acked} acked)")]
    TransferNotReplicated { id: String, step: &'static str, acked: i64, wait: Duration },
}

impl StockError {
    /// The same error for another claim of a failed batch (every claim of
    /// it gets the batch's error).
    pub fn duplicate(&self) -> StockError {
        match self {
            StockError::Redis(e) => StockError::Redis(e.clone()),
            StockError::Timeout(d) => StockError::Timeout(*d),
            StockError::Protocol(m) => StockError::Protocol(m.clone()),
            StockError::Placement(e) => StockError::Protocol(e.to_string()),
            StockError::BreakerOpen => StockError::BreakerOpen,
            StockError::NotReplicated { coupon, acked, wait } => {
                StockError::NotReplicated { coupon: coupon.clone(), acked: *acked, wait: *wait }
            }
            StockError::NotAcknowledged { what, acked, wait } => {
                StockError::NotAcknowledged { what: what.clone(), acked: *acked, wait: *wait }
            }
            StockError::Busy => StockError::Busy,
            StockError::TransferNotReplicated { id, step, acked, wait } => {
                StockError::TransferNotReplicated { id: id.clone(), step, acked: *acked, wait: *wait }
            }
        }
    }
}

/// When a claim is answered, relative to Redis replication
/// (`FLASHGRAB_DURABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Answer as soon as the claim script returned. A failover can lose the
    /// grants of the last moments that had not reached the replica.
    #[default]
    Fast,
    /// After a grant (or a replay), `WAIT 1 <wait>` on the same master: a
    /// 201 is on at least one replica too, so it survives the failover of
    /// its master (not the loss of master and replica together).
    Replicated { wait: Duration },
}

pub type Result<T> = std::result::Result<T, StockError>;

/// Claims of one shard per script call, unless configured.
pub const DEFAULT_CLAIM_BATCH: usize = 32;

/// What the claim script answered on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardClaim {
    Granted(CouponRecord),
    /// The idempotency key was used before: the coupon granted then.
    Replayed(CouponRecord),
    /// The user already holds `per_user_limit` coupons: their ids.
    Holding(Vec<String>),
    NotStarted {
        starts_ms: i64,
    },
    Ended,
    /// The home shard is empty; other shards may still have stock.
    Dry,
    /// No such shard: the campaign was never initialised in this store.
    Missing,
}

/// The outcome of a claim after borrowing from other shards if needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Granted(CouponRecord),
    Replayed(CouponRecord),
    Holding(Vec<String>),
    NotStarted {
        starts_ms: i64,
    },
    Ended,
    /// Every shard is empty and no transfer is in flight.
    SoldOut,
    /// Stock exists but other claimers kept taking what was moved to the
    /// user's home shard; the caller answers 503 with Retry-After.
    Contended,
    Missing,
}

/// Figures of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ShardStats {
    pub shard: u32,
    /// Units on the shard plus units journaled out of it and not yet landed
    /// (they will land on another shard): at rest, in-flight is 0.
    pub remaining: u64,
    pub claimed: u64,
    /// Units moving between shards right now (journaled transfer).
    pub in_flight: u64,
}

/// Handle on the cluster. Cheap to clone (one multiplexed connection per
/// node, shared): cloning is how concurrent requests pipeline.
#[derive(Clone)]
pub struct StockStore {
    /// Multiplexed cluster connection; it follows MOVED/ASK and refreshes the
    /// slot map on failover, and is rebuilt when trouble lasts (see
    /// `reconnect`).
    conn: Arc<reconnect::Reconnecting>,
    keys: KeyLayout,
    scripts: Scripts,
    /// Upper bound for any single Redis call.
    timeout: Duration,
    /// One breaker per master: fails the calls of a master's slots fast
    /// while it is unreachable; shared by every clone of the store (see
    /// `guard`).
    guard: Arc<guard::Guard>,
    /// Whether a grant waits for a replica before it is answered.
    durability: Durability,
    /// Per-shard queues that group concurrent claims into one script call.
    batcher: Arc<batch::Batcher>,
    /// Claim script calls and the claims they carried, for the metrics.
    claim_calls: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

#[derive(Clone)]
struct Scripts {
    claim: redis::Script,
    take: redis::Script,
    give: redis::Script,
    confirm: redis::Script,
    settle: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: redis::Script::new(include_str!("../../lua/claim.lua")),
            take: redis::Script::new(include_str!("../../lua/take.lua")),
            give: redis::Script::new(include_str!("../../lua/give.lua")),
            confirm: redis::Script::new(include_str!("../../lua/confirm.lua")),
            settle: redis::Script::new(include_str!("../../lua/settle.lua")),
        }
    }
}

impl StockStore {
    pub async fn connect(nodes: &[String], prefix: &str, timeout: Duration) -> Result<Self> {
        Self::connect_to(&crate::backend::RedisTarget::plain(nodes), prefix, timeout).await
    }

    /// [`StockStore::connect`] to a target that may need TLS with a private CA.
    pub async fn connect_to(target: &crate::backend::RedisTarget, prefix: &str, timeout: Duration) -> Result<Self> {
        let client =
            target.cluster_builder().connection_timeout(timeout).response_timeout(timeout).retries(3).build()?;
        let conn = tokio::time::timeout(timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| StockError::Timeout(timeout * 2))??;
        let store = Self {
            conn: Arc::new(reconnect::Reconnecting::new(client, conn, timeout * 2)),
            keys: KeyLayout::new(prefix),
            scripts: Scripts::new(),
            timeout,
            durability: Durability::Fast,
            guard: Arc::new(guard::Guard::new(Breakers::new(5, Duration::from_secs(1)))),
            batcher: Arc::new(batch::Batcher::new(DEFAULT_CLAIM_BATCH)),
            claim_calls: Arc::default(),
        };
        store.load_breaker_table().await;
        Ok(store)
    }

    /// The same store sending at most `max` claims of one shard per script
    /// call (`FLASHGRAB_CLAIM_BATCH`; 1: every claim is its own call, made
    /// by the caller's task, with no queue or worker).
    pub fn with_claim_batch(mut self, max: usize) -> Self {
        self.batcher = Arc::new(batch::Batcher::new(max));
        self
    }

    /// Claim script calls made by this store (all clones) and the claims
    /// they carried.
    pub fn claim_calls(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.claim_calls[0].load(Relaxed), self.claim_calls[1].load(Relaxed))
    }

    /// Shards with a claim batch worker right now.
    pub fn batch_workers(&self) -> usize {
        self.batcher.workers()
    }

    /// The same store behind breakers (one per master) that open after
    /// `threshold` consecutive outage errors and pause for `open_for`. Reads
    /// the slot map for them (once, bounded by the timeout).
    pub async fn with_breakers(mut self, threshold: u32, open_for: Duration) -> Self {
        self.guard = Arc::new(guard::Guard::new(Breakers::new(threshold, open_for)));
        self.load_breaker_table().await;
        self
    }

    /// Cluster connections rebuilt after lasting trouble (see `reconnect`).
    pub fn reconnects(&self) -> u64 {
        self.conn.rebuilds()
    }

    /// The breakers of the masters (their states, for the metrics).
    pub fn breakers(&self) -> &Breakers {
        &self.guard.breakers
    }

    /// The same store answering grants in `durability` mode.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// A clone of the cluster connection, for callers outside this module
    /// that need raw commands (tests, the relay).
    pub fn connection(&self) -> ClusterConnection {
        self.conn.get()
    }

    /// `cluster_state:ok` as seen by the node that answers, and every master
    /// of the cluster's slot map answering PING on its own address. The second check is what makes
    /// `/readyz` say "down" between a master's death and its replica's
    /// promotion: for the cluster-node-timeout the survivors still report
    /// `cluster_state:ok` although that master's slots are unserved.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.get();
        let info: String = self.bounded(None, redis::cmd("CLUSTER").arg("INFO").query_async(&mut c)).await?;
        if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
            return Err(StockError::Protocol("cluster_state is not ok".into()));
        }
        // By address: routed by slot, the client would fall back to a
        // replica (or any node) when a master's connection is gone.
        let pings = self.slot_map().await?.masters().into_iter().map(|addr| {
            let mut c = self.conn.get();
            async move {
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| StockError::Protocol(format!("master address {addr:?}")))?;
                let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                self.bounded(None, c.route_command(redis::cmd("PING"), node)).await
            }
        });
        try_join_all(pings).await?;
        Ok(())
    }

    /// The live slot map.
    pub async fn slot_map(&self) -> Result<SlotMap> {
        let mut c = self.conn.get();
        let v: Value = self.bounded(None, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c)).await?;
        Ok(SlotMap::parse(&v)?)
    }

    fn shard_keys(&self, c: &Campaign, shard: u32) -> ShardKeys {
        self.keys.shard(c.shard_buckets[shard as usize], c.id.as_str(), shard)
    }

    /// Writes every shard of a new campaign: its stock and the window the
    /// claim script checks. Shards are written before the campaign row
    /// exists in MySQL, so a crash here leaves only unreachable keys.
    pub async fn init_campaign(&self, c: &Campaign) -> Result<()> {
        let vfrom = c.coupon.valid_from.map_or(0, |t| t.timestamp_millis());
        let vuntil = c.coupon.valid_until.map_or(0, |t| t.timestamp_millis());
        let vdays = c.coupon.valid_for_days.unwrap_or(0);
        let writes = (0..c.shards()).map(|s| {
            let k = self.shard_keys(c, s);
            let mut conn = self.conn.get();
            let fields: [(&str, i64); 8] = [
                ("remaining", c.initial_shard_stock(s) as i64),
                ("starts_ms", c.starts_at.timestamp_millis()),
                ("ends_ms", c.ends_at.timestamp_millis()),
                ("closed", 0),
                ("limit", i64::from(c.per_user_limit)),
                ("vfrom_ms", vfrom),
                ("vuntil_ms", vuntil),
                ("vdays", vdays),
            ];
            async move {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&k.hash);
                for (f, v) in fields {
                    cmd.arg(f).arg(v);
                }
                self.bounded(Some(&k.hash), cmd.query_async::<i64>(&mut conn)).await
            }
        });
        try_join_all(writes).await?;
        Ok(())
    }

    /// Marks every shard closed: the claim script answers "ended" from now on.
    /// In `replicated` mode each shard's write waits for a replica (see
    /// `replication`): a close answered 200 is not undone by a failover.
    /// No acknowledgement is [`StockError::NotAcknowledged`] (503); closing
    /// again is harmless, so the caller retries.
    pub async fn close_campaign(&self, c: &Campaign) -> Result<()> {
        let writes = (0..c.shards()).map(|s| {
            let k = self.shard_keys(c, s);
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HSET").arg(&k.hash).arg("closed").arg(1);
                self.acked(&k.hash, &format!("close of {} shard {s}", c.id.as_str()), &pipe, &[]).await
            }
        });
        try_join_all(writes).await?;
        Ok(())
    }

    /// One claim on `shard`: through the shard's batch worker (see
    /// `batch`), or as its own script call when batching is off.
    pub async fn claim_on_shard(
        &self,
        c: &Campaign,
        shard: u32,
        user: &UserId,
        coupon: &CouponId,
        idempotency_key: Option<&str>,
    ) -> Result<ShardClaim> {
        let item = batch::ClaimItem {
            user: user.as_str().to_owned(),
            coupon: coupon.as_str().to_owned(),
            key: idempotency_key.unwrap_or("").to_owned(),
        };
        if self.batcher.max() <= 1 {
            let k = self.shard_keys(c, shard);
            let mut answers = self.claim_batch(&k, c.id.as_str(), shard, &[&item]).await?;
            return answers.pop().unwrap_or_else(|| Err(StockError::Protocol("claim script: no answer".into())));
        }
        // The shard's key names are built only when its worker starts.
        let target = || batch::Target { keys: self.shard_keys(c, shard), campaign: c.id.as_str().to_owned(), shard };
        self.batcher.submit(self, c.id.as_str(), shard, target, item).await
    }

    /// Runs the claim script once on a shard for `items` (in order). In
    /// `replicated` mode the script is followed by `WAIT 1 <wait>` in ONE
    /// pipeline: both go to the node owning the shard's slot on the same
    /// connection, one after the other, so the WAIT counts replicas that
    /// acknowledged this very script's writes. (A WAIT sent separately could
    /// land elsewhere: the cluster client falls back to another node, even a
    /// random one, when the master's connection is gone, and a WAIT there
    /// proves nothing.)
    ///
    /// The client resends a call after a dropped connection or an I/O error
    /// (`.retries(3)`, and MOVED/ASK redirects), and the first copy may
    /// already have run. The script is idempotent per coupon id: a claim
    /// whose record exists is answered "granted" with that record again
    /// and nothing changes (no second decrement, holder entry or outbox
    /// entry), so the caller still answers the one 201 the client asked
    /// for. In `replicated` mode such a re-run writes a no-op, so the WAIT
    /// behind it still counts replicas that have the grant: never a 201 the
    /// WAIT did not cover.
    ///
    /// The outer error is the call's (every claim fails with it); the inner
    /// ones are per claim (`NotReplicated` for a grant no replica acked).
    pub(crate) async fn claim_batch(
        &self,
        k: &ShardKeys,
        campaign: &str,
        shard: u32,
        items: &[&batch::ClaimItem],
    ) -> Result<Vec<Result<ShardClaim>>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.claim_calls[0].fetch_add(1, Relaxed);
        self.claim_calls[1].fetch_add(items.len() as u64, Relaxed);
        let mut conn = self.conn.get();
        let (v, acked, wait) = match self.durability {
            Durability::Fast => {
                let mut inv = self.scripts.claim.key(&k.hash);
                inv.key(&k.holders).key(&k.coupons).key(&k.idem).key(&k.outbox).arg(campaign).arg(shard);
                for it in items {
                    inv.arg(&it.user).arg(&it.coupon).arg(&it.key);
                }
                let v: Value = self.bounded(Some(&k.hash), inv.invoke_async(&mut conn)).await?;
                (v, None, Duration::ZERO)
            }
            Durability::Replicated { wait } => {
                let mut evalsha = redis::cmd("EVALSHA");
                evalsha
                    .arg(self.scripts.claim.get_hash())
                    .arg(5)
                    .arg(&k.hash)
                    .arg(&k.holders)
                    .arg(&k.coupons)
                    .arg(&k.idem)
                    .arg(&k.outbox)
                    .arg(campaign)
                    .arg(shard);
                for it in items {
                    evalsha.arg(&it.user).arg(&it.coupon).arg(&it.key);
                }
                let mut pipe = redis::pipe();
                pipe.add_command(evalsha).cmd("WAIT").arg(1).arg(wait.as_millis() as u64);
                let mut loaded = false;
                let (v, acked): (Value, i64) = loop {
                    match self.bounded(Some(&k.hash), pipe.query_async(&mut conn)).await {
                        Err(StockError::Redis(e)) if !loaded && e.code() == Some("NOSCRIPT") => {
                            // A restarted node or a promoted replica: load, retry once.
                            self.bounded(Some(&k.hash), self.scripts.claim.load_async(&mut conn)).await?;
                            loaded = true;
                        }
                        r => break r?,
                    }
                };
                (v, Some(acked), wait)
            }
        };
        let answers = parse_batch_reply(&v, items.len())?;
        Ok(answers
            .into_iter()
            .map(|claim| match (claim, acked) {
                (ShardClaim::Granted(r) | ShardClaim::Replayed(r), Some(acked)) if acked < 1 => {
                    tracing::warn!(coupon = %r.id, acked, ?wait, "no replica acknowledged a grant in time: answering 503 (maybe granted)");
                    Err(StockError::NotReplicated { coupon: r.id, acked, wait })
                }
                (claim, _) => Ok(claim),
            })
            .collect())
    }

    /// A claim for `user`: on the home shard, borrowing stock from the other
    /// shards when the home shard is dry (bounded number of rounds).
    pub async fn claim(
        &self,
        c: &Campaign,
        user: &UserId,
        coupon: &CouponId,
        idempotency_key: Option<&str>,
    ) -> Result<ClaimOutcome> {
        /// Rounds of "borrow then retry" before giving up with `Contended`.
        const MAX_ROUNDS: usize = 8;
        let home = home_shard(user.as_str(), c.shards());
        for _ in 0..MAX_ROUNDS {
            match self.claim_on_shard(c, home, user, coupon, idempotency_key).await? {
                ShardClaim::Granted(r) => return Ok(ClaimOutcome::Granted(r)),
                ShardClaim::Replayed(r) => return Ok(ClaimOutcome::Replayed(r)),
                ShardClaim::Holding(ids) => return Ok(ClaimOutcome::Holding(ids)),
                ShardClaim::NotStarted { starts_ms } => {
                    return Ok(ClaimOutcome::NotStarted { starts_ms });
                }
                ShardClaim::Ended => return Ok(ClaimOutcome::Ended),
                ShardClaim::Missing => return Ok(ClaimOutcome::Missing),
                // Boxed: a rare path with a large state machine (it reads
                // every shard), kept out of every claim's future.
                ShardClaim::Dry => match Box::pin(self.borrow_for(c, home)).await? {
                    rebalance::Borrow::NothingLeft => return Ok(ClaimOutcome::SoldOut),
                    rebalance::Borrow::Retry => {}
                },
            }
        }
        Ok(ClaimOutcome::Contended)
    }

    /// Remaining, claimed and in-flight units of every shard. A unit is
    /// counted once: a journal entry whose transfer already landed (its id
    /// is in the destination's `xin`: a process died before deleting it) is
    /// in the destination's `remaining`, not in flight.
    pub async fn shard_stats(&self, c: &Campaign) -> Result<Vec<ShardStats>> {
        let reads = (0..c.shards()).map(|s| self.read_shard(c, s));
        let snaps = try_join_all(reads).await?;
        let unlanded = self.unlanded(c, &snaps).await?;
        Ok(snaps
            .into_iter()
            .zip(unlanded)
            .enumerate()
            .map(|(i, (s, in_flight))| ShardStats {
                shard: i as u32,
                remaining: s.remaining + in_flight,
                claimed: s.claimed,
                in_flight,
            })
            .collect())
    }

    /// The coupons `user` holds in campaign `c`, straight from the home
    /// shard: a claim shows here the moment the script granted it.
    pub async fn user_coupons(&self, c: &Campaign, user: &UserId) -> Result<Vec<CouponRecord>> {
        let k = self.shard_keys(c, home_shard(user.as_str(), c.shards()));
        let mut conn = self.conn.get();
        let held: Option<String> = self
            .bounded(Some(&k.holders), redis::cmd("HGET").arg(&k.holders).arg(user.as_str()).query_async(&mut conn))
            .await?;
        let Some(held) = held else {
            return Ok(Vec::new());
        };
        let ids: Vec<&str> = held.split(',').collect();
        let raw: Vec<Option<String>> = self
            .bounded(Some(&k.coupons), redis::cmd("HMGET").arg(&k.coupons).arg(&ids).query_async(&mut conn))
            .await?;
        raw.into_iter()
            .flatten()
            .map(|r| serde_json::from_str(&r).map_err(|e| StockError::Protocol(format!("claim record: {e}"))))
            .collect()
    }
}

impl StockStore {
    /// The newest entry id of each of `buckets`' outbox streams (`None`:
    /// empty): what a shutting down instance must see relayed before it
    /// stops its relay (everything granted through it is at or before these
    /// ids). One result per bucket: an unreachable master fails only its
    /// own buckets.
    pub async fn outbox_heads(&self, buckets: &[u16]) -> Vec<(u16, Result<Option<String>>)> {
        let reads = buckets.iter().map(|&b| async move {
            let key = self.keys.outbox(b);
            let mut conn = self.conn.get();
            let last: Result<redis::streams::StreamRangeReply> = self
                .bounded(
                    Some(&key),
                    redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut conn),
                )
                .await;
            (b, last.map(|l| l.ids.into_iter().next().map(|e| e.id)))
        });
        join_all(reads).await
    }

    /// For each of `heads`, whether its stream still has an entry at or
    /// before its id (the relay deletes an entry once the broker confirmed
    /// it). One result per bucket.
    pub async fn outbox_unrelayed(&self, heads: &[(u16, String)]) -> Vec<(u16, Result<bool>)> {
        let reads = heads.iter().map(|(b, id)| async move {
            let key = self.keys.outbox(*b);
            let mut conn = self.conn.get();
            let first: Result<redis::streams::StreamRangeReply> = self
                .bounded(
                    Some(&key),
                    redis::cmd("XRANGE").arg(&key).arg("-").arg(id).arg("COUNT").arg(1).query_async(&mut conn),
                )
                .await;
            (*b, first.map(|f| !f.ids.is_empty()))
        });
        join_all(reads).await
    }

    /// Every claim record of a campaign (all shards), for reconcile. Scans
    /// with HSCAN so a big campaign does not block a node.
    pub async fn campaign_records(&self, c: &Campaign) -> Result<Vec<CouponRecord>> {
        let mut out = Vec::new();
        let mut conn = self.conn.get();
        for s in 0..c.shards() {
            let key = self.shard_keys(c, s).coupons;
            let mut cursor = "0".to_owned();
            loop {
                let (next, flat): (String, Vec<String>) = self
                    .bounded(
                        Some(&key),
                        redis::cmd("HSCAN").arg(&key).arg(&cursor).arg("COUNT").arg(1000).query_async(&mut conn),
                    )
                    .await?;
                for pair in flat.chunks(2) {
                    if let [_, raw] = pair {
                        out.push(
                            serde_json::from_str(raw)
                                .map_err(|e| StockError::Protocol(format!("claim record in {key}: {e}")))?,
                        );
                    }
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(out)
    }
}

/// Errors that say the cluster (or a node of it) cannot be reached, as
/// opposed to an answer we did not like: these feed the breaker.
fn is_outage(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                )
        )
}

fn code_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn record_of(v: Option<&Value>) -> Result<CouponRecord> {
    let raw = text_of(v).ok_or_else(|| StockError::Protocol("claim script returned no record".into()))?;
    serde_json::from_str(&raw).map_err(|e| StockError::Protocol(format!("claim record {raw:?}: {e}")))
}

/// Decodes the reply of `lua/claim.lua` for a batch of `n` claims.
fn parse_batch_reply(v: &Value, n: usize) -> Result<Vec<ShardClaim>> {
    match v {
        Value::Array(replies) if replies.len() == n => replies.iter().map(parse_claim_reply).collect(),
        _ => Err(StockError::Protocol(format!("claim script: {n} answers expected, got {v:?}"))),
    }
}

/// Decodes one claim's reply of `lua/claim.lua`.
fn parse_claim_reply(v: &Value) -> Result<ShardClaim> {
    let Value::Array(parts) = v else {
        return Err(StockError::Protocol(format!("claim script: {v:?}")));
    };
    match parts.first().and_then(code_of) {
        Some(1) => Ok(ShardClaim::Granted(record_of(parts.get(1))?)),
        Some(2) => Ok(ShardClaim::Replayed(record_of(parts.get(1))?)),
        Some(3) => Ok(ShardClaim::Holding(
            text_of(parts.get(1)).unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        )),
        Some(4) => Ok(ShardClaim::NotStarted { starts_ms: parts.get(1).and_then(code_of).unwrap_or(0) }),
        Some(5) => Ok(ShardClaim::Ended),
        Some(6) => Ok(ShardClaim::Dry),
        Some(0) => Ok(ShardClaim::Missing),
        _ => Err(StockError::Protocol(format!("claim script: {v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_reply_of_the_claim_script() {
        let rec = r#"{"id":"A","campaign_id":"C","user_id":"u","shard":1,"claimed_at_ms":1,"valid_from_ms":1,"valid_until_ms":2}"#;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let granted = parse_claim_reply(&Value::Array(vec![Value::Int(1), bulk(rec)])).unwrap();
        assert!(matches!(granted, ShardClaim::Granted(r) if r.id == "A"));
        assert_eq!(
            parse_claim_reply(&Value::Array(vec![Value::Int(3), bulk("a,b")])).unwrap(),
            ShardClaim::Holding(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_claim_reply(&Value::Array(vec![Value::Int(4), Value::Int(99)])).unwrap(),
            ShardClaim::NotStarted { starts_ms: 99 }
        );
        assert_eq!(parse_claim_reply(&Value::Array(vec![Value::Int(6)])).unwrap(), ShardClaim::Dry);
        assert!(parse_claim_reply(&Value::Int(1)).is_err());
        assert!(parse_claim_reply(&Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn a_batch_reply_has_one_answer_per_claim() {
        let one = |code: i64| Value::Array(vec![Value::Int(code)]);
        let v = Value::Array(vec![one(6), one(5), one(0)]);
        assert_eq!(parse_batch_reply(&v, 3).unwrap(), vec![ShardClaim::Dry, ShardClaim::Ended, ShardClaim::Missing]);
        assert!(parse_batch_reply(&v, 2).is_err(), "a count that does not match is an error, not a guess");
        assert!(parse_batch_reply(&one(6), 1).is_err(), "the answers are wrapped in an array");
    }
}
