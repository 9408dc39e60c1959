//! A campaign's stock in Redis from its start to its close: every shard
//! written when the campaign is created, marked closed when it is closed.
//! (Top-ups, restores and archiving have their own modules.)

use futures_util::future::try_join_all;

use super::{Result, StockStore};
use crate::domain::Campaign;

impl StockStore {
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
}
