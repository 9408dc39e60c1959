//! Redeem at checkout and release on a cancelled order.
//!
//! Low volume next to claims, so the database decides (DESIGN.md): the
//! coupon row is locked for the decision, which makes two concurrent
//! redeems of one coupon strictly ordered (exactly one wins; the other sees
//! its order and gets `already_redeemed`). A coupon claimed a moment ago may
//! not have reached MySQL yet: it is written through first with the same
//! idempotent insert the persist worker uses, so the row the worker writes
//! later is a no-op and the redemption is never overwritten.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{CampaignService, ClaimService, CouponView, Result};
use crate::db::Db;
use crate::db::coupons::{CouponRow, Redemption};
use crate::domain::order::{self, NotApplicable, Order};
use crate::domain::{Campaign, CampaignId, CouponId, UserId};

/// Every answer a redeem can get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemResult {
    /// Redeemed now, or earlier for the same order (idempotent replay).
    Redeemed {
        coupon_id: String,
        redemption: Redemption,
    },
    CouponNotFound,
    AlreadyRedeemed {
        order_id: String,
    },
    NotYetValid {
        valid_from: DateTime<Utc>,
    },
    Expired,
    NotApplicable(NotApplicable),
}

/// Every answer a release can get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseResult {
    /// Not (or no longer) redeemed: the coupon as it is now.
    Released(Box<CouponView>),
    CouponNotFound,
    NotRedeemedByOrder,
}

#[derive(Clone)]
pub struct CouponService {
    campaigns: CampaignService,
    claims: ClaimService,
    db: Db,
    /// Wakes the event publisher after a decision committed.
    events: Arc<Notify>,
}

impl CouponService {
    pub fn new(campaigns: CampaignService, claims: ClaimService, db: Db, events: Arc<Notify>) -> Self {
        Self { campaigns, claims, db, events }
    }

    /// The user's coupon row, written through from Redis if the pipeline
    /// has not persisted it yet. None: no such coupon of this user.
    async fn own_row(&self, user: &UserId, coupon_id: &CouponId) -> Result<Option<CouponRow>> {
        if let Some(row) = self.db.coupon(coupon_id.as_str()).await? {
            return Ok((row.user_id == user.as_str()).then_some(row));
        }
        let Some((record, _)) = self.claims.find_record(user, coupon_id).await? else {
            return Ok(None);
        };
        self.db.insert_coupons(std::slice::from_ref(&record)).await?;
        tracing::debug!(coupon = %record.id, "coupon written through before its redemption");
        Ok(self.db.coupon(coupon_id.as_str()).await?.filter(|r| r.user_id == user.as_str()))
    }

    async fn campaign_of(&self, row: &CouponRow) -> Result<Option<Arc<Campaign>>> {
        match CampaignId::parse(&row.campaign_id) {
            Some(id) => self.campaigns.find(&id).await,
            None => Ok(None),
        }
    }

    pub async fn redeem(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        order: &Order,
        now: DateTime<Utc>,
    ) -> Result<RedeemResult> {
        let Some(row) = self.own_row(user, coupon_id).await? else {
            return Ok(RedeemResult::CouponNotFound);
        };
        // Terms before the lock: the lock is held only for the decision.
        let Some(campaign) = self.campaign_of(&row).await? else {
            tracing::error!(coupon = %row.id, campaign = %row.campaign_id, "coupon of an unknown campaign");
            return Ok(RedeemResult::CouponNotFound);
        };
        let (mut tx, locked) = self.db.lock_coupon(coupon_id.as_str()).await?;
        let Some(row) = locked.filter(|r| r.user_id == user.as_str()) else {
            return Ok(RedeemResult::CouponNotFound);
        };
        if let Some(r) = row.redemption {
            return Ok(if r.order_id == order.order_id {
                RedeemResult::Redeemed { coupon_id: row.id, redemption: r }
            } else {
                RedeemResult::AlreadyRedeemed { order_id: r.order_id }
            });
        }
        if now < row.valid_from {
            return Ok(RedeemResult::NotYetValid { valid_from: row.valid_from });
        }
        if now >= row.valid_until {
            return Ok(RedeemResult::Expired);
        }
        let terms = &campaign.coupon;
        let priced = match order::price(&terms.discount, terms.min_spend_cents, &terms.applies_to, order) {
            Ok(p) => p,
            Err(reason) => return Ok(RedeemResult::NotApplicable(reason)),
        };
        let applies = &terms.applies_to;
        tx.redeem(&row, order, priced.discount_cents, |l| applies.is_unrestricted() || applies.matches(l), now).await?;
        tx.commit().await?;
        self.events.notify_one();
        // What the row now says, at the precision it keeps (so a replay
        // answers the very same body).
        let redeemed_at = crate::domain::coupon::from_ms(now.timestamp_millis());
        let redemption =
            Redemption { order_id: order.order_id.clone(), discount_cents: priced.discount_cents, redeemed_at };
        Ok(RedeemResult::Redeemed { coupon_id: row.id, redemption })
    }

    pub async fn release(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        order_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseResult> {
        let Some(row) = self.db.coupon(coupon_id.as_str()).await? else {
            // Not persisted yet, so never redeemed: nothing to release.
            return Ok(match self.claims.find_record(user, coupon_id).await? {
                Some((record, campaign)) => {
                    ReleaseResult::Released(Box::new(CouponView::new(&record, &campaign, None, now)))
                }
                None => ReleaseResult::CouponNotFound,
            });
        };
        if row.user_id != user.as_str() {
            return Ok(ReleaseResult::CouponNotFound);
        }
        let Some(campaign) = self.campaign_of(&row).await? else {
            return Ok(ReleaseResult::CouponNotFound);
        };
        let (mut tx, locked) = self.db.lock_coupon(coupon_id.as_str()).await?;
        let Some(row) = locked.filter(|r| r.user_id == user.as_str()) else {
            return Ok(ReleaseResult::CouponNotFound);
        };
        match &row.redemption {
            None => {}
            Some(r) if r.order_id != order_id => return Ok(ReleaseResult::NotRedeemedByOrder),
            Some(_) => {
                tx.release(&row, order_id, now).await?;
                tx.commit().await?;
                self.events.notify_one();
            }
        }
        Ok(ReleaseResult::Released(Box::new(CouponView::new(&row.to_record(), &campaign, None, now))))
    }
}
