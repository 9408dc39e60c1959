//! A granted coupon. The claim script writes exactly this record (as JSON)
//! into the shard's coupon hash and the outbox stream; the persist worker
//! turns it into a MySQL row. Times are milliseconds since the epoch of the
//! Redis clock that granted the claim.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::campaign::{TIME_RANGE, time_in_range};
use super::ids::{CampaignId, CouponId, UserId};

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
    /// Checks that the record can be stored as it is: its ids, and its
    /// times within [`time_in_range`] (the range the API holds campaigns
    /// to). `Err` says what is wrong, for the dead-letter queue. The relay
    /// and the persist worker both use it, one record at a time.
    pub fn check(&self) -> Result<(), String> {
        if CouponId::parse(&self.id).is_none() {
            return Err(format!("bad coupon id {:?}", self.id));
        }
        if CampaignId::parse(&self.campaign_id).is_none() {
            return Err(format!("bad campaign id {:?}", self.campaign_id));
        }
        if UserId::parse(&self.user_id).is_none() {
            return Err("bad user id (1..=64 bytes, no control characters)".to_owned());
        }
        for (field, ms) in [
            ("claimed_at_ms", self.claimed_at_ms),
            ("valid_from_ms", self.valid_from_ms),
            ("valid_until_ms", self.valid_until_ms),
        ] {
            if !time_in_range(ms) {
                return Err(format!("{field} outside {TIME_RANGE}"));
            }
        }
        // The column is VARCHAR(64); the API refuses longer keys already.
        if self.idempotency_key.as_ref().is_some_and(|k| k.len() > 64) {
            return Err("idempotency key over 64 bytes".to_owned());
        }
        Ok(())
    }

    /// Parses one raw record (an outbox entry) and [`check`](Self::check)s it.
    pub fn parse_checked(raw: &str) -> Result<Self, String> {
        let r: Self = serde_json::from_str(raw).map_err(|e| format!("not a claim record: {e}"))?;
        r.check()?;
        Ok(r)
    }

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
        assert_eq!(CouponRecord::parse_checked(raw), Ok(r));
        let keyed = raw.replace('}', r#","idempotency_key":"k\/1"}"#);
        let r: CouponRecord = serde_json::from_str(&keyed).unwrap();
        assert_eq!(r.idempotency_key.as_deref(), Some("k/1"), "cjson escapes the slash");
    }

    #[test]
    fn check_names_what_cannot_be_stored() {
        let raw = r#"{"id":"01JD0000000000000000000000","campaign_id":"01JD0000000000000000000001","user_id":"u1","shard":3,"claimed_at_ms":1763755200123,"valid_from_ms":1763755200123,"valid_until_ms":1764360000123}"#;
        let good = CouponRecord::parse_checked(raw).unwrap();
        let bound =
            CouponRecord { valid_from_ms: 0, valid_until_ms: super::super::campaign::MAX_TIME_MS, ..good.clone() };
        assert_eq!(bound.check(), Ok(()));
        let cases: Vec<(CouponRecord, &str)> = vec![
            (CouponRecord { valid_until_ms: 253_402_300_799_999, ..good.clone() }, "valid_until_ms"),
            (CouponRecord { valid_from_ms: -1, ..good.clone() }, "valid_from_ms"),
            (CouponRecord { claimed_at_ms: i64::MAX, ..good.clone() }, "claimed_at_ms"),
            (CouponRecord { id: "nope".into(), ..good.clone() }, "coupon id"),
            (CouponRecord { campaign_id: "nope".into(), ..good.clone() }, "campaign id"),
            (CouponRecord { user_id: "x".repeat(65), ..good.clone() }, "user id"),
            (CouponRecord { idempotency_key: Some("k".repeat(65)), ..good.clone() }, "idempotency key"),
        ];
        for (r, what) in cases {
            let e = r.check().unwrap_err();
            assert!(e.contains(what), "{e} should name {what}");
        }
        assert!(CouponRecord::parse_checked(r#"{"id":"x"}"#).unwrap_err().starts_with("not a claim record"));
    }
}
