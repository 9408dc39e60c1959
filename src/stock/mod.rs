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
pub mod breaker;
pub mod broadcast;
mod claim;
mod guard;
pub mod holdings;
pub mod keys;
mod lifecycle;
pub mod placement;
mod reads;
pub mod rebalance;
pub mod reconnect;
pub mod replication;
pub mod restore;
pub mod topup;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::domain::Campaign;
use breaker::Breakers;
pub use claim::{ClaimOutcome, ShardClaim};
pub use keys::{KeyLayout, ShardKeys};
pub use placement::{PlacementError, SlotMap};
pub use reads::ShardStats;

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
    /// the call was not even tried (see `breaker`).
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

    /// The bound of any single call of this store.
    pub fn timeout(&self) -> Duration {
        self.timeout
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
