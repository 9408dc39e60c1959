//! Moving stock between shards of one campaign.
//!
//! A user's holdings live on their home shard, so when that shard runs dry
//! while others still hold stock, units must move *to* it. The two shards are
//! in different slots (often on different masters), so no single script can
//! move a unit. The transfer is journaled instead:
//!
//! 1. `take.lua` on the donor: decrement `remaining` by n and write
//!    `xout[id] = "n:dest:ts:dest_bucket"` in the same script (units are now
//!    in flight); it also bumps the donor's transfer epoch `xe` and lists the
//!    shard in its bucket's set of shards with journal entries (`xpend`);
//! 2. `give.lua` on the destination: `HSETNX xin[id]`; only if new, add n to
//!    `remaining` and bump its `xe` (so a replay can never add twice);
//! 3. `HDEL xout[id]` on the donor: the transfer is complete.
//!
//! A process dying after 1 leaves the units in the donor's journal; any
//! instance later replays 2 and 3 ([`StockStore::recover`], the startup and
//! periodic pass of [`StockStore::recover_transfers`], reconcile, and a
//! borrower that finds nothing else). Nothing is created (2 is idempotent)
//! and nothing is lost (1 journals in the same atomic step as it takes).
//! The stats count a journal entry as in flight only until its id is in the
//! destination's `xin` (after that the units are in that shard's
//! `remaining`), so a unit is counted once even when a process died between
//! 2 and 3.
//!
//! Sold out ([`Borrow::NothingLeft`]) needs a proof, because the reads of a
//! scan are not one consistent cut: a unit moving from a shard not yet read
//! to one already read is missed, and two scans in a row can both miss one
//! (a unit moving A -> B during the first and B -> C during the second).
//! The epochs close that gap: a first scan sees every shard empty with no
//! journal entry, a second scan sees the same again *and every shard at the
//! epoch the first one read*. No take or give touched any shard between its
//! two reads, so at the moment the first scan ended every shard still held
//! what the first scan saw: nothing, and nothing was in flight. Stock never
//! comes back (claims only take, transfers conserve), so it is sold out.
//! Claims do not touch `xe` (the claim script stays as it is): a claim only
//! ever takes, it cannot hide a unit. Each shard's read is one pipeline
//! that reads `remaining` and `xe` in one command *before* the journal.
//! `src/stock/rebalance.pml` models this with spin (`scripts/model-check`),
//! including a crash between any two steps, and shows the race of the
//! two-scan proof without epochs.
//!
//! `replicated` mode ([`Durability::Replicated`]): a unit moves only after a
//! replica acknowledged it. `take` and `give` each go as ONE pipeline
//! `[EVALSHA, WAIT 1 <ms>]` to the shard's node (as the claim does, see
//! `StockStore::claim_batch`); a missing acknowledgement stops the transfer
//! at that step: after `take` it stays journaled (not given), after `give`
//! the journal entry stays (the give is never repeated: `xin`). A recovering
//! instance first rewrites the journal entry with `confirm.lua` followed by
//! WAIT, so it never gives units whose take a failover could still undo.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::{Durability, Result, ShardKeys, StockError, StockStore};
use crate::domain::Campaign;

/// What a borrowing attempt achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Borrow {
    /// Units moved (or something else changed): claim again.
    Retry,
    /// Every shard is empty and nothing is in flight: sold out.
    NothingLeft,
}

/// One pending outgoing transfer, as journaled by `take.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: String,
    pub units: u64,
    pub dest: u32,
    /// Redis time of the take, seconds.
    pub taken_at_s: u64,
    /// The destination shard's bucket (absent in entries of older versions).
    pub dest_bucket: Option<u16>,
}

/// One shard as read in a single round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub remaining: u64,
    pub claimed: u64,
    /// Transfers that touched the shard (`xe`), read with `remaining`.
    pub epoch: u64,
    /// Pending outgoing transfers.
    pub pending: Vec<JournalEntry>,
}

impl ShardSnapshot {
    /// Units journaled out of this shard (landed or not).
    pub fn in_flight(&self) -> u64 {
        self.pending.iter().map(|e| e.units).sum()
    }

    fn is_empty(&self) -> bool {
        self.remaining == 0 && self.pending.is_empty()
    }
}

fn parse_journal_entry(id: String, v: &str) -> Option<JournalEntry> {
    let mut parts = v.split(':');
    let units = parts.next()?.parse().ok()?;
    let dest = parts.next()?.parse().ok()?;
    let taken_at_s = parts.next().map_or(Some(0), |t| t.parse().ok())?;
    let dest_bucket = match parts.next() {
        Some(b) => Some(b.parse().ok()?),
        None => None,
    };
    Some(JournalEntry { id, units, dest, taken_at_s, dest_bucket })
}

/// A shard's member in its bucket's `xpend` set.
fn pending_member(campaign: &str, shard: u32) -> String {
    format!("{campaign}:{shard}")
}

/// Upper bound of shards handled by one periodic recovery pass.
const RECOVERY_PASS_MAX: usize = 256;

impl StockStore {
    /// Remaining, epoch, claimed and the pending journal of one shard, in
    /// one pipeline (same slot). `remaining` and `xe` are read by one
    /// command, before the journal: the sold-out proof relies on it.
    pub async fn read_shard(&self, c: &Campaign, shard: u32) -> Result<ShardSnapshot> {
        self.read_shard_keys(&self.shard_keys(c, shard)).await
    }

    async fn read_shard_keys(&self, k: &ShardKeys) -> Result<ShardSnapshot> {
        let mut conn = self.conn.get();
        let mut pipe = redis::pipe();
        // claimed = number of claim records (the script keeps no counter).
        pipe.cmd("HMGET")
            .arg(&k.hash)
            .arg("remaining")
            .arg("xe")
            .cmd("HLEN")
            .arg(&k.coupons)
            .cmd("HGETALL")
            .arg(&k.xout);
        type Reply = ((Option<i64>, Option<i64>), i64, Vec<(String, String)>);
        let ((remaining, epoch), claimed, journal): Reply =
            self.bounded(Some(&k.hash), pipe.query_async(&mut conn)).await?;
        let mut pending = Vec::with_capacity(journal.len());
        for (id, v) in journal {
            let entry = parse_journal_entry(id, &v)
                .ok_or_else(|| StockError::Protocol(format!("bad transfer journal entry {v:?} in {}", k.xout)))?;
            pending.push(entry);
        }
        Ok(ShardSnapshot {
            remaining: remaining.unwrap_or(0).max(0) as u64,
            claimed: claimed.max(0) as u64,
            epoch: epoch.unwrap_or(0).max(0) as u64,
            pending,
        })
    }

    /// Runs `script` on the node of its keys' slot; in `replicated` mode
    /// followed by `WAIT 1 <wait>` in ONE pipeline (same connection, back to
    /// back: the WAIT counts this script's writes; see `claim_batch`).
    /// Returns the reply and the replicas that acknowledged (None in fast
    /// mode).
    pub(super) async fn eval_step(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<(Value, Option<i64>)> {
        let mut conn = self.conn.get();
        match self.durability {
            Durability::Fast => {
                let mut inv = script.prepare_invoke();
                for k in keys {
                    inv.key(*k);
                }
                for a in args {
                    inv.arg(a);
                }
                Ok((self.bounded(keys.first().copied(), inv.invoke_async(&mut conn)).await?, None))
            }
            Durability::Replicated { .. } => {
                let mut evalsha = redis::cmd("EVALSHA");
                evalsha.arg(script.get_hash()).arg(keys.len());
                for k in keys {
                    evalsha.arg(*k);
                }
                for a in args {
                    evalsha.arg(a);
                }
                let mut pipe = redis::pipe();
                pipe.add_command(evalsha);
                let (mut replies, acked) =
                    self.with_wait(keys.first().copied().unwrap_or_default(), &pipe, &[script]).await?;
                let v = replies.pop().ok_or_else(|| StockError::Protocol("transfer step: no reply".into()))?;
                Ok((v, acked))
            }
        }
    }

    /// The error for a step no replica acknowledged (`replicated` mode).
    pub(super) fn check_acked(&self, id: &str, step: &'static str, acked: Option<i64>) -> Result<()> {
        match (acked, self.durability) {
            (Some(acked), Durability::Replicated { wait }) if acked < 1 => {
                tracing::warn!(
                    transfer = id,
                    step,
                    acked,
                    ?wait,
                    "no replica acknowledged a transfer step: it stops here"
                );
                Err(StockError::TransferNotReplicated { id: id.to_owned(), step, acked, wait })
            }
            _ => Ok(()),
        }
    }

    /// Step 1 of a transfer. Returns the transfer id and the units actually
    /// taken (0: the donor was empty, nothing journaled). In `replicated`
    /// mode, `TransferNotReplicated` when no replica acknowledged the take
    /// (the units are journaled on the master; recovery finishes them).
    pub async fn begin_transfer(&self, c: &Campaign, donor: u32, dest: u32, want: u64) -> Result<(String, u64)> {
        let id = ulid::Ulid::new().to_string();
        let k = self.shard_keys(c, donor);
        let pending = self.keys.pending_transfers(c.shard_buckets[donor as usize]);
        let args = [
            id.clone(),
            want.to_string(),
            dest.to_string(),
            c.shard_buckets[dest as usize].to_string(),
            pending_member(c.id.as_str(), donor),
        ];
        let (v, acked) = self.eval_step(&self.scripts.take, &[&k.hash, &k.xout, &pending], &args).await?;
        let taken = match v {
            Value::Int(n) => n.max(0) as u64,
            other => return Err(StockError::Protocol(format!("take.lua answered {other:?}"))),
        };
        if taken > 0 {
            self.check_acked(&id, "take", acked)?;
        }
        Ok((id, taken))
    }

    /// Steps 2 and 3 of a transfer whose take is known to be done (and, in
    /// `replicated` mode, acknowledged); safe to run any number of times, by
    /// any instance, at any moment after step 1.
    pub async fn finish_transfer(&self, c: &Campaign, donor: u32, dest: u32, id: &str, units: u64) -> Result<()> {
        self.finish_keys(&self.shard_keys(c, donor), &self.shard_keys(c, dest), id, units).await
    }

    async fn finish_keys(&self, donor: &ShardKeys, dest: &ShardKeys, id: &str, units: u64) -> Result<()> {
        let (_applied, acked) =
            self.eval_step(&self.scripts.give, &[&dest.hash, &dest.xin], &[id.to_owned(), units.to_string()]).await?;
        self.check_acked(id, "give", acked)?;
        let mut conn = self.conn.get();
        let _: i64 =
            self.bounded(Some(&donor.xout), redis::cmd("HDEL").arg(&donor.xout).arg(id).query_async(&mut conn)).await?;
        Ok(())
    }

    /// Finishes a transfer found in a journal (by recovery, not by the
    /// process that took it). In `replicated` mode the entry is confirmed on
    /// a replica first (`confirm.lua` + WAIT). Ok(false): it had been
    /// finished meanwhile.
    async fn land(&self, donor: &ShardKeys, dest: &ShardKeys, e: &JournalEntry) -> Result<bool> {
        if matches!(self.durability, Durability::Replicated { .. }) {
            let (v, acked) = self.eval_step(&self.scripts.confirm, &[&donor.xout], std::slice::from_ref(&e.id)).await?;
            if v == Value::Nil {
                return Ok(false);
            }
            self.check_acked(&e.id, "take (confirmed by recovery)", acked)?;
        }
        self.finish_keys(donor, dest, &e.id, e.units).await?;
        Ok(true)
    }

    /// Completes every transfer journaled on any shard of `c` (e.g. left by a
    /// process that died between step 1 and step 3). Returns how many. For
    /// reconcile and operators; safe at any time.
    pub async fn recover(&self, c: &Campaign) -> Result<usize> {
        let snaps = try_join_all((0..c.shards()).map(|s| self.read_shard(c, s))).await?;
        self.recover_from(c, &snaps).await
    }

    async fn recover_from(&self, c: &Campaign, snaps: &[ShardSnapshot]) -> Result<usize> {
        let mut done = 0;
        for (donor, snap) in snaps.iter().enumerate() {
            for e in &snap.pending {
                if e.dest >= c.shards() {
                    return Err(StockError::Protocol(format!("transfer {} to unknown shard {}", e.id, e.dest)));
                }
                let ks = self.shard_keys(c, donor as u32);
                if self.land(&ks, &self.shard_keys(c, e.dest), e).await? {
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    /// One recovery pass over every bucket's `xpend` set: lands the journal
    /// entries at least `min_age` old (a live transfer takes milliseconds;
    /// landing it too would be harmless, only wasted) and drops shards whose
    /// journal is empty from the set. Needs no campaign terms (the entries
    /// name their destination's bucket), so it works while MySQL is down.
    /// Returns the transfers landed.
    pub async fn recover_pending(&self, min_age: Duration) -> Result<usize> {
        let mut conn = self.conn.get();
        let now_s = {
            let (s, _us): (u64, u64) = self.bounded(None, redis::cmd("TIME").query_async(&mut conn)).await?;
            s
        };
        let (mut landed, mut seen) = (0, 0);
        for b in 0..self.keys.buckets() {
            let set = self.keys.pending_transfers(b);
            let members: Vec<String> =
                self.bounded(Some(&set), redis::cmd("SMEMBERS").arg(&set).query_async(&mut conn)).await?;
            for m in members {
                seen += 1;
                if seen > RECOVERY_PASS_MAX {
                    return Ok(landed);
                }
                let Some((campaign, shard)) = m.rsplit_once(':').and_then(|(c, s)| Some((c, s.parse::<u32>().ok()?)))
                else {
                    tracing::warn!(member = %m, set = %set, "bad member in the transfer set; dropped");
                    let _: i64 =
                        self.bounded(Some(&set), redis::cmd("SREM").arg(&set).arg(&m).query_async(&mut conn)).await?;
                    continue;
                };
                let ks = self.keys.shard(b, campaign, shard);
                let snap = self.read_shard_keys(&ks).await?;
                for e in &snap.pending {
                    let Some(dest_bucket) = e.dest_bucket.filter(|d| *d < self.keys.buckets()) else {
                        // Older entry format: the borrowers and recover(c) land it.
                        continue;
                    };
                    if now_s.saturating_sub(e.taken_at_s) < min_age.as_secs() {
                        continue;
                    }
                    let kd = self.keys.shard(dest_bucket, campaign, e.dest);
                    match self.land(&ks, &kd, e).await {
                        Ok(true) => {
                            landed += 1;
                            tracing::info!(transfer = %e.id, campaign, from = shard, to = e.dest, units = e.units, "recovered an interrupted stock transfer");
                        }
                        Ok(false) => {}
                        // Left journaled: the next pass tries again.
                        Err(StockError::TransferNotReplicated { .. }) => {}
                        Err(err) => return Err(err),
                    }
                }
                let _: i64 = self
                    .bounded(Some(&set), self.scripts.settle.key(&ks.xout).key(&set).arg(&m).invoke_async(&mut conn))
                    .await?;
            }
        }
        Ok(landed)
    }

    /// The recovery task of `serve`: a pass at once (startup: what a dead
    /// instance left), then one every `every`, until `stop`; each lands
    /// the entries older than `min_age` (a live transfer takes
    /// milliseconds). Errors are logged and the next pass tries again.
    pub async fn recover_transfers(self, every: Duration, min_age: Duration, stop: CancellationToken) {
        loop {
            match self.recover_pending(min_age).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(transfers = n, "landed interrupted stock transfers"),
                Err(e) => tracing::warn!(error = %e, "transfer recovery pass failed; retrying later"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Called when `home` answered "dry": moves stock from the fullest other
    /// shard (half of what it holds, at least one unit), finishing stale
    /// journaled transfers on the way. Answers `NothingLeft` only when two
    /// scans saw every shard empty, nothing journaled, and every shard at
    /// the same transfer epoch in both (see the module note).
    pub async fn borrow_for(&self, c: &Campaign, home: u32) -> Result<Borrow> {
        let snaps = try_join_all((0..c.shards()).map(|s| self.read_shard(c, s))).await?;
        let in_flight: u64 = snaps.iter().map(ShardSnapshot::in_flight).sum();
        let donor = snaps
            .iter()
            .enumerate()
            .filter(|(i, s)| *i as u32 != home && s.remaining > 0)
            .max_by_key(|(_, s)| s.remaining)
            .map(|(i, s)| (i as u32, s.remaining));
        let moved = match donor {
            Some((donor, remaining)) => match self.begin_transfer(c, donor, home, remaining.div_ceil(2)).await {
                Ok((id, taken)) if taken > 0 => self.finish_transfer(c, donor, home, &id, taken).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            // Units are journaled but not landed: land them (a live
            // transfer may finish concurrently; both are idempotent).
            None if in_flight > 0 => self.recover_from(c, &snaps).await.map(drop),
            None if snaps[home as usize].remaining > 0 => Ok(()),
            None => {
                let again = try_join_all((0..c.shards()).map(|s| self.read_shard(c, s))).await?;
                let unchanged = snaps.iter().zip(&again).all(|(a, b)| a.epoch == b.epoch);
                if unchanged && again.iter().all(ShardSnapshot::is_empty) {
                    return Ok(Borrow::NothingLeft);
                }
                Ok(())
            }
        };
        match moved {
            // Stopped at an unacknowledged step: journaled, finished later;
            // the claim retries (other shards may move) or answers 503.
            Ok(()) | Err(StockError::TransferNotReplicated { .. }) => Ok(Borrow::Retry),
            Err(e) => Err(e),
        }
    }

    /// Per shard: units journaled out of it that have not landed at their
    /// destination (an entry whose id is already in the destination's `xin`
    /// is counted there, in `remaining`). Reads every destination's `xin`
    /// for the ids of the snapshots.
    pub(crate) async fn unlanded(&self, c: &Campaign, snaps: &[ShardSnapshot]) -> Result<Vec<u64>> {
        let mut by_dest: HashMap<u32, Vec<&str>> = HashMap::new();
        for e in snaps.iter().flat_map(|s| &s.pending) {
            if e.dest < c.shards() {
                by_dest.entry(e.dest).or_default().push(&e.id);
            }
        }
        let reads = by_dest.into_iter().map(|(dest, ids)| {
            let k = self.shard_keys(c, dest);
            let mut conn = self.conn.get();
            async move {
                let applied: Vec<Option<String>> = self
                    .bounded(Some(&k.xin), redis::cmd("HMGET").arg(&k.xin).arg(&ids).query_async(&mut conn))
                    .await?;
                Ok::<_, StockError>(
                    ids.into_iter()
                        .zip(applied)
                        .filter(|(_, a)| a.is_some())
                        .map(|(id, _)| id.to_owned())
                        .collect::<Vec<_>>(),
                )
            }
        });
        let landed: std::collections::HashSet<String> = try_join_all(reads).await?.into_iter().flatten().collect();
        Ok(snaps.iter().map(|s| s.pending.iter().filter(|e| !landed.contains(&e.id)).map(|e| e.units).sum()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_parse() {
        let e = parse_journal_entry("x".into(), "5:3:1700000000:17").unwrap();
        assert_eq!((e.units, e.dest, e.taken_at_s, e.dest_bucket), (5, 3, 1_700_000_000, Some(17)));
        // Entries journaled by older versions have no bucket.
        let old = parse_journal_entry("x".into(), "5:3:1700000000").unwrap();
        assert_eq!((old.units, old.dest, old.dest_bucket), (5, 3, None));
        assert_eq!(parse_journal_entry("x".into(), "junk"), None);
        assert_eq!(parse_journal_entry("x".into(), "5:3:1700000000:b"), None);
    }

    #[test]
    fn members_name_campaign_and_shard() {
        let m = pending_member("01JD0000000000000000000000", 7);
        assert_eq!(m.rsplit_once(':'), Some(("01JD0000000000000000000000", "7")));
    }
}
