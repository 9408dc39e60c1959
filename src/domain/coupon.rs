//! A granted coupon. The claim script writes exactly this record (as JSON)
//! into the shard's coupon hash and the outbox stream; the persist worker
//! turns it into a MySQL row. Times are milliseconds since the epoch of the
//! Redis clock that granted the claim.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The claim record, as the Lua claim script encodes it (`cjson`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRecord {
    /// Coupon id (a ULID chosen by the instance that asked for the claim).
    pub id: String,
    pub campaign_id: String,
    pub user_id: String,
    /// Home shard of the user in the campaign.
    pub shard: u32,
    pub claimed_at_ms: i64,
    pub valid_from_ms: i64,
    pub valid_until_ms: i64,
    /// The `Idempotency-Key` of the claim, when it had one. Kept with the
    /// record (and in MySQL) so that `reconcile --repair` can give Redis
    /// back the key of a grant a failover lost: the client's retry then
    /// still finds its coupon instead of claiming again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Milliseconds since the epoch to a UTC time (saturating on nonsense).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl CouponRecord {
    pub fn claimed_at(&self) -> DateTime<Utc> {
        from_ms(self.claimed_at_ms)
    }
    pub fn valid_from(&self) -> DateTime<Utc> {
        from_ms(self.valid_from_ms)
    }
    pub fn valid_until(&self) -> DateTime<Utc> {
        from_ms(self.valid_until_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_lua_script_writes() {
        // cjson writes integers without a fraction when they fit.
        let raw = r#"{"id":"01JD0000000000000000000000","campaign_id":"01JD0000000000000000000001","user_id":"u1","shard":3,"claimed_at_ms":1763755200123,"valid_from_ms":1763755200123,"valid_until_ms":1764360000123}"#;
        let r: CouponRecord = serde_json::from_str(raw).unwrap();
        assert_eq!(r.shard, 3);
        assert_eq!(r.claimed_at().to_rfc3339(), "2025-11-21T20:00:00.123+00:00");
        assert_eq!(r.idempotency_key, None);
        let keyed = raw.replace('}', r#","idempotency_key":"k\/1"}"#);
        let r: CouponRecord = serde_json::from_str(&keyed).unwrap();
        assert_eq!(r.idempotency_key.as_deref(), Some("k/1"), "cjson escapes the slash");
    }
}
