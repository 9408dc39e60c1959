//! Redis key layout.
//!
//! Every key of a stock shard carries the hash tag of an *outbox bucket*:
//!
//! ```text
//! {fg:b<k>.<n>}:c:<campaign>:<shard>          HASH   stock and window of the shard
//! {fg:b<k>.<n>}:c:<campaign>:<shard>:h        HASH   user -> coupon ids held
//! {fg:b<k>.<n>}:c:<campaign>:<shard>:cp       HASH   coupon id -> claim record
//! {fg:b<k>.<n>}:c:<campaign>:<shard>:idem     HASH   user \n idempotency key -> coupon id
//! {fg:b<k>.<n>}:c:<campaign>:<shard>:xout     HASH   outgoing stock transfers (journal)
//! {fg:b<k>.<n>}:c:<campaign>:<shard>:xin      HASH   applied incoming transfers
//! {fg:b<k>.<n>}:outbox                        STREAM claim records of every shard in bucket k
//! {fg:b<k>.<n>}:xpend                         SET    "campaign:shard" of bucket k with journal entries
//! fg:held:<user>                              HASH   coupon id -> campaign id, the user's grants (see `holdings`)
//! ```
//!
//! There is a fixed number of buckets ([`OUTBOX_BUCKETS`]), whatever the
//! number of campaigns, so the relay reads a bounded set of streams. The tag
//! of bucket `k` is `<prefix>:b<k>.<n>` where `n` is the smallest number that
//! puts the tag's slot in the k-th equal slice of the 16384 slots: the
//! buckets are spread evenly over the slot space, so over every master of a
//! cluster whose masters own contiguous ranges (what `--cluster create` and
//! any balanced cluster give). Placement of a campaign's shards still checks
//! the live slot map (see `placement`), it does not trust this spread.

/// Number of outbox buckets. Fixed for the lifetime of a deployment: it
/// decides which streams exist. 64 spreads well over up to ~16 masters.
pub const OUTBOX_BUCKETS: u16 = 64;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster uses for key slots.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of a key, honouring `{hash tags}` exactly as Redis does.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

/// Key names for one deployment (one key prefix).
#[derive(Debug, Clone)]
pub struct KeyLayout {
    /// `FLASHGRAB_KEY_PREFIX`: keeps deployments (and test runs) apart.
    prefix: String,
    /// The tag of each bucket, without braces, index = bucket number.
    bucket_tags: Vec<String>,
}

impl KeyLayout {
    pub fn new(prefix: &str) -> Self {
        let slice = u32::from(SLOTS) / u32::from(OUTBOX_BUCKETS);
        let bucket_tags = (0..OUTBOX_BUCKETS)
            .map(|k| {
                let lo = u32::from(k) * slice;
                (0u32..)
                    .map(|n| format!("{prefix}:b{k}.{n}"))
                    .find(|tag| (lo..lo + slice).contains(&u32::from(key_slot(tag.as_bytes()))))
                    .expect("a 1/64 slice of the slot space is hit within a few thousand tries")
            })
            .collect();
        Self { prefix: prefix.to_owned(), bucket_tags }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn buckets(&self) -> u16 {
        OUTBOX_BUCKETS
    }

    /// The slot every key of bucket `bucket` lives in.
    pub fn bucket_slot(&self, bucket: u16) -> u16 {
        key_slot(self.bucket_tags[usize::from(bucket)].as_bytes())
    }

    /// The outbox stream of a bucket.
    pub fn outbox(&self, bucket: u16) -> String {
        format!("{{{}}}:outbox", self.bucket_tags[usize::from(bucket)])
    }

    /// The set of shards of bucket `bucket` with transfer journal entries
    /// (`"campaign:shard"`), read by the periodic transfer recovery.
    pub fn pending_transfers(&self, bucket: u16) -> String {
        format!("{{{}}}:xpend", self.bucket_tags[usize::from(bucket)])
    }

    /// Keys of one shard of a campaign placed in `bucket`.
    pub fn shard(&self, bucket: u16, campaign: &str, shard: u32) -> ShardKeys {
        let base = format!("{{{}}}:c:{campaign}:{shard}", self.bucket_tags[usize::from(bucket)]);
        ShardKeys {
            holders: format!("{base}:h"),
            coupons: format!("{base}:cp"),
            idem: format!("{base}:idem"),
            xout: format!("{base}:xout"),
            xin: format!("{base}:xin"),
            outbox: self.outbox(bucket),
            hash: base,
        }
    }

    /// The user's holdings index: coupon id -> campaign id of the user's
    /// grants (see `holdings`). Its own key, in whatever slot its name
    /// hashes to: it is never touched by a script.
    pub fn held(&self, user: &str) -> String {
        format!("{}:held:{user}", self.prefix)
    }

    /// Channel on which instances tell each other about campaign changes
    /// (close, sell-out).
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

/// All keys of one shard; they share one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    pub hash: String,
    pub holders: String,
    pub coupons: String,
    pub idem: String,
    pub xout: String,
    pub xin: String,
    pub outbox: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn buckets_are_spread_over_the_slot_space() {
        let k = KeyLayout::new("fg");
        let slice = SLOTS / OUTBOX_BUCKETS;
        for b in 0..OUTBOX_BUCKETS {
            assert_eq!(k.bucket_slot(b) / slice, b);
        }
    }

    #[test]
    fn every_key_of_a_shard_shares_one_slot() {
        let k = KeyLayout::new("t1");
        let s = k.shard(5, "01JD0000000000000000000000", 7);
        let slot = key_slot(s.hash.as_bytes());
        for key in [&s.holders, &s.coupons, &s.idem, &s.xout, &s.xin, &s.outbox, &k.pending_transfers(5)] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(slot, k.bucket_slot(5));
    }
}
