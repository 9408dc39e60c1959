//! Moving stock between shards of one campaign.
//!
//! A user's holdings live on their home shard, so when that shard runs dry
//! while others still hold stock, units must move *to* it. The two shards are
//! in different slots (often on different masters), so no single script can
//! move a unit. The transfer is journaled instead:
//!
//! 1. `take.lua` on the donor: decrement `remaining` by n and write
//!    `xout[id] = "n:dest:ts"` in the same script (units are now in flight);
//! 2. `give.lua` on the destination: `HSETNX xin[id]`; only if new, add n to
//!    `remaining` (so a replay can never add twice);
//! 3. `HDEL xout[id]` on the donor: the transfer is complete.
//!
//! A process dying after 1 leaves the units in the donor's journal, counted
//! as in flight by the stats; any instance later replays 2 and 3 ([`recover`]).
//! Nothing is created (2 is idempotent) and nothing is lost (1 journals in
//! the same atomic step as it takes). A campaign is sold out only when every
//! shard is empty *and* no journal holds units.

use futures_util::future::try_join_all;

use super::{Result, StockError, StockStore};
use crate::domain::Campaign;

/// What a borrowing attempt achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Borrow {
    /// Units moved (or something else changed): claim again.
    Retry,
    /// Every shard is empty and nothing is in flight: sold out.
    NothingLeft,
}

/// One shard as read in a single round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub remaining: u64,
    pub claimed: u64,
    /// Pending outgoing transfers: (transfer id, units, destination shard).
    pub pending: Vec<(String, u64, u32)>,
}

impl ShardSnapshot {
    pub fn in_flight(&self) -> u64 {
        self.pending.iter().map(|(_, n, _)| n).sum()
    }
}

fn parse_journal_entry(id: String, v: &str) -> Option<(String, u64, u32)> {
    let mut parts = v.split(':');
    let n = parts.next()?.parse().ok()?;
    let dest = parts.next()?.parse().ok()?;
    Some((id, n, dest))
}

impl StockStore {
    /// Remaining, claimed and the pending journal of one shard, in one
    /// pipeline (same slot).
    pub async fn read_shard(&self, c: &Campaign, shard: u32) -> Result<ShardSnapshot> {
        let k = self.shard_keys(c, shard);
        let mut conn = self.conn.get();
        let mut pipe = redis::pipe();
        // claimed = number of claim records (the script keeps no counter).
        pipe.cmd("HGET").arg(&k.hash).arg("remaining").cmd("HLEN").arg(&k.coupons).cmd("HGETALL").arg(&k.xout);
        let (remaining, claimed, journal): (Option<i64>, i64, Vec<(String, String)>) =
            self.bounded(Some(&k.hash), pipe.query_async(&mut conn)).await?;
        let mut pending = Vec::with_capacity(journal.len());
        for (id, v) in journal {
            let entry = parse_journal_entry(id, &v)
                .ok_or_else(|| StockError::Protocol(format!("bad transfer journal entry {v:?}")))?;
            pending.push(entry);
        }
        Ok(ShardSnapshot { remaining: remaining.unwrap_or(0).max(0) as u64, claimed: claimed.max(0) as u64, pending })
    }

    /// Step 1 of a transfer. Returns the transfer id and the units actually
    /// taken (0: the donor was empty, nothing journaled).
    pub async fn begin_transfer(&self, c: &Campaign, donor: u32, dest: u32, want: u64) -> Result<(String, u64)> {
        let id = ulid::Ulid::new().to_string();
        let k = self.shard_keys(c, donor);
        let mut inv = self.scripts.take.key(&k.hash);
        inv.key(&k.xout).arg(&id).arg(want).arg(dest);
        let mut conn = self.conn.get();
        let taken: u64 = self.bounded(Some(&k.hash), inv.invoke_async(&mut conn)).await?;
        Ok((id, taken))
    }

    /// Steps 2 and 3 of a transfer; safe to run any number of times, by any
    /// instance, at any moment after step 1.
    pub async fn finish_transfer(&self, c: &Campaign, donor: u32, dest: u32, id: &str, units: u64) -> Result<()> {
        let kd = self.shard_keys(c, dest);
        let mut inv = self.scripts.give.key(&kd.hash);
        inv.key(&kd.xin).arg(id).arg(units);
        let mut conn = self.conn.get();
        let _applied: i64 = self.bounded(Some(&kd.hash), inv.invoke_async(&mut conn)).await?;
        let ks = self.shard_keys(c, donor);
        let _: i64 =
            self.bounded(Some(&ks.xout), redis::cmd("HDEL").arg(&ks.xout).arg(id).query_async(&mut conn)).await?;
        Ok(())
    }

    /// Completes every transfer journaled on any shard of `c` (e.g. left by a
    /// process that died between step 1 and step 3). Returns how many.
    pub async fn recover(&self, c: &Campaign) -> Result<usize> {
        let snaps = try_join_all((0..c.shards()).map(|s| self.read_shard(c, s))).await?;
        self.recover_from(c, &snaps).await
    }

    async fn recover_from(&self, c: &Campaign, snaps: &[ShardSnapshot]) -> Result<usize> {
        let mut done = 0;
        for (donor, snap) in snaps.iter().enumerate() {
            for (id, units, dest) in &snap.pending {
                if *dest >= c.shards() {
                    return Err(StockError::Protocol(format!("transfer {id} to unknown shard {dest}")));
                }
                self.finish_transfer(c, donor as u32, *dest, id, *units).await?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// Called when `home` answered "dry": moves stock from the fullest other
    /// shard (half of what it holds, at least one unit), finishing stale
    /// journaled transfers on the way. Answers `NothingLeft` only when a
    /// snapshot saw every shard empty and no unit in flight.
    pub async fn borrow_for(&self, c: &Campaign, home: u32) -> Result<Borrow> {
        let snaps = try_join_all((0..c.shards()).map(|s| self.read_shard(c, s))).await?;
        let in_flight: u64 = snaps.iter().map(ShardSnapshot::in_flight).sum();
        let donor = snaps
            .iter()
            .enumerate()
            .filter(|(i, s)| *i as u32 != home && s.remaining > 0)
            .max_by_key(|(_, s)| s.remaining)
            .map(|(i, s)| (i as u32, s.remaining));
        match donor {
            Some((donor, remaining)) => {
                let (id, taken) = self.begin_transfer(c, donor, home, remaining.div_ceil(2)).await?;
                if taken > 0 {
                    self.finish_transfer(c, donor, home, &id, taken).await?;
                }
                Ok(Borrow::Retry)
            }
            None if in_flight > 0 => {
                // Units are journaled but not landed: land them (a live
                // transfer may finish concurrently; both are idempotent).
                self.recover_from(c, &snaps).await?;
                Ok(Borrow::Retry)
            }
            None if snaps[home as usize].remaining > 0 => Ok(Borrow::Retry),
            None => {
                // The reads above are not one consistent cut: a unit may have
                // moved from a shard not yet read to one already read. A
                // second full pass that starts after the first ended and
                // also sees nothing proves that no unit was anywhere in
                // between (the total only ever goes down).
                let again = try_join_all((0..c.shards()).map(|s| self.read_shard(c, s))).await?;
                if again.iter().all(|s| s.remaining == 0 && s.pending.is_empty()) {
                    Ok(Borrow::NothingLeft)
                } else {
                    Ok(Borrow::Retry)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_parse() {
        assert_eq!(parse_journal_entry("x".into(), "5:3:1700000000"), Some(("x".into(), 5, 3)));
        assert_eq!(parse_journal_entry("x".into(), "junk"), None);
    }
}
