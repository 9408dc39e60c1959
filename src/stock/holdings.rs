//! The holdings index: which campaigns a user holds coupons of.
//!
//! A claim record lives on the user's home shard of its campaign, and a
//! coupon id (a ULID) does not say its campaign: without an index, finding
//! a user's coupons meant asking every campaign's shard (the newest 500
//! did, so older ones disappeared). `<prefix>:held:<user>` is a set of
//! campaign ids, its own key: the claim script runs on the shard's slot
//! and cannot write it, so the claim service adds the campaign after the
//! script granted (see `service::claims`). A lookup costs one `SMEMBERS`
//! plus the user's shard of each campaign in it: O(the user's campaigns).
//!
//! The set may name more than the user holds in Redis (a campaign whose
//! keys are gone, a grant a failover lost); readers drop such entries
//! with [`StockStore::forget_held`]. It may name less (the write failed, a
//! failover lost it): such a coupon is found in MySQL once persisted.

use super::{Result, StockStore};
use crate::domain::{CampaignId, UserId};

impl StockStore {
    /// Records that `user` holds a coupon of `campaign` (`SADD`, idempotent).
    pub async fn index_held(&self, user: &UserId, campaign: &CampaignId) -> Result<()> {
        let key = self.keys.held(user.as_str());
        let mut conn = self.conn.get();
        let _: i64 =
            self.on_key(&key, redis::cmd("SADD").arg(&key).arg(campaign.as_str()).query_async(&mut conn)).await?;
        Ok(())
    }

    /// The campaigns `user` is indexed as holding coupons of (unordered).
    pub async fn held_campaigns(&self, user: &UserId) -> Result<Vec<CampaignId>> {
        let key = self.keys.held(user.as_str());
        let mut conn = self.conn.get();
        let ids: Vec<String> = self.on_key(&key, redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn)).await?;
        Ok(ids.iter().filter_map(|id| CampaignId::parse(id)).collect())
    }

    /// Drops `campaigns` from the user's index (they hold nothing there
    /// in Redis any more).
    pub async fn forget_held(&self, user: &UserId, campaigns: &[CampaignId]) -> Result<()> {
        if campaigns.is_empty() {
            return Ok(());
        }
        let key = self.keys.held(user.as_str());
        let mut conn = self.conn.get();
        let ids: Vec<&str> = campaigns.iter().map(CampaignId::as_str).collect();
        let _: i64 = self.on_key(&key, redis::cmd("SREM").arg(&key).arg(&ids).query_async(&mut conn)).await?;
        Ok(())
    }

    /// A call on `key`'s slot, through the store's breaker and timeout.
    async fn on_key<T>(&self, key: &str, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        self.bounded(Some(key), fut).await
    }
}
