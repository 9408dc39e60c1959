//! Changing a campaign after creation (`PATCH /v1/campaigns/{id}`): what
//! may change and which way.
//!
//! Only three things, each in the one direction that cannot take back a
//! promise made to a user: the `name` (display only), `ends_at` later (a
//! window that shrank would end claims users were told they could make),
//! and `total_stock` up (a top-up; fewer units than were claimed cannot
//! exist, and fewer than the current total would silently take back
//! stock). Everything else (discount, validity, limits, the start) is fixed
//! once created: coupons already granted carry those terms.
//!
//! Two steps: [`PatchCampaignRequest::validate`] checks the body on its
//! own (400 naming the field), [`CampaignPatch::decide`] checks it against
//! the campaign as it is now (409 `invalid_change` with a `reason`).

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::campaign::{
    Campaign, CampaignStatus, MAX_TIME_MS, MAX_TOTAL_STOCK, TIME_RANGE, ValidationError, in_range, parse_time,
    valid_name,
};

const DAY_MS: i64 = 86_400_000;

/// Body of `PATCH /v1/campaigns/{id}`: any of the three, at least one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCampaignRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// Only later than the current `ends_at`, and not once the campaign ended.
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    /// Only an increase (a top-up spread over the shards), and not once the
    /// campaign ended.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub total_stock: Option<i64>,
}

/// A well-formed change, not yet checked against the campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignPatch {
    pub name: Option<String>,
    pub ends_at: Option<DateTime<Utc>>,
    pub total_stock: Option<u64>,
}

impl PatchCampaignRequest {
    pub fn validate(self) -> Result<CampaignPatch, ValidationError> {
        if self.name.is_none() && self.ends_at.is_none() && self.total_stock.is_none() {
            return Err(ValidationError::new("body", "give at least one of name, ends_at, total_stock"));
        }
        Ok(CampaignPatch {
            name: self.name.as_deref().map(valid_name).transpose()?,
            ends_at: self.ends_at.as_deref().map(|s| parse_time("ends_at", s)).transpose()?,
            total_stock: self
                .total_stock
                .map(|n| in_range("total_stock", n, 1, MAX_TOTAL_STOCK).map(|n| n as u64))
                .transpose()?,
        })
    }
}

/// Why a change is refused (409 `invalid_change`, `reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct InvalidChange {
    pub reason: &'static str,
    pub message: String,
}

impl InvalidChange {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

/// What a patch does to one campaign; `None` fields change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub name: Option<String>,
    /// The new end, at or after the current one (the same end again is
    /// accepted and written again: a retry of a change that failed half-way).
    pub ends_at: Option<DateTime<Utc>>,
    /// Units to add (> 0).
    pub top_up: Option<u64>,
}

impl CampaignPatch {
    /// Checks the patch against `c` as it is at `now`, `claimed` units
    /// granted so far.
    pub fn decide(&self, c: &Campaign, claimed: u64, now: DateTime<Utc>) -> Result<Changes, InvalidChange> {
        let ended = c.status_at(now, false) == CampaignStatus::Ended;
        let ends_at = match self.ends_at {
            None => None,
            Some(_) if ended => return Err(InvalidChange::new("ended", "the campaign has ended; its end is final")),
            Some(t) if t < c.ends_at => {
                return Err(InvalidChange::new("ends_at_earlier", "ends_at can only move later"));
            }
            Some(t) => {
                if let Some(days) = c.coupon.valid_for_days
                    && t.timestamp_millis() + days * DAY_MS > MAX_TIME_MS
                {
                    return Err(InvalidChange::new(
                        "ends_at_out_of_range",
                        format!("counted from a claim at ends_at, the coupon would end outside {TIME_RANGE}"),
                    ));
                }
                Some(t)
            }
        };
        let top_up = match self.total_stock {
            None => None,
            Some(n) if n < claimed => {
                return Err(InvalidChange::new(
                    "below_claimed",
                    format!("{claimed} units are claimed already; total_stock cannot go below that"),
                ));
            }
            Some(n) if n < c.total_stock => {
                return Err(InvalidChange::new("stock_decrease", "total_stock can only increase (a top-up)"));
            }
            Some(n) if n == c.total_stock => None,
            Some(_) if ended => {
                return Err(InvalidChange::new("ended", "the campaign has ended; it takes no more stock"));
            }
            Some(n) => Some(n - c.total_stock),
        };
        let name = self.name.clone().filter(|n| *n != c.name);
        Ok(Changes { name, ends_at, top_up })
    }
}

/// A campaign for unit tests of this crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::domain::campaign::{AppliesTo, CouponTerms, Discount};
    use crate::domain::ids::CampaignId;

    pub fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Live on 2026-01-01, 100 units on two shards.
    pub fn campaign(name: &str) -> Campaign {
        Campaign {
            id: CampaignId::generate(),
            name: name.into(),
            total_stock: 100,
            per_user_limit: 1,
            starts_at: t("2026-01-01T00:00:00Z"),
            ends_at: t("2026-01-02T00:00:00Z"),
            closed_at: None,
            coupon: CouponTerms {
                discount: Discount::Fixed { amount_cents: 100 },
                min_spend_cents: 0,
                applies_to: AppliesTo::default(),
                valid_for_days: Some(7),
                valid_until: None,
                valid_from: None,
            },
            shard_buckets: vec![0, 1],
            created_at: t("2025-12-31T00:00:00Z"),
            tally: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::t;
    use super::*;

    fn campaign() -> Campaign {
        super::tests_support::campaign("drop")
    }

    fn patch(name: Option<&str>, ends_at: Option<&str>, total_stock: Option<u64>) -> CampaignPatch {
        CampaignPatch { name: name.map(Into::into), ends_at: ends_at.map(t), total_stock }
    }

    #[test]
    fn only_later_ends_and_only_increases() {
        let c = campaign();
        let live = t("2026-01-01T12:00:00Z");
        let ok = patch(Some("new"), Some("2026-01-03T00:00:00Z"), Some(150)).decide(&c, 40, live).unwrap();
        assert_eq!(
            ok,
            Changes { name: Some("new".into()), ends_at: Some(t("2026-01-03T00:00:00Z")), top_up: Some(50) }
        );
        let reason = |p: CampaignPatch, claimed, now| p.decide(&c, claimed, now).unwrap_err().reason;
        assert_eq!(reason(patch(None, Some("2026-01-01T18:00:00Z"), None), 0, live), "ends_at_earlier");
        assert_eq!(reason(patch(None, None, Some(30)), 40, live), "below_claimed");
        assert_eq!(reason(patch(None, None, Some(90)), 40, live), "stock_decrease");
        let over = t("2026-01-02T00:00:00Z");
        assert_eq!(reason(patch(None, Some("2026-01-03T00:00:00Z"), None), 0, over), "ended");
        assert_eq!(reason(patch(None, None, Some(150)), 0, over), "ended");
        // A rename is fine after the end; the same values change nothing.
        let same = patch(Some("drop"), Some("2026-01-02T00:00:00Z"), Some(100)).decide(&c, 0, live).unwrap();
        assert_eq!(same, Changes { name: None, ends_at: Some(c.ends_at), top_up: None });
        assert!(patch(Some("late"), None, None).decide(&c, 0, over).is_ok());
    }

    #[test]
    fn a_closed_campaign_is_ended() {
        let mut c = campaign();
        c.closed_at = Some(t("2026-01-01T06:00:00Z"));
        let err = patch(None, None, Some(200)).decide(&c, 0, t("2026-01-01T12:00:00Z")).unwrap_err();
        assert_eq!(err.reason, "ended");
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let req = |v: serde_json::Value| serde_json::from_value::<PatchCampaignRequest>(v).unwrap().validate();
        assert_eq!(req(serde_json::json!({})).unwrap_err().field, "body");
        assert_eq!(req(serde_json::json!({"name": " "})).unwrap_err().field, "name");
        assert_eq!(req(serde_json::json!({"ends_at": "tomorrow"})).unwrap_err().field, "ends_at");
        assert_eq!(req(serde_json::json!({"total_stock": 0})).unwrap_err().field, "total_stock");
        assert!(serde_json::from_value::<PatchCampaignRequest>(serde_json::json!({"shards": 3})).is_err());
    }
}
