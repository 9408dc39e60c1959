//! Writing back grants Redis forgot (`flashgrab reconcile --repair`).
//!
//! In `fast` mode a failover can lose grants whose records the relay had
//! already shipped: MySQL has their rows, the promoted replica does not
//! have them, so their units are back in stock and their users may claim
//! again. `lua/restore.lua` puts each such grant back on its home shard as
//! the claim script had left it (record, holder entry, idempotency key, one
//! unit less), so the unit cannot be sold again and the user cannot claim
//! again. Idempotent per coupon id (a grant present is left alone).
//!
//! The unit: taken from the home shard; if that shard is empty, from any
//! other shard of the campaign (a grant consumes one unit of the campaign,
//! wherever it sat). If no shard has one left, the unit was handed out
//! again after the failover: the campaign is oversold by that grant, which
//! is reported (the grant is restored anyway: the user was answered 201 and
//! MySQL holds it). The two steps are separate calls (different slots): a
//! repair that dies between them leaves one unit too many, which the next
//! reconcile shows as `remaining + claimed > total_stock`.

use std::collections::BTreeMap;

use super::{Result, StockError, StockStore};
use crate::domain::{Campaign, CouponRecord};

/// Grants per script call (four arguments each).
const GRANTS_PER_CALL: usize = 100;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Coupon ids written back into Redis.
    pub restored: Vec<String>,
    /// Of those, the ones whose unit came from another shard than their home.
    pub unit_from_other_shard: u64,
    /// Of those, the ones for which no shard had a unit left: their unit
    /// was granted again after the failover (oversold).
    pub without_unit: Vec<String>,
}

impl StockStore {
    /// Writes `records` (grants of `c` that Redis does not hold) back onto
    /// their home shards. A record naming a shard the campaign does not
    /// have is a protocol error (the caller only passes checked rows).
    pub async fn restore_grants(&self, c: &Campaign, records: &[CouponRecord]) -> Result<Restored> {
        let script = redis::Script::new(include_str!("../../lua/restore.lua"));
        let mut by_shard: BTreeMap<u32, Vec<&CouponRecord>> = BTreeMap::new();
        for r in records {
            if r.shard >= c.shards() {
                return Err(StockError::Protocol(format!("coupon {} names shard {} of {}", r.id, r.shard, c.shards())));
            }
            by_shard.entry(r.shard).or_default().push(r);
        }
        let mut out = Restored::default();
        let mut needs_unit = Vec::new();
        for (shard, grants) in by_shard {
            let k = self.shard_keys(c, shard);
            for chunk in grants.chunks(GRANTS_PER_CALL) {
                let mut inv = script.key(&k.hash);
                inv.key(&k.holders).key(&k.coupons).key(&k.idem).arg("grants");
                for r in chunk {
                    let json = serde_json::to_string(r).map_err(|e| StockError::Protocol(format!("record: {e}")))?;
                    inv.arg(&r.id).arg(&r.user_id).arg(json).arg(r.idempotency_key.as_deref().unwrap_or(""));
                }
                let mut conn = self.conn.get();
                let codes: Vec<i64> = self.bounded(Some(&k.hash), inv.invoke_async(&mut conn)).await?;
                if codes.len() != chunk.len() {
                    return Err(StockError::Protocol(format!(
                        "restore.lua: {} answers for {}",
                        codes.len(),
                        chunk.len()
                    )));
                }
                for (r, code) in chunk.iter().zip(codes) {
                    match code {
                        0 => {}
                        1 => out.restored.push(r.id.clone()),
                        2 => {
                            out.restored.push(r.id.clone());
                            needs_unit.push((shard, r.id.clone()));
                        }
                        other => return Err(StockError::Protocol(format!("restore.lua: code {other}"))),
                    }
                }
            }
        }
        for (home, id) in needs_unit {
            let mut found = false;
            for s in (0..c.shards()).filter(|s| *s != home) {
                let k = self.shard_keys(c, s);
                let mut inv = script.key(&k.hash);
                inv.key(&k.holders).key(&k.coupons).key(&k.idem).arg("unit");
                let mut conn = self.conn.get();
                let took: i64 = self.bounded(Some(&k.hash), inv.invoke_async(&mut conn)).await?;
                if took == 1 {
                    found = true;
                    break;
                }
            }
            if found {
                out.unit_from_other_shard += 1;
            } else {
                tracing::error!(coupon = %id, campaign = %c.id, "restored a lost grant whose unit was granted again: oversold");
                out.without_unit.push(id);
            }
        }
        Ok(out)
    }
}
