//! Changes to a live campaign's shards: a top-up (more units) and a later
//! end (`PATCH /v1/campaigns/{id}`, see `service::changes`).
//!
//! A top-up adds units to every shard with `give.lua`, the destination
//! half of a stock transfer, keyed by `<top-up id>` in the shard's `xin`
//! journal: applied at most once per shard, however often it is replayed
//! (by the request, or by the recovery of a top-up whose process died
//! half-way). It also bumps the shard's transfer epoch `xe`, which keeps
//! the sold-out proof sound (`stock::rebalance`): a scan that saw a shard
//! empty before the top-up and sees its epoch moved afterwards does not
//! conclude "sold out". The stats never count an `xin` entry as in flight
//! (only `xout` entries are), so units given are plain `remaining`.

use futures_util::future::try_join_all;

use super::{Result, StockStore};
use crate::domain::Campaign;
use crate::domain::campaign::split_stock;

/// The `xin` key of a top-up on a shard: it cannot collide with a transfer
/// id (a bare ULID).
fn topup_key(topup_id: &str) -> String {
    format!("topup:{topup_id}")
}

impl StockStore {
    /// Adds `units` to the campaign, split over its shards as at creation
    /// (evenly, the remainder one unit each on the first shards). Safe to
    /// run again with the same id: each shard applies it once. In
    /// `replicated` mode each shard's step waits for a replica; an
    /// unacknowledged step fails the call (a retry or the recovery
    /// finishes it).
    pub async fn top_up(&self, c: &Campaign, topup_id: &str, units: u64) -> Result<()> {
        let key = topup_key(topup_id);
        let steps = (0..c.shards()).filter_map(|s| {
            let n = split_stock(units, c.shards(), s);
            (n > 0).then(|| {
                let k = self.shard_keys(c, s);
                let key = key.clone();
                async move {
                    let (_applied, acked) =
                        self.eval_step(&self.scripts.give, &[&k.hash, &k.xin], &[key.clone(), n.to_string()]).await?;
                    self.check_acked(&key, "top-up", acked)
                }
            })
        });
        try_join_all(steps).await?;
        Ok(())
    }

    /// Writes the campaign's (later) end into every shard, which the claim
    /// script checks. Idempotent; waits for a replica in `replicated` mode.
    pub async fn set_end(&self, c: &Campaign) -> Result<()> {
        let ends_ms = c.ends_at.timestamp_millis();
        let writes = (0..c.shards()).map(|s| {
            let k = self.shard_keys(c, s);
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HSET").arg(&k.hash).arg("ends_ms").arg(ends_ms);
                self.acked(&k.hash, &format!("end of {} shard {s}", c.id.as_str()), &pipe, &[]).await
            }
        });
        try_join_all(writes).await?;
        Ok(())
    }
}
