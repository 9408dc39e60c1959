//! The Redis side of archiving an ended campaign: count what its shards
//! hold, then delete its per-shard keys.
//!
//! Why: a shard's keys (stock hash, holders, claim records, idempotency
//! keys, transfer journals) have no expiry; every grant leaves about 300
//! bytes in Redis for good (docs/OPERATIONS.md, "Sizing"). Once MySQL holds
//! every grant of an ended campaign they are only a second copy, and the
//! service reads MySQL for an archived campaign (`service::archive`).
//!
//! Kept: the outbox streams (shared by every shard of a bucket, trimmed by
//! the relay) and the `xpend` sets (shared too; the shard's member is
//! removed). The users' holdings index entries of the campaign are removed
//! first, by `holdings::unindex_campaign` (it reads the holders hash that
//! goes here).
//!
//! Deletion is `UNLINK` (the memory is freed off the main thread, so a big
//! campaign does not stall the node), one command per shard: all keys of a
//! shard share one slot. Deleting twice is harmless, which makes the whole
//! archive idempotent.

use futures_util::future::try_join_all;

use super::{Result, StockStore};
use crate::domain::Campaign;

/// What a campaign's shards hold, read before archiving it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Claim records (HLEN of every shard's coupon hash, summed).
    pub claimed: u64,
    /// Transfer journal entries still pending (`xout`, summed).
    pub journaled: u64,
    /// Shards whose stock hash exists (0 once archived).
    pub shards_present: u32,
}

impl StockStore {
    /// Counts the claim records, journal entries and live shards of `c`.
    pub async fn census(&self, c: &Campaign) -> Result<Census> {
        let reads = (0..c.shards()).map(|s| async move {
            let k = self.shard_keys(c, s);
            let mut conn = self.conn.get();
            let mut pipe = redis::pipe();
            pipe.cmd("HLEN").arg(&k.coupons).cmd("HLEN").arg(&k.xout).cmd("EXISTS").arg(&k.hash);
            let (claimed, journaled, exists): (u64, u64, u32) =
                self.bounded(Some(&k.hash), pipe.query_async(&mut conn)).await?;
            Ok::<_, super::StockError>(Census { claimed, journaled, shards_present: exists })
        });
        Ok(try_join_all(reads).await?.into_iter().fold(Census::default(), |a, b| Census {
            claimed: a.claimed + b.claimed,
            journaled: a.journaled + b.journaled,
            shards_present: a.shards_present + b.shards_present,
        }))
    }

    /// Deletes every per-shard key of `c` (UNLINK) and its members of the
    /// `xpend` sets. Returns how many keys existed. Idempotent.
    pub async fn delete_campaign_keys(&self, c: &Campaign) -> Result<u64> {
        let dels = (0..c.shards()).map(|s| async move {
            let k = self.shard_keys(c, s);
            let bucket = c.shard_buckets[s as usize];
            let mut conn = self.conn.get();
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK")
                .arg(&k.hash)
                .arg(&k.holders)
                .arg(&k.coupons)
                .arg(&k.idem)
                .arg(&k.xout)
                .arg(&k.xin)
                .cmd("SREM")
                .arg(self.keys.pending_transfers(bucket))
                .arg(format!("{}:{s}", c.id.as_str()))
                .ignore();
            let (n,): (u64,) = self.bounded(Some(&k.hash), pipe.query_async(&mut conn)).await?;
            Ok::<_, super::StockError>(n)
        });
        Ok(try_join_all(dels).await?.into_iter().sum())
    }

    /// Takes the lock `<prefix>:<name>` for `ttl` unless someone holds it
    /// (SET NX PX): one archiver pass at a time over all instances. Never
    /// released early; it expires. Correctness does not depend on it (the
    /// archive is idempotent), it only spares duplicate work.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let mut conn = self.conn.get();
        let key = format!("{}:{name}", self.keys.prefix());
        let set: Option<String> = self
            .bounded(
                Some(&key),
                redis::cmd("SET")
                    .arg(&key)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }
}
