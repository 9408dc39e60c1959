//! The holdings index: which coupons a user holds, and of which campaign.
//!
//! A claim record lives on the user's home shard of its campaign, and a
//! coupon id (a ULID) does not say its campaign: without an index, finding
//! a user's coupons meant asking every campaign's shard (the newest 500
//! did, so older ones disappeared). `<prefix>:held:<user>` is a hash
//! coupon id -> campaign id, its own key (its slot is whatever its name
//! hashes to). A lookup costs one `HGET`/`HGETALL` plus the user's shard of
//! each campaign named: O(the user's coupons), never a scan of campaigns.
//!
//! Written off the claim path: the claim script runs on the shard's slot
//! and cannot write this key, and a write by the claim service after the
//! script cost the claim path 35 % (one round trip per grant, reverted).
//! The outbox relay writes it instead ([`StockStore::index_grants`]), for
//! the records of each pass, before it acks them (`outbox::relay`): a grant
//! is indexed once relayed, typically milliseconds after its 201.
//! `HSET` of the same field and value is a no-op, so a pass run twice (a
//! redelivery, a reclaimed entry) changes nothing.
//!
//! The index may name more than Redis holds (a campaign archived: archive
//! removes its entries, [`StockStore::unindex_campaign`], but a crash can
//! leave some; a grant a failover lost); readers check the claim record
//! and drop such entries ([`StockStore::forget_held`]). It may name less
//! (not relayed yet; the write failed; a failover of the index key's
//! master lost it): such a coupon is found in MySQL once persisted, and
//! by id through the campaigns live when it was claimed (`service::claims`).

use std::collections::BTreeMap;

use futures_util::StreamExt;

use super::{Result, StockError, StockStore};
use crate::domain::campaign::home_shard;
use crate::domain::{Campaign, CampaignId, CouponRecord, UserId};

/// Index writes in flight at once per pass (one `HSET` per user, over the
/// multiplexed connection, which pipelines them per node).
const WRITES_IN_FLIGHT: usize = 256;
/// Holders read per `HSCAN` step while unindexing a campaign.
const SCAN_COUNT: usize = 1000;

/// The outcome of one pass of index writes.
#[derive(Debug, Default)]
pub struct IndexWrites {
    /// Users whose index was written.
    pub written: usize,
    /// Users whose write failed, and the first error.
    pub failed: usize,
    pub first_error: Option<StockError>,
}

impl StockStore {
    /// Indexes `records` (granted coupons): one `HSET <prefix>:held:<user>
    /// <coupon> <campaign> ...` per user, all users concurrently (bounded).
    /// Idempotent. Redis Cluster cannot take one pipeline over several
    /// slots (redis-rs routes a pipeline as one unit, by its first key: a
    /// key of another node answers MOVED), and the users' keys are spread
    /// over every slot, so each user's write is its own command; the
    /// multiplexed connection of each node pipelines those that are in
    /// flight together. Failures are counted, not retried here.
    pub async fn index_grants(&self, records: &[&CouponRecord]) -> IndexWrites {
        let mut by_user: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for r in records {
            by_user.entry(r.user_id.as_str()).or_default().push((r.id.as_str(), r.campaign_id.as_str()));
        }
        // Owned commands: the stream of writes borrows nothing but `self`.
        let cmds: Vec<(String, redis::Cmd)> = by_user
            .into_iter()
            .map(|(user, pairs)| {
                let key = self.keys.held(user);
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&key);
                for (coupon, campaign) in pairs {
                    cmd.arg(coupon).arg(campaign);
                }
                (key, cmd)
            })
            .collect();
        let writes = cmds.into_iter().map(|(key, cmd)| async move {
            let mut conn = self.conn.get();
            self.bounded(Some(&key), cmd.query_async::<i64>(&mut conn)).await
        });
        let mut out = IndexWrites::default();
        let mut results = futures_util::stream::iter(writes).buffer_unordered(WRITES_IN_FLIGHT);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) => out.written += 1,
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
        out
    }

    /// The user's indexed coupons: (coupon id, campaign id), unordered.
    /// Entries whose campaign id is not one are skipped.
    pub async fn held(&self, user: &UserId) -> Result<Vec<(String, CampaignId)>> {
        let key = self.keys.held(user.as_str());
        let mut conn = self.conn.get();
        let all: Vec<(String, String)> =
            self.bounded(Some(&key), redis::cmd("HGETALL").arg(&key).query_async(&mut conn)).await?;
        Ok(all.into_iter().filter_map(|(coupon, c)| CampaignId::parse(&c).map(|c| (coupon, c))).collect())
    }

    /// The campaign the index says `coupon` of `user` belongs to.
    pub async fn held_campaign(&self, user: &UserId, coupon: &str) -> Result<Option<CampaignId>> {
        let key = self.keys.held(user.as_str());
        let mut conn = self.conn.get();
        let c: Option<String> =
            self.bounded(Some(&key), redis::cmd("HGET").arg(&key).arg(coupon).query_async(&mut conn)).await?;
        Ok(c.and_then(|c| CampaignId::parse(&c)))
    }

    /// Drops `coupons` from the user's index (Redis holds no record of
    /// them any more).
    pub async fn forget_held(&self, user: &UserId, coupons: &[&str]) -> Result<()> {
        if coupons.is_empty() {
            return Ok(());
        }
        let key = self.keys.held(user.as_str());
        let mut conn = self.conn.get();
        let _: i64 = self.bounded(Some(&key), redis::cmd("HDEL").arg(&key).arg(coupons).query_async(&mut conn)).await?;
        Ok(())
    }

    /// The claim records of `ids` on the user's home shard of `c`, those
    /// that exist and are the user's, in no particular order.
    pub async fn user_records(&self, c: &Campaign, user: &UserId, ids: &[&str]) -> Result<Vec<CouponRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.shard_keys(c, home_shard(user.as_str(), c.shards()));
        let mut conn = self.conn.get();
        let raw: Vec<Option<String>> =
            self.bounded(Some(&k.coupons), redis::cmd("HMGET").arg(&k.coupons).arg(ids).query_async(&mut conn)).await?;
        let mut out = Vec::new();
        for r in raw.into_iter().flatten() {
            let r: CouponRecord =
                serde_json::from_str(&r).map_err(|e| StockError::Protocol(format!("claim record: {e}")))?;
            if r.user_id == user.as_str() {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Removes every grant of `c` from its holders' indexes (archive, before
    /// the shards' keys go): the holders hash of each shard says who holds
    /// which coupons (`HSCAN`), one `HDEL` per holder. Returns the entries
    /// asked to be removed. Idempotent; a shard already deleted has no
    /// holders left, and stale entries a crash leaves are dropped by readers.
    pub async fn unindex_campaign(&self, c: &Campaign) -> Result<u64> {
        let mut removed = 0u64;
        for s in 0..c.shards() {
            let holders = self.shard_keys(c, s).holders;
            let mut cursor = "0".to_owned();
            loop {
                let mut conn = self.conn.get();
                let (next, flat): (String, Vec<String>) = self
                    .bounded(
                        Some(&holders),
                        redis::cmd("HSCAN")
                            .arg(&holders)
                            .arg(&cursor)
                            .arg("COUNT")
                            .arg(SCAN_COUNT)
                            .query_async(&mut conn),
                    )
                    .await?;
                // Owned commands, as in `index_grants`.
                let cmds: Vec<(String, u64, redis::Cmd)> = flat
                    .chunks(2)
                    .filter_map(|pair| match pair {
                        [user, ids] => {
                            let key = self.keys.held(user);
                            let mut cmd = redis::cmd("HDEL");
                            cmd.arg(&key);
                            let mut n = 0;
                            for id in ids.split(',').filter(|id| !id.is_empty()) {
                                cmd.arg(id);
                                n += 1;
                            }
                            (n > 0).then_some((key, n, cmd))
                        }
                        _ => None,
                    })
                    .collect();
                let dels = cmds.into_iter().map(|(key, n, cmd)| async move {
                    let mut conn = self.conn.get();
                    self.bounded(Some(&key), cmd.query_async::<i64>(&mut conn)).await.map(|_| n)
                });
                let mut results = futures_util::stream::iter(dels).buffer_unordered(WRITES_IN_FLIGHT);
                while let Some(r) = results.next().await {
                    removed += r?;
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }
}
