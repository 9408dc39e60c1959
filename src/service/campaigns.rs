//! Creating, reading and closing campaigns, and their stats.
//!
//! A campaign is written to Redis (its shards) before MySQL (its row): a
//! crash in between leaves only unreachable Redis keys, never a campaign row
//! without stock. Reads go through a small per-instance cache with a short
//! TTL; correctness does not depend on it (the claim script checks the
//! window and the `closed` flag in Redis itself), it only spares MySQL a
//! query per claim.
//!
//! An archived campaign (`service::archive`) has no shards left in Redis:
//! it is over by definition (ended or closed, so every read answers from
//! the window without Redis), and its stats come from MySQL.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

mod changes;

pub use changes::{Created, Patched};

use super::Result;
use crate::db::Db;
use crate::domain::{Campaign, CampaignId, CampaignStatus, NewCampaign};
use crate::stock::placement::{default_shards, place_shards};
use crate::stock::{ShardStats, StockStore};

/// At most this many campaigns are cached per instance.
const CACHE_CAPACITY: usize = 10_000;
/// `GET /v1/campaigns` returns at most this many, newest first.
pub const LIST_LIMIT: u32 = 500;

/// A campaign and its status at the time it was read.
#[derive(Debug, Clone)]
pub struct CampaignView {
    pub campaign: Arc<Campaign>,
    pub status: CampaignStatus,
}

/// `GET /v1/campaigns/{id}/stats`.
#[derive(Debug, Clone)]
pub struct CampaignStats {
    pub view: CampaignView,
    pub remaining: u64,
    pub claimed: u64,
    pub persisted: u64,
    /// Coupons currently redeemed, and the discount they gave (MySQL).
    pub redeemed: u64,
    pub discount_total_cents: i64,
    pub shards: Vec<ShardStats>,
}

#[derive(Clone)]
pub struct CampaignService {
    db: Db,
    stock: StockStore,
    cache: Arc<CampaignCache>,
}

struct CampaignCache {
    ttl: Duration,
    entries: RwLock<HashMap<CampaignId, (Instant, Arc<Campaign>)>>,
}

impl CampaignCache {
    fn get(&self, id: &CampaignId) -> Option<Arc<Campaign>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(id).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, c)| c.clone())
    }

    /// The cached copy whatever its age.
    fn get_stale(&self, id: &CampaignId) -> Option<Arc<Campaign>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).get(id).map(|(_, c)| c.clone())
    }

    fn put(&self, c: Arc<Campaign>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(c.id.clone(), (Instant::now(), c));
    }

    /// Ids of the cached campaigns not closed (those whose terms may still
    /// change).
    fn open_ids(&self) -> Vec<CampaignId> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().filter(|(_, (_, c))| c.closed_at.is_none()).map(|(id, _)| id.clone()).collect()
    }

    fn forget(&self, id: &CampaignId) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Replaces a cached copy by one that says closed (kept fresh for a TTL,
    /// so claims are answered `ended` from memory, MySQL up or not).
    fn mark_closed(&self, id: &CampaignId, at: DateTime<Utc>) {
        if let Some(c) = self.get_stale(id).filter(|c| c.closed_at.is_none()) {
            let mut closed = (*c).clone();
            closed.closed_at = Some(at);
            self.put(Arc::new(closed));
        }
    }
}

/// Stable seed from the campaign id, to rotate shard placement.
fn seed_of(id: &CampaignId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl CampaignService {
    pub fn new(db: Db, stock: StockStore, cache_ttl: Duration) -> Self {
        Self { db, stock, cache: Arc::new(CampaignCache { ttl: cache_ttl, entries: RwLock::new(HashMap::new()) }) }
    }

    pub async fn create(&self, new: NewCampaign, now: DateTime<Utc>) -> Result<CampaignView> {
        let campaign = self.build(new, now).await?;
        self.stock.init_campaign(&campaign).await?;
        self.db.insert_campaign(&campaign).await?;
        Ok(self.created(campaign, now))
    }

    /// A new campaign's row: its id and the placement of its shards.
    async fn build(&self, new: NewCampaign, now: DateTime<Utc>) -> Result<Campaign> {
        let id = CampaignId::generate();
        let map = self.stock.slot_map().await?;
        let shards = new.shards.unwrap_or_else(|| default_shards(new.total_stock, map.masters().len()));
        let shard_buckets =
            place_shards(self.stock.keys(), &map, shards, seed_of(&id)).map_err(crate::stock::StockError::from)?;
        Ok(Campaign {
            id,
            name: new.name,
            total_stock: new.total_stock,
            per_user_limit: new.per_user_limit,
            starts_at: new.starts_at,
            ends_at: new.ends_at,
            closed_at: None,
            coupon: new.coupon,
            shard_buckets,
            created_at: now,
            tally: Default::default(),
        })
    }

    /// Caches a campaign just written and answers it.
    fn created(&self, campaign: Campaign, now: DateTime<Utc>) -> CampaignView {
        let campaign = Arc::new(campaign);
        self.cache.put(campaign.clone());
        tracing::info!(campaign = %campaign.id, shards = campaign.shards(), stock = campaign.total_stock, "campaign created");
        let status = campaign.status_at(now, false);
        CampaignView { campaign, status }
    }

    /// The campaign's terms, from the cache when fresh. When MySQL cannot be
    /// reached, a stale cached copy is used rather than failing the claim:
    /// the terms never change after creation except `closed_at`, and a close
    /// is enforced by the shards in Redis anyway.
    pub async fn find(&self, id: &CampaignId) -> Result<Option<Arc<Campaign>>> {
        if let Some(c) = self.cache.get(id) {
            return Ok(Some(c));
        }
        // Boxed: the query's state machine is large, and inline it would be
        // built and moved with every claim although nearly all are hits.
        Box::pin(self.load(id)).await
    }

    /// `find` on a cache miss: MySQL, else a stale copy while MySQL is down.
    async fn load(&self, id: &CampaignId) -> Result<Option<Arc<Campaign>>> {
        match self.db.get_campaign(id).await {
            Ok(Some(mut c)) => {
                // The claim counters live on across refreshes of the terms.
                if let Some(old) = self.cache.get_stale(id) {
                    c.tally = old.tally.clone();
                }
                let c = Arc::new(c);
                self.cache.put(c.clone());
                Ok(Some(c))
            }
            Ok(None) => Ok(None),
            Err(e) => match self.cache.get_stale(id) {
                Some(c) => {
                    tracing::warn!(error = %e, campaign = %id, "mysql unavailable; using the cached campaign");
                    // Trust it for another TTL instead of paying a failed
                    // query on every claim while MySQL is down.
                    self.cache.put(c.clone());
                    Ok(Some(c))
                }
                None => Err(e.into()),
            },
        }
    }

    async fn view(&self, campaign: Arc<Campaign>, now: DateTime<Utc>) -> Result<CampaignView> {
        let live = campaign.status_at(now, false) == CampaignStatus::Live;
        let sold_out = live && self.stock.shard_stats(&campaign).await?.iter().all(|s| s.remaining == 0);
        let status = campaign.status_at(now, sold_out);
        Ok(CampaignView { campaign, status })
    }

    pub async fn get(&self, id: &CampaignId, now: DateTime<Utc>) -> Result<Option<CampaignView>> {
        match self.db.get_campaign(id).await? {
            None => Ok(None),
            Some(c) => Ok(Some(self.view(Arc::new(c), now).await?)),
        }
    }

    pub async fn list(&self, now: DateTime<Utc>) -> Result<Vec<CampaignView>> {
        let rows = self.db.list_campaigns(LIST_LIMIT).await?;
        let views = rows.into_iter().map(|c| self.view(Arc::new(c), now));
        futures_util::future::try_join_all(views).await
    }

    /// The cached terms of a campaign, however old, without any I/O: for
    /// the fast paths, which only need what never changes after creation
    /// (the window) or changes one way only (`closed_at`).
    pub fn cached(&self, id: &CampaignId) -> Option<Arc<Campaign>> {
        self.cache.get_stale(id)
    }

    /// Drops the cached copy (an archived campaign: the next read is fresh).
    pub fn forget(&self, id: &CampaignId) {
        self.cache.forget(id);
    }

    /// Applies a `closed` notice from another instance (or this one).
    pub fn apply_closed(&self, id: &CampaignId, at: DateTime<Utc>) {
        self.cache.mark_closed(id, at);
    }

    /// Terms of the newest campaigns, without touching Redis.
    pub async fn list_terms(&self) -> Result<Vec<Arc<Campaign>>> {
        Ok(self.db.list_campaigns(LIST_LIMIT).await?.into_iter().map(Arc::new).collect())
    }

    /// Ends the campaign now; closing a closed campaign changes nothing.
    pub async fn close(&self, id: &CampaignId, now: DateTime<Utc>) -> Result<Option<CampaignView>> {
        let Some(c) = self.db.get_campaign(id).await? else {
            return Ok(None);
        };
        self.db.close_campaign(id, now).await?;
        self.stock.close_campaign(&c).await?;
        self.cache.forget(id);
        tracing::info!(campaign = %id, "campaign closed");
        // The other instances drop their copy too; one that misses the
        // notice still answers `ended` from the script, and refreshes its
        // copy within the cache TTL.
        if let Err(e) = self.stock.publish(&crate::stock::broadcast::Notice::Closed(id.clone())).await {
            tracing::warn!(error = %e, campaign = %id, "could not broadcast the close");
        }
        self.get(id, now).await
    }

    pub async fn stats(&self, id: &CampaignId, now: DateTime<Utc>) -> Result<Option<CampaignStats>> {
        let Some(c) = self.db.get_campaign(id).await? else {
            return Ok(None);
        };
        let c = Arc::new(c);
        // Archived: its shards are gone from Redis; MySQL holds every grant
        // (see `service::archive`), so the rows are the counts.
        if self.db.archive_state(id).await?.is_some() {
            let (persisted, redemptions) =
                tokio::join!(self.db.count_persisted(id), self.db.redemption_totals(id.as_str()));
            let (claimed, (redeemed, discount_total_cents)) = (persisted?, redemptions?);
            return Ok(Some(CampaignStats {
                view: CampaignView { status: c.status_at(now, false), campaign: c.clone() },
                remaining: c.total_stock.saturating_sub(claimed),
                claimed,
                persisted: claimed,
                redeemed,
                discount_total_cents,
                shards: Vec::new(),
            }));
        }
        let (shards, persisted, redemptions) = tokio::join!(
            self.stock.shard_stats(&c),
            self.db.count_persisted(id),
            self.db.redemption_totals(id.as_str())
        );
        let shards = shards?;
        let (redeemed, discount_total_cents) = redemptions?;
        let remaining = shards.iter().map(|s| s.remaining).sum();
        let claimed = shards.iter().map(|s| s.claimed).sum();
        let status = c.status_at(now, remaining == 0);
        Ok(Some(CampaignStats {
            view: CampaignView { campaign: c, status },
            remaining,
            claimed,
            persisted: persisted?,
            redeemed,
            discount_total_cents,
            shards,
        }))
    }
}
