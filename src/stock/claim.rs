//! The claim call: one claim on its home shard (through the shard's batch
//! worker, `batch`), borrowing from the other shards when the home shard is
//! dry (`rebalance`), and the decoding of `lua/claim.lua`'s replies.

use redis::Value;

use std::time::Duration;

use super::{Durability, Result, ShardKeys, StockError, StockStore, batch, rebalance};
use crate::domain::campaign::home_shard;
use crate::domain::{Campaign, CouponId, CouponRecord, UserId};

/// What the claim script answered on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardClaim {
    Granted(CouponRecord),
    /// The idempotency key was used before: the coupon granted then.
    Replayed(CouponRecord),
    /// The user already holds `per_user_limit` coupons: their ids.
    Holding(Vec<String>),
    NotStarted {
        starts_ms: i64,
    },
    Ended,
    /// The home shard is empty; other shards may still have stock.
    Dry,
    /// No such shard: the campaign was never initialised in this store.
    Missing,
}

/// The outcome of a claim after borrowing from other shards if needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Granted(CouponRecord),
    Replayed(CouponRecord),
    Holding(Vec<String>),
    NotStarted {
        starts_ms: i64,
    },
    Ended,
    /// Every shard is empty and no transfer is in flight.
    SoldOut,
    /// Stock exists but other claimers kept taking what was moved to the
    /// user's home shard; the caller answers 503 with Retry-After.
    Contended,
    Missing,
}

impl StockStore {
    /// One claim on `shard`: through the shard's batch worker (see
    /// `batch`), or as its own script call when batching is off.
    pub async fn claim_on_shard(
        &self,
        c: &Campaign,
        shard: u32,
        user: &UserId,
        coupon: &CouponId,
        idempotency_key: Option<&str>,
    ) -> Result<ShardClaim> {
        let item = batch::ClaimItem {
            user: user.as_str().to_owned(),
            coupon: coupon.as_str().to_owned(),
            key: idempotency_key.unwrap_or("").to_owned(),
        };
        if self.batcher.max() <= 1 {
            let k = self.shard_keys(c, shard);
            let mut answers = self.claim_batch(&k, c.id.as_str(), shard, &[&item]).await?;
            return answers.pop().unwrap_or_else(|| Err(StockError::Protocol("claim script: no answer".into())));
        }
        // The shard's key names are built only when its worker starts.
        let target = || batch::Target { keys: self.shard_keys(c, shard), campaign: c.id.as_str().to_owned(), shard };
        self.batcher.submit(self, c.id.as_str(), shard, target, item).await
    }

    /// Runs the claim script once on a shard for `items` (in order). In
    /// `replicated` mode the script is followed by `WAIT 1 <wait>` in ONE
    /// pipeline: both go to the node owning the shard's slot on the same
    /// connection, one after the other, so the WAIT counts replicas that
    /// acknowledged this very script's writes. (A WAIT sent separately could
    /// land elsewhere: the cluster client falls back to another node, even a
    /// random one, when the master's connection is gone, and a WAIT there
    /// proves nothing.)
    ///
    /// The client resends a call after a dropped connection or an I/O error
    /// (`.retries(3)`, and MOVED/ASK redirects), and the first copy may
    /// already have run. The script is idempotent per coupon id: a claim
    /// whose record exists is answered "granted" with that record again
    /// and nothing changes (no second decrement, holder entry or outbox
    /// entry), so the caller still answers the one 201 the client asked
    /// for. In `replicated` mode such a re-run writes a no-op, so the WAIT
    /// behind it still counts replicas that have the grant: never a 201 the
    /// WAIT did not cover.
    ///
    /// The outer error is the call's (every claim fails with it); the inner
    /// ones are per claim (`NotReplicated` for a grant no replica acked).
    pub(crate) async fn claim_batch(
        &self,
        k: &ShardKeys,
        campaign: &str,
        shard: u32,
        items: &[&batch::ClaimItem],
    ) -> Result<Vec<Result<ShardClaim>>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.claim_calls[0].fetch_add(1, Relaxed);
        self.claim_calls[1].fetch_add(items.len() as u64, Relaxed);
        let mut conn = self.conn.get();
        let (v, acked, wait) = match self.durability {
            Durability::Fast => {
                let mut inv = self.scripts.claim.key(&k.hash);
                inv.key(&k.holders).key(&k.coupons).key(&k.idem).key(&k.outbox).arg(campaign).arg(shard);
                for it in items {
                    inv.arg(&it.user).arg(&it.coupon).arg(&it.key);
                }
                let v: Value = self.bounded(Some(&k.hash), inv.invoke_async(&mut conn)).await?;
                (v, None, Duration::ZERO)
            }
            Durability::Replicated { wait } => {
                let mut evalsha = redis::cmd("EVALSHA");
                evalsha
                    .arg(self.scripts.claim.get_hash())
                    .arg(5)
                    .arg(&k.hash)
                    .arg(&k.holders)
                    .arg(&k.coupons)
                    .arg(&k.idem)
                    .arg(&k.outbox)
                    .arg(campaign)
                    .arg(shard);
                for it in items {
                    evalsha.arg(&it.user).arg(&it.coupon).arg(&it.key);
                }
                let mut pipe = redis::pipe();
                pipe.add_command(evalsha).cmd("WAIT").arg(1).arg(wait.as_millis() as u64);
                let mut loaded = false;
                let (v, acked): (Value, i64) = loop {
                    match self.bounded(Some(&k.hash), pipe.query_async(&mut conn)).await {
                        Err(StockError::Redis(e)) if !loaded && e.code() == Some("NOSCRIPT") => {
                            // A restarted node or a promoted replica: load, retry once.
                            self.bounded(Some(&k.hash), self.scripts.claim.load_async(&mut conn)).await?;
                            loaded = true;
                        }
                        r => break r?,
                    }
                };
                (v, Some(acked), wait)
            }
        };
        let answers = parse_batch_reply(&v, items.len())?;
        Ok(answers
            .into_iter()
            .map(|claim| match (claim, acked) {
                (ShardClaim::Granted(r) | ShardClaim::Replayed(r), Some(acked)) if acked < 1 => {
                    tracing::warn!(coupon = %r.id, acked, ?wait, "no replica acknowledged a grant in time: answering 503 (maybe granted)");
                    Err(StockError::NotReplicated { coupon: r.id, acked, wait })
                }
                (claim, _) => Ok(claim),
            })
            .collect())
    }

    /// A claim for `user`: on the home shard, borrowing stock from the other
    /// shards when the home shard is dry (bounded number of rounds).
    pub async fn claim(
        &self,
        c: &Campaign,
        user: &UserId,
        coupon: &CouponId,
        idempotency_key: Option<&str>,
    ) -> Result<ClaimOutcome> {
        /// Rounds of "borrow then retry" before giving up with `Contended`.
        const MAX_ROUNDS: usize = 8;
        let home = home_shard(user.as_str(), c.shards());
        for _ in 0..MAX_ROUNDS {
            match self.claim_on_shard(c, home, user, coupon, idempotency_key).await? {
                ShardClaim::Granted(r) => return Ok(ClaimOutcome::Granted(r)),
                ShardClaim::Replayed(r) => return Ok(ClaimOutcome::Replayed(r)),
                ShardClaim::Holding(ids) => return Ok(ClaimOutcome::Holding(ids)),
                ShardClaim::NotStarted { starts_ms } => {
                    return Ok(ClaimOutcome::NotStarted { starts_ms });
                }
                ShardClaim::Ended => return Ok(ClaimOutcome::Ended),
                ShardClaim::Missing => return Ok(ClaimOutcome::Missing),
                // Boxed: a rare path with a large state machine (it reads
                // every shard), kept out of every claim's future.
                ShardClaim::Dry => match Box::pin(self.borrow_for(c, home)).await? {
                    rebalance::Borrow::NothingLeft => return Ok(ClaimOutcome::SoldOut),
                    rebalance::Borrow::Retry => {}
                },
            }
        }
        Ok(ClaimOutcome::Contended)
    }
}

fn code_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn record_of(v: Option<&Value>) -> Result<CouponRecord> {
    let raw = text_of(v).ok_or_else(|| StockError::Protocol("claim script returned no record".into()))?;
    serde_json::from_str(&raw).map_err(|e| StockError::Protocol(format!("claim record {raw:?}: {e}")))
}

/// Decodes the reply of `lua/claim.lua` for a batch of `n` claims.
fn parse_batch_reply(v: &Value, n: usize) -> Result<Vec<ShardClaim>> {
    match v {
        Value::Array(replies) if replies.len() == n => replies.iter().map(parse_claim_reply).collect(),
        _ => Err(StockError::Protocol(format!("claim script: {n} answers expected, got {v:?}"))),
    }
}

/// Decodes one claim's reply of `lua/claim.lua`.
fn parse_claim_reply(v: &Value) -> Result<ShardClaim> {
    let Value::Array(parts) = v else {
        return Err(StockError::Protocol(format!("claim script: {v:?}")));
    };
    match parts.first().and_then(code_of) {
        Some(1) => Ok(ShardClaim::Granted(record_of(parts.get(1))?)),
        Some(2) => Ok(ShardClaim::Replayed(record_of(parts.get(1))?)),
        Some(3) => Ok(ShardClaim::Holding(
            text_of(parts.get(1)).unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        )),
        Some(4) => Ok(ShardClaim::NotStarted { starts_ms: parts.get(1).and_then(code_of).unwrap_or(0) }),
        Some(5) => Ok(ShardClaim::Ended),
        Some(6) => Ok(ShardClaim::Dry),
        Some(0) => Ok(ShardClaim::Missing),
        _ => Err(StockError::Protocol(format!("claim script: {v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_reply_of_the_claim_script() {
        let rec = r#"{"id":"A","campaign_id":"C","user_id":"u","shard":1,"claimed_at_ms":1,"valid_from_ms":1,"valid_until_ms":2}"#;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let granted = parse_claim_reply(&Value::Array(vec![Value::Int(1), bulk(rec)])).unwrap();
        assert!(matches!(granted, ShardClaim::Granted(r) if r.id == "A"));
        assert_eq!(
            parse_claim_reply(&Value::Array(vec![Value::Int(3), bulk("a,b")])).unwrap(),
            ShardClaim::Holding(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_claim_reply(&Value::Array(vec![Value::Int(4), Value::Int(99)])).unwrap(),
            ShardClaim::NotStarted { starts_ms: 99 }
        );
        assert_eq!(parse_claim_reply(&Value::Array(vec![Value::Int(6)])).unwrap(), ShardClaim::Dry);
        assert!(parse_claim_reply(&Value::Int(1)).is_err());
        assert!(parse_claim_reply(&Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn a_batch_reply_has_one_answer_per_claim() {
        let one = |code: i64| Value::Array(vec![Value::Int(code)]);
        let v = Value::Array(vec![one(6), one(5), one(0)]);
        assert_eq!(parse_batch_reply(&v, 3).unwrap(), vec![ShardClaim::Dry, ShardClaim::Ended, ShardClaim::Missing]);
        assert!(parse_batch_reply(&v, 2).is_err(), "a count that does not match is an error, not a guess");
        assert!(parse_batch_reply(&one(6), 1).is_err(), "the answers are wrapped in an array");
    }
}
