//! Campaign terms: what marketing sends (`CreateCampaignRequest`), the
//! validated [`NewCampaign`], and the stored [`Campaign`].
//!
//! Validation is strict on purpose: unknown fields are refused (a typo such as
//! `total_stok` must never silently become a default), numbers have bounds,
//! and the first offending field is named in the error so the caller can fix
//! it. Money is integer cents, never floats.
//!
//! Why ~600 lines: 180 of them are the tests of the validation rules, kept
//! beside the rules they pin.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::CampaignId;

pub const MAX_TOTAL_STOCK: i64 = 1_000_000_000;
pub const MAX_PER_USER_LIMIT: i64 = 100;
pub const MAX_SHARDS: i64 = 1024;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_VALID_FOR_DAYS: i64 = 3650;
/// Upper bound for any cents amount: 10^12 cents = 10 billion currency units.
pub const MAX_CENTS: i64 = 1_000_000_000_000;
/// `applies_to` lists: enough for a real catalogue slice, small enough to keep
/// every redeem check cheap.
pub const MAX_APPLIES_TO_IDS: usize = 1000;
pub const MAX_REF_ID_LEN: usize = 64;

/// The earliest time anything may name: 1970-01-01T00:00:00Z (API.md), in
/// milliseconds since the epoch.
pub const MIN_TIME_MS: i64 = 0;
/// The latest: 9999-12-31T23:59:59Z (API.md).
pub const MAX_TIME_MS: i64 = 253_402_300_799_000;
/// The range as the error messages spell it.
pub const TIME_RANGE: &str = "1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z";
const DAY_MS: i64 = 86_400_000;

/// True when a time (milliseconds since the epoch) can travel the whole
/// pipeline: the claim record (ms since the epoch, where the claim script
/// reads 0 as "unset" and nothing is below it), and MySQL, whose DATETIME(3)
/// columns hold 1000-01-01..9999-12-31 23:59:59.999 (the schema has no
/// TIMESTAMP column, whose range would end in 2038). The API refuses a
/// campaign whose coupons could fall outside it (see
/// [`CreateCampaignRequest::validate`]); the relay and the persist worker
/// use the same test on each claim record, so what the API accepted is
/// never refused further down.
pub fn time_in_range(ms: i64) -> bool {
    (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms)
}

/// The first invalid field of a request and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

type Result<T> = std::result::Result<T, ValidationError>;

/// Body of `POST /v1/campaigns`, exactly as the wire carries it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaignRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub total_stock: i64,
    /// Default 1.
    #[schema(minimum = 1, maximum = 100)]
    pub per_user_limit: Option<i64>,
    /// Every time field lies in 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z.
    #[schema(format = DateTime)]
    pub starts_at: String,
    /// After `starts_at`.
    #[schema(format = DateTime)]
    pub ends_at: String,
    /// Default: chosen from the cluster size and the stock; never more than `total_stock`.
    #[schema(minimum = 1, maximum = 1024)]
    pub shards: Option<i64>,
    pub coupon: CouponRequest,
}

/// Exactly one of `valid_until` and `valid_for_days`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponRequest {
    pub discount: DiscountRequest,
    #[schema(minimum = 0)]
    pub min_spend_cents: Option<i64>,
    pub applies_to: Option<AppliesToRequest>,
    /// Counted from the claim: `ends_at` plus this many days must stay
    /// within 9999-12-31T23:59:59Z.
    #[schema(minimum = 1, maximum = 3650)]
    pub valid_for_days: Option<i64>,
    #[schema(format = DateTime)]
    pub valid_until: Option<String>,
    #[schema(format = DateTime)]
    pub valid_from: Option<String>,
}

/// Kept as a flat struct rather than a tagged enum so that a bad or missing
/// field is reported by its own name.
/// `{"type":"fixed","amount_cents":N}` or `{"type":"percent","percent":P,"max_cents":M}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscountRequest {
    #[serde(rename = "type")]
    #[schema(pattern = "^(fixed|percent)$")]
    pub kind: String,
    #[schema(minimum = 1)]
    pub amount_cents: Option<i64>,
    #[schema(minimum = 1, maximum = 100)]
    pub percent: Option<i64>,
    #[schema(minimum = 0)]
    pub max_cents: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppliesToRequest {
    pub product_ids: Option<Vec<String>>,
    pub category_ids: Option<Vec<String>>,
}

/// The discount a coupon gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Discount {
    Fixed {
        amount_cents: i64,
    },
    Percent {
        percent: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_cents: Option<i64>,
    },
}

/// Which items of an order a coupon applies to; both empty = the whole order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppliesTo {
    #[serde(default)]
    pub product_ids: Vec<String>,
    #[serde(default)]
    pub category_ids: Vec<String>,
}

/// The coupon a campaign hands out, as given by marketing (echoed back in the
/// Campaign response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CouponTerms {
    pub discount: Discount,
    pub min_spend_cents: i64,
    pub applies_to: AppliesTo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_days: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime<Utc>>,
}

/// A validated campaign, before the service picked its id and shard count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCampaign {
    pub name: String,
    pub total_stock: u64,
    pub per_user_limit: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// `None`: the service chooses from the cluster size and the stock.
    pub shards: Option<u32>,
    pub coupon: CouponTerms,
}

/// A campaign name: trimmed, 1..=200 characters, no control characters.
pub(crate) fn valid_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::new("name", format!("must be 1..={MAX_NAME_CHARS} characters, not blank")));
    }
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::new("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// An RFC 3339 time within [`time_in_range`].
pub(crate) fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ValidationError::new(field, "must be an RFC 3339 time, e.g. 2026-11-21T20:00:00Z"))?;
    if !time_in_range(t.timestamp_millis()) {
        return Err(ValidationError::new(field, format!("must lie in {TIME_RANGE}")));
    }
    Ok(t)
}

pub(crate) fn in_range(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ValidationError::new(field, format!("must be between {lo} and {hi}")))
    }
}

fn ref_ids(field: &str, ids: Option<Vec<String>>) -> Result<Vec<String>> {
    let ids = ids.unwrap_or_default();
    if ids.len() > MAX_APPLIES_TO_IDS {
        return Err(ValidationError::new(field, format!("at most {MAX_APPLIES_TO_IDS} ids")));
    }
    for id in &ids {
        if id.is_empty() || id.len() > MAX_REF_ID_LEN || id.chars().any(char::is_control) {
            return Err(ValidationError::new(field, format!("each id must be 1..={MAX_REF_ID_LEN} printable bytes")));
        }
    }
    Ok(ids)
}

impl DiscountRequest {
    fn validate(self) -> Result<Discount> {
        match self.kind.as_str() {
            "fixed" => {
                if self.percent.is_some() {
                    return Err(ValidationError::new("coupon.discount.percent", "not allowed for a fixed discount"));
                }
                if self.max_cents.is_some() {
                    return Err(ValidationError::new("coupon.discount.max_cents", "not allowed for a fixed discount"));
                }
                let amount = self.amount_cents.ok_or_else(|| {
                    ValidationError::new("coupon.discount.amount_cents", "required for a fixed discount")
                })?;
                let amount_cents = in_range("coupon.discount.amount_cents", amount, 1, MAX_CENTS)?;
                Ok(Discount::Fixed { amount_cents })
            }
            "percent" => {
                if self.amount_cents.is_some() {
                    return Err(ValidationError::new(
                        "coupon.discount.amount_cents",
                        "not allowed for a percent discount",
                    ));
                }
                let percent = self.percent.ok_or_else(|| {
                    ValidationError::new("coupon.discount.percent", "required for a percent discount")
                })?;
                let percent = in_range("coupon.discount.percent", percent, 1, 100)?;
                let max_cents =
                    self.max_cents.map(|m| in_range("coupon.discount.max_cents", m, 1, MAX_CENTS)).transpose()?;
                Ok(Discount::Percent { percent, max_cents })
            }
            _ => Err(ValidationError::new("coupon.discount.type", "must be \"fixed\" or \"percent\"")),
        }
    }
}

impl CreateCampaignRequest {
    /// Checks every bound of API.md, in field order, and returns the first
    /// failure. `now` is passed in so the check is deterministic in tests.
    pub fn validate(self, now: DateTime<Utc>) -> Result<NewCampaign> {
        let name = valid_name(&self.name)?;
        let total_stock = in_range("total_stock", self.total_stock, 1, MAX_TOTAL_STOCK)?;
        let per_user_limit = in_range("per_user_limit", self.per_user_limit.unwrap_or(1), 1, MAX_PER_USER_LIMIT)?;
        let starts_at = parse_time("starts_at", &self.starts_at)?;
        let ends_at = parse_time("ends_at", &self.ends_at)?;
        if ends_at <= starts_at {
            return Err(ValidationError::new("ends_at", "must be after starts_at"));
        }
        if ends_at <= now {
            return Err(ValidationError::new("ends_at", "is already in the past"));
        }
        let shards = match self.shards {
            None => None,
            Some(s) => {
                let s = in_range("shards", s, 1, MAX_SHARDS)?;
                if s > total_stock {
                    return Err(ValidationError::new("shards", "must not exceed total_stock"));
                }
                Some(s as u32)
            }
        };

        let c = self.coupon;
        let discount = c.discount.validate()?;
        let min_spend_cents = in_range("coupon.min_spend_cents", c.min_spend_cents.unwrap_or(0), 0, MAX_CENTS)?;
        let applies_to = match c.applies_to {
            None => AppliesTo::default(),
            Some(a) => AppliesTo {
                product_ids: ref_ids("coupon.applies_to.product_ids", a.product_ids)?,
                category_ids: ref_ids("coupon.applies_to.category_ids", a.category_ids)?,
            },
        };
        let valid_from = c.valid_from.as_deref().map(|s| parse_time("coupon.valid_from", s)).transpose()?;
        let (valid_for_days, valid_until) = match (c.valid_for_days, c.valid_until) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "coupon.valid_until",
                    "give either valid_until or valid_for_days, not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "coupon.valid_for_days",
                    "one of valid_until or valid_for_days is required",
                ));
            }
            (Some(days), None) => {
                let days = in_range("coupon.valid_for_days", days, 1, MAX_VALID_FOR_DAYS)?;
                // A claim just before `ends_at` gets valid_until = claim + days.
                if ends_at.timestamp_millis() + days * DAY_MS > MAX_TIME_MS {
                    return Err(ValidationError::new(
                        "coupon.valid_for_days",
                        format!("counted from a claim at ends_at, the coupon would end outside {TIME_RANGE}"),
                    ));
                }
                (Some(days), None)
            }
            (None, Some(until)) => {
                let until = parse_time("coupon.valid_until", &until)?;
                if until <= starts_at {
                    return Err(ValidationError::new("coupon.valid_until", "must be after starts_at"));
                }
                if let Some(from) = valid_from
                    && from >= until
                {
                    return Err(ValidationError::new("coupon.valid_from", "must be before valid_until"));
                }
                (None, Some(until))
            }
        };

        Ok(NewCampaign {
            name,
            total_stock: total_stock as u64,
            per_user_limit: per_user_limit as u32,
            starts_at,
            ends_at,
            shards,
            coupon: CouponTerms { discount, min_spend_cents, applies_to, valid_for_days, valid_until, valid_from },
        })
    }
}

/// Where a campaign is in its life, as shown to marketing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Scheduled,
    Live,
    SoldOut,
    Ended,
}

/// A stored campaign: its terms plus where its stock shards live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: String,
    pub total_stock: u64,
    pub per_user_limit: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Set by `close`: the campaign ended early.
    pub closed_at: Option<DateTime<Utc>>,
    pub coupon: CouponTerms,
    /// The outbox bucket of each shard (index = shard number). Its length is
    /// the shard count. Fixed at creation: see `stock::keys`.
    pub shard_buckets: Vec<u16>,
    pub created_at: DateTime<Utc>,
    /// This instance's claims of the campaign by outcome (metrics only; not
    /// part of the terms: see [`ClaimTally`]).
    pub tally: std::sync::Arc<crate::domain::tally::ClaimTally>,
}

impl Campaign {
    pub fn shards(&self) -> u32 {
        self.shard_buckets.len() as u32
    }

    /// The moment claims stop: the end of the window or the close, whichever
    /// came first.
    pub fn effective_end(&self) -> DateTime<Utc> {
        match self.closed_at {
            Some(c) if c < self.ends_at => c,
            _ => self.ends_at,
        }
    }

    /// The status at `now`, given whether every shard is empty.
    pub fn status_at(&self, now: DateTime<Utc>, sold_out: bool) -> CampaignStatus {
        if now >= self.effective_end() {
            CampaignStatus::Ended
        } else if now < self.starts_at {
            CampaignStatus::Scheduled
        } else if sold_out {
            CampaignStatus::SoldOut
        } else {
            CampaignStatus::Live
        }
    }

    /// Stock given to each shard at creation: split evenly, the remainder
    /// spread one unit each over the first shards.
    pub fn initial_shard_stock(&self, shard: u32) -> u64 {
        split_stock(self.total_stock, self.shards(), shard)
    }
}

/// Stock of shard `shard` out of `shards` when `total` is split evenly.
pub fn split_stock(total: u64, shards: u32, shard: u32) -> u64 {
    let n = u64::from(shards);
    total / n + u64::from(u64::from(shard) < total % n)
}

/// The user's home shard: a stable hash of the user id (FNV-1a 64) modulo
/// the shard count. Stable across instances and restarts, so every request of
/// one user lands on the shard that holds that user's holdings.
pub fn home_shard(user_id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-01T00:00:00Z".parse().unwrap()
    }

    fn req(json: serde_json::Value) -> std::result::Result<NewCampaign, String> {
        let r: CreateCampaignRequest = serde_json::from_value(json).map_err(|e| format!("serde: {e}"))?;
        r.validate(now()).map_err(|e| e.field)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "name": "Double 11", "total_stock": 100, "starts_at": "2026-11-11T00:00:00Z",
            "ends_at": "2026-11-11T02:00:00Z",
            "coupon": {"discount": {"type": "fixed", "amount_cents": 2000}, "valid_for_days": 7}
        })
    }

    fn with(path: &[&str], v: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        let mut cur = &mut b;
        for p in &path[..path.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[path[path.len() - 1]] = v;
        b
    }

    #[test]
    fn accepts_the_documented_example_with_defaults() {
        let c = req(base()).unwrap();
        assert_eq!(c.per_user_limit, 1);
        assert_eq!(c.coupon.min_spend_cents, 0);
        assert_eq!(c.shards, None);
    }

    #[test]
    fn names_the_first_offending_field() {
        use serde_json::json;
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (with(&["name"], json!("  ")), "name"),
            (with(&["total_stock"], json!(0)), "total_stock"),
            (with(&["total_stock"], json!(1_000_000_001)), "total_stock"),
            (with(&["per_user_limit"], json!(0)), "per_user_limit"),
            (with(&["per_user_limit"], json!(101)), "per_user_limit"),
            (with(&["starts_at"], json!("tomorrow")), "starts_at"),
            (with(&["ends_at"], json!("2026-11-10T00:00:00Z")), "ends_at"),
            (with(&["ends_at"], json!("2026-11-11T00:00:00Z")), "ends_at"),
            (with(&["shards"], json!(0)), "shards"),
            (with(&["shards"], json!(1025)), "shards"),
            (with(&["shards"], json!(101)), "shards"),
            (with(&["coupon", "discount", "type"], json!("bogus")), "coupon.discount.type"),
            (with(&["coupon", "discount", "amount_cents"], json!(0)), "coupon.discount.amount_cents"),
            (with(&["coupon", "discount"], json!({"type": "percent", "percent": 101})), "coupon.discount.percent"),
            (with(&["coupon", "discount"], json!({"type": "percent", "percent": 0})), "coupon.discount.percent"),
            (
                with(&["coupon", "discount"], json!({"type": "percent", "percent": 10, "max_cents": 0})),
                "coupon.discount.max_cents",
            ),
            (with(&["coupon", "min_spend_cents"], json!(-1)), "coupon.min_spend_cents"),
            (with(&["coupon", "valid_for_days"], json!(3651)), "coupon.valid_for_days"),
            (with(&["coupon", "valid_until"], json!("2026-12-01T00:00:00Z")), "coupon.valid_until"),
        ];
        for (body, field) in cases {
            assert_eq!(req(body.clone()), Err(field.to_owned()), "{body}");
        }
    }

    /// Every time field of the request, against the range the pipeline can
    /// carry: the bounds themselves pass, one millisecond beyond does not.
    #[test]
    fn times_outside_the_storable_range_are_refused() {
        use serde_json::json;
        let far = |f: &str| -> serde_json::Value {
            let mut b = base();
            b["coupon"].as_object_mut().unwrap().remove("valid_for_days");
            b["coupon"]["valid_until"] = json!(f);
            b
        };
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (with(&["starts_at"], json!("1969-12-31T23:59:59.999Z")), "starts_at"),
            (with(&["starts_at"], json!("0000-01-01T00:00:00+01:00")), "starts_at"),
            (with(&["ends_at"], json!("9999-12-31T23:59:59.001Z")), "ends_at"),
            (far("9999-12-31T23:59:59.999Z"), "coupon.valid_until"),
            (with(&["coupon", "valid_from"], json!("1969-07-20T20:17:40Z")), "coupon.valid_from"),
            (with(&["coupon", "valid_from"], json!("9999-12-31T23:59:59.500Z")), "coupon.valid_from"),
            // Counted from a claim near the end, 7 days run past 9999.
            (with(&["ends_at"], json!("9999-12-24T23:59:59.001Z")), "coupon.valid_for_days"),
        ];
        for (body, field) in cases {
            assert_eq!(req(body.clone()), Err(field.to_owned()), "{body}");
        }
        let mut ok = far("9999-12-31T23:59:59Z");
        ok["coupon"]["valid_from"] = json!("1970-01-01T00:00:00Z");
        assert!(req(ok).is_ok());
        assert!(req(with(&["ends_at"], json!("9999-12-24T23:59:59Z"))).is_ok());
    }

    proptest::proptest! {
        /// What the API accepts, the pipeline can store: for any accepted
        /// campaign, the record of a claim at any moment of its window (the
        /// times the claim script writes) passes the relay's and the
        /// worker's check.
        #[test]
        fn accepted_campaigns_give_storable_records(
            // Near either end of the range, and anywhere.
            start in proptest::prop_oneof![
                -1_000i64..100 * DAY_MS,
                MAX_TIME_MS - 5000 * DAY_MS..MAX_TIME_MS + 1_000,
                -1_000i64..MAX_TIME_MS + 1_000,
            ],
            len in 1i64..400 * DAY_MS,
            at in 0.0f64..1.0,
            days in proptest::option::of(1i64..=MAX_VALID_FOR_DAYS),
            until_after in 1i64..4000 * DAY_MS,
            from_before in proptest::option::of(-1_000i64..100 * DAY_MS),
        ) {
            let ts = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
            let mut coupon = serde_json::json!({"discount": {"type": "fixed", "amount_cents": 1}});
            match days {
                Some(d) => coupon["valid_for_days"] = d.into(),
                None => coupon["valid_until"] = ts(start + until_after).into(),
            }
            if let Some(b) = from_before {
                coupon["valid_from"] = ts(start - b).into();
            }
            let body = serde_json::json!({
                "name": "p", "total_stock": 1, "starts_at": ts(start), "ends_at": ts(start + len), "coupon": coupon
            });
            let Ok(r) = serde_json::from_value::<CreateCampaignRequest>(body) else { return Ok(()) };
            let Ok(c) = r.validate(DateTime::<Utc>::MIN_UTC) else { return Ok(()) };
            // A claim at a moment of [starts_at, ends_at), as claim.lua builds it.
            let (s, e) = (c.starts_at.timestamp_millis(), c.ends_at.timestamp_millis());
            let now = s + ((e - 1 - s) as f64 * at) as i64;
            let record = crate::domain::CouponRecord {
                id: "01JD0000000000000000000000".into(),
                campaign_id: "01JD0000000000000000000001".into(),
                user_id: "u".into(),
                shard: 0,
                claimed_at_ms: now,
                valid_from_ms: c.coupon.valid_from.map_or(now, |t| t.timestamp_millis()),
                valid_until_ms: c.coupon.valid_until.map_or_else(
                    || now + c.coupon.valid_for_days.unwrap() * DAY_MS,
                    |t| t.timestamp_millis(),
                ),
                idempotency_key: None,
            };
            proptest::prop_assert_eq!(record.check(), Ok(()), "{:?}", c);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut b = base();
        b["total_stok"] = serde_json::json!(5);
        assert!(req(b).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn split_is_even_and_adds_up() {
        for (total, shards) in [(100u64, 16u32), (7, 7), (1_000_000_000, 1024), (5, 3)] {
            let parts: Vec<u64> = (0..shards).map(|s| split_stock(total, shards, s)).collect();
            assert_eq!(parts.iter().sum::<u64>(), total);
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn home_shard_is_stable_and_spreads() {
        assert_eq!(home_shard("alice", 16), home_shard("alice", 16));
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            seen[home_shard(&format!("user-{i}"), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
