//! Claiming a coupon and reading the user's coupons.
//!
//! The grant itself is one Lua script on the user's home shard (see
//! `stock`); this module turns its outcome into what the API promises and
//! builds the Coupon the app sees from the claim record plus the campaign's
//! terms.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{CampaignService, Result};
use crate::db::Db;
use crate::domain::campaign::{AppliesTo, Discount};
use crate::domain::{Campaign, CampaignId, CouponId, CouponRecord, UserId};
use crate::stock::{ClaimOutcome, StockStore};

/// A coupon as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponView {
    pub id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub status: CouponStatus,
    pub claimed_at: DateTime<Utc>,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub discount: Discount,
    pub min_spend_cents: i64,
    pub applies_to: AppliesTo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CouponStatus {
    Claimed,
    Redeemed,
    Expired,
}

impl CouponView {
    pub fn new(record: &CouponRecord, campaign: &Campaign, now: DateTime<Utc>) -> Self {
        let valid_until = record.valid_until();
        Self {
            id: record.id.clone(),
            campaign_id: record.campaign_id.clone(),
            user_id: record.user_id.clone(),
            status: if now >= valid_until { CouponStatus::Expired } else { CouponStatus::Claimed },
            claimed_at: record.claimed_at(),
            valid_from: record.valid_from(),
            valid_until,
            discount: campaign.coupon.discount.clone(),
            min_spend_cents: campaign.coupon.min_spend_cents,
            applies_to: campaign.coupon.applies_to.clone(),
        }
    }
}

/// Every answer a claim can get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    Granted(CouponView),
    /// Same `Idempotency-Key` as an earlier grant: that coupon again.
    Replayed(CouponView),
    AlreadyClaimed {
        coupon_id: String,
    },
    LimitReached {
        coupon_ids: Vec<String>,
    },
    NotStarted {
        starts_at: DateTime<Utc>,
    },
    Ended,
    SoldOut,
    /// Stock exists but kept being taken while moving it to the user's
    /// shard: ask the client to retry shortly.
    Busy,
    CampaignNotFound,
}

#[derive(Clone)]
pub struct ClaimService {
    campaigns: CampaignService,
    stock: StockStore,
    db: Db,
    /// Campaigns this instance has seen sold out. Stock never comes back
    /// once every shard is empty and nothing is in flight (there is no
    /// restocking, transfers conserve units), so later claims are answered
    /// from memory: after a sell-out most of a drop's traffic is 410s, and
    /// each would otherwise cost a script and two scans of every shard.
    sold_out: Arc<std::sync::RwLock<std::collections::HashSet<CampaignId>>>,
}

/// Bound of the sold-out set (cleared when full; it only saves work).
const SOLD_OUT_CAPACITY: usize = 10_000;

impl ClaimService {
    pub fn new(campaigns: CampaignService, stock: StockStore, db: Db) -> Self {
        Self { campaigns, stock, db, sold_out: Arc::default() }
    }

    pub async fn claim(
        &self,
        campaign_id: &CampaignId,
        user: &UserId,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ClaimResult> {
        // A retry with an Idempotency-Key must still find its coupon, so only
        // key-less claims take the shortcut.
        if idempotency_key.is_none() && self.sold_out.read().unwrap_or_else(|e| e.into_inner()).contains(campaign_id) {
            return Ok(ClaimResult::SoldOut);
        }
        let Some(campaign) = self.campaigns.find(campaign_id).await? else {
            return Ok(ClaimResult::CampaignNotFound);
        };
        let coupon = CouponId::generate();
        let outcome = self.stock.claim(&campaign, user, &coupon, idempotency_key).await?;
        Ok(match outcome {
            ClaimOutcome::Granted(r) => ClaimResult::Granted(CouponView::new(&r, &campaign, now)),
            ClaimOutcome::Replayed(r) => ClaimResult::Replayed(CouponView::new(&r, &campaign, now)),
            ClaimOutcome::Holding(ids) if campaign.per_user_limit == 1 => {
                ClaimResult::AlreadyClaimed { coupon_id: ids.into_iter().next().unwrap_or_default() }
            }
            ClaimOutcome::Holding(coupon_ids) => ClaimResult::LimitReached { coupon_ids },
            ClaimOutcome::NotStarted { starts_ms } => {
                ClaimResult::NotStarted { starts_at: crate::domain::coupon::from_ms(starts_ms) }
            }
            ClaimOutcome::Ended => ClaimResult::Ended,
            ClaimOutcome::SoldOut => {
                let mut set = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
                if set.len() >= SOLD_OUT_CAPACITY {
                    set.clear();
                }
                set.insert(campaign_id.clone());
                ClaimResult::SoldOut
            }
            ClaimOutcome::Contended => ClaimResult::Busy,
            ClaimOutcome::Missing => {
                tracing::error!(campaign = %campaign_id, "campaign row exists but its shards are missing in redis");
                ClaimResult::CampaignNotFound
            }
        })
    }

    /// The user's coupons: the claim records in Redis (a claim shows the
    /// moment it was granted) merged with the rows in MySQL (by coupon id).
    /// Scans the newest campaigns; optional filters.
    pub async fn my_coupons(
        &self,
        user: &UserId,
        campaign: Option<&CampaignId>,
        status: Option<CouponStatus>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CouponView>> {
        let campaigns: Vec<Arc<Campaign>> = match campaign {
            Some(id) => self.campaigns.find(id).await?.into_iter().collect(),
            None => self.campaigns.list_terms().await?,
        };
        let reads = campaigns.iter().map(|c| self.stock.user_coupons(c, user));
        let (per_campaign, rows) = tokio::join!(
            futures_util::future::try_join_all(reads),
            self.db.user_coupons(user.as_str(), campaign.map(CampaignId::as_str))
        );
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<CouponView> = Vec::new();
        for (c, records) in campaigns.iter().zip(per_campaign?) {
            for r in records {
                seen.insert(r.id.clone());
                out.push(CouponView::new(&r, c, now));
            }
        }
        for row in rows? {
            if seen.contains(&row.id) {
                continue;
            }
            let Some(c) = campaigns.iter().find(|c| c.id.as_str() == row.campaign_id) else { continue };
            out.push(CouponView::new(&row.to_record(), c, now));
        }
        out.retain(|v| status.is_none_or(|s| v.status == s));
        out.sort_by(|a, b| b.claimed_at.cmp(&a.claimed_at).then_with(|| b.id.cmp(&a.id)));
        Ok(out)
    }

    pub async fn my_coupon(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        now: DateTime<Utc>,
    ) -> Result<Option<CouponView>> {
        Ok(self.my_coupons(user, None, None, now).await?.into_iter().find(|c| c.id == coupon_id.as_str()))
    }
}
