//! Reads of the stock: per-shard figures for stats, a user's coupons
//! (from the home shard), and every claim record of a campaign (the
//! reconcile scan).

use futures_util::future::try_join_all;

use super::{Result, StockError, StockStore};
use crate::domain::campaign::home_shard;
use crate::domain::{Campaign, CouponRecord, UserId};

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

impl StockStore {
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
