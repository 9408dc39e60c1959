//! Redeem at checkout and release on a cancelled order.
//!
//! Low volume next to claims, so the database decides (DESIGN.md): the
//! coupon row is locked for the decision, which makes two concurrent
//! redeems of one coupon, and a release racing a redeem, strictly ordered
//! (exactly one wins; the other sees its outcome). A coupon claimed a
//! moment ago may not have reached MySQL yet: redeem and release both write
//! it through first with the same idempotent insert the persist worker
//! uses, so the row the worker writes later is a no-op, the redemption is
//! never overwritten, and there is always a row to lock.
//!
//! Under load, decisions on different coupons can still lose a lock
//! conflict inside InnoDB (a deadlock, a lock wait timeout): nothing of the
//! losing transaction committed, so the decision (with its write-through)
//! is run again, a bounded number of times, before it is an error (503).
//!
//! Times: `now` is cut to the millisecond before anything is bound or
//! answered, because DATETIME(3) keeps milliseconds and MySQL 8 *rounds* a
//! finer time (MariaDB truncates): the answer, the row and a replay say the
//! same instant. Validity that begins at the grant (`valid_from` <=
//! `claimed_at`, both stamped by the Redis clock that granted the claim)
//! has begun for any redeem, whatever this instance's clock says: the
//! redeem comes after the claim. Only an explicit future `valid_from` is
//! compared with this instance's clock (NTP keeps the two within
//! milliseconds, as for the campaign window).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{CampaignService, ClaimService, CouponView, Result, ServiceError};
use crate::db::Db;
use crate::db::coupons::{CouponRow, Redemption};
use crate::domain::coupon::from_ms;
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

    /// The user's row (written through) and its campaign's terms, read
    /// before any lock: the lock is held only for the decision.
    async fn own_coupon(&self, user: &UserId, coupon_id: &CouponId) -> Result<Option<Arc<Campaign>>> {
        let Some(row) = self.own_row(user, coupon_id).await? else {
            return Ok(None);
        };
        let campaign = self.campaign_of(&row).await?;
        if campaign.is_none() {
            tracing::error!(coupon = %row.id, campaign = %row.campaign_id, "coupon of an unknown campaign");
        }
        Ok(campaign)
    }

    pub async fn redeem(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        order: &Order,
        now: DateTime<Utc>,
    ) -> Result<RedeemResult> {
        let now = to_millis(now);
        // The write-through is inside the retry too: its insert can meet the
        // persist worker's batch of the same rows.
        let answer = retry_lock_conflicts(|| async {
            let Some(campaign) = self.own_coupon(user, coupon_id).await? else {
                return Ok(Decided::Unchanged(RedeemResult::CouponNotFound));
            };
            self.decide_redeem(user, coupon_id, &campaign, order, now).await
        })
        .await?;
        if matches!(answer, Decided::Changed(_)) {
            self.events.notify_one();
        }
        Ok(answer.into_inner())
    }

    /// One attempt at the redeem decision, in one transaction.
    async fn decide_redeem(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        campaign: &Campaign,
        order: &Order,
        now: DateTime<Utc>,
    ) -> Result<Decided<RedeemResult>> {
        let (mut tx, locked) = self.db.lock_coupon(coupon_id.as_str()).await?;
        let Some(row) = locked.filter(|r| r.user_id == user.as_str()) else {
            return Ok(Decided::Unchanged(RedeemResult::CouponNotFound));
        };
        if let Some(r) = row.redemption {
            return Ok(Decided::Unchanged(if r.order_id == order.order_id {
                RedeemResult::Redeemed { coupon_id: row.id, redemption: r }
            } else {
                RedeemResult::AlreadyRedeemed { order_id: r.order_id }
            }));
        }
        if !validity_started(&row, now) {
            return Ok(Decided::Unchanged(RedeemResult::NotYetValid { valid_from: row.valid_from }));
        }
        if now >= row.valid_until {
            return Ok(Decided::Unchanged(RedeemResult::Expired));
        }
        let terms = &campaign.coupon;
        let priced = match order::price(&terms.discount, terms.min_spend_cents, &terms.applies_to, order) {
            Ok(p) => p,
            Err(reason) => return Ok(Decided::Unchanged(RedeemResult::NotApplicable(reason))),
        };
        let applies = &terms.applies_to;
        tx.redeem(&row, order, priced.discount_cents, |l| applies.is_unrestricted() || applies.matches(l), now).await?;
        tx.commit().await?;
        // What the row now says (`now` is already at the precision it
        // keeps), so a replay answers the very same body.
        let redemption =
            Redemption { order_id: order.order_id.clone(), discount_cents: priced.discount_cents, redeemed_at: now };
        Ok(Decided::Changed(RedeemResult::Redeemed { coupon_id: row.id, redemption }))
    }

    pub async fn release(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        order_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseResult> {
        let now = to_millis(now);
        // Written through like a redeem, then decided under the same row
        // lock: a release racing the redeem of a fresh coupon is ordered
        // before or after it, never beside it.
        let answer = retry_lock_conflicts(|| async {
            let Some(campaign) = self.own_coupon(user, coupon_id).await? else {
                return Ok(Decided::Unchanged(ReleaseResult::CouponNotFound));
            };
            self.decide_release(user, coupon_id, &campaign, order_id, now).await
        })
        .await?;
        if matches!(answer, Decided::Changed(_)) {
            self.events.notify_one();
        }
        Ok(answer.into_inner())
    }

    /// One attempt at the release decision, in one transaction.
    async fn decide_release(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        campaign: &Campaign,
        order_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Decided<ReleaseResult>> {
        let (mut tx, locked) = self.db.lock_coupon(coupon_id.as_str()).await?;
        let Some(row) = locked.filter(|r| r.user_id == user.as_str()) else {
            return Ok(Decided::Unchanged(ReleaseResult::CouponNotFound));
        };
        let view = || ReleaseResult::Released(Box::new(CouponView::new(&row.to_record(), campaign, None, now)));
        match &row.redemption {
            None => Ok(Decided::Unchanged(view())),
            Some(r) if r.order_id != order_id => Ok(Decided::Unchanged(ReleaseResult::NotRedeemedByOrder)),
            Some(_) => {
                tx.release(&row, order_id, now).await?;
                tx.commit().await?;
                Ok(Decided::Changed(view()))
            }
        }
    }
}

/// A decision's answer, and whether it committed a change (which wakes the
/// event publisher).
enum Decided<T> {
    Changed(T),
    Unchanged(T),
}

impl<T> Decided<T> {
    fn into_inner(self) -> T {
        match self {
            Decided::Changed(t) | Decided::Unchanged(t) => t,
        }
    }
}

/// Attempts at a decision that keeps losing lock conflicts. Each loss is
/// one transaction rolled back; a handful means real contention on a hot
/// range, and the client gets the 503 (retry later) rather than a wait.
const DECISION_ATTEMPTS: u32 = 5;

/// Runs `decide` again while it loses a lock conflict (see
/// `DbError::is_lock_conflict`), with a short random pause (up to 5, 10,
/// 20, 40 ms) so the conflicting transactions do not meet again in step.
async fn retry_lock_conflicts<T, F, Fut>(mut decide: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match decide().await {
            Err(ServiceError::Db(e)) if e.is_lock_conflict() && attempt < DECISION_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "redeem/release lost a lock conflict; running it again");
                let cap_ms = 5u64 << (attempt - 1);
                tokio::time::sleep(Duration::from_millis(rand::random_range(1..=cap_ms))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `now` at the millisecond, the precision of the DATETIME(3) columns.
fn to_millis(now: DateTime<Utc>) -> DateTime<Utc> {
    from_ms(now.timestamp_millis())
}

/// True once the coupon can be redeemed by its start. A coupon valid from
/// its grant (`valid_from <= claimed_at`, one clock: Redis's) is valid for
/// every redeem, which necessarily comes after the claim; an explicit later
/// `valid_from` waits for this instance's clock.
fn validity_started(row: &CouponRow, now: DateTime<Utc>) -> bool {
    row.valid_from <= row.claimed_at || now >= row.valid_from
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(claimed_ms: i64, from_ms_: i64) -> CouponRow {
        CouponRow {
            id: "c".into(),
            campaign_id: "k".into(),
            user_id: "u".into(),
            shard: 0,
            claimed_at: from_ms(claimed_ms),
            valid_from: from_ms(from_ms_),
            valid_until: from_ms(i64::MAX / 2),
            redemption: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn validity_from_the_grant_ignores_this_clock_and_an_explicit_start_does_not() {
        // This instance's clock (1_000) is behind the Redis clock (1_400).
        assert!(validity_started(&row(1_400, 1_400), from_ms(1_000)), "valid from its grant");
        assert!(validity_started(&row(1_400, 900), from_ms(1_000)), "valid before the grant");
        assert!(!validity_started(&row(1_400, 5_000), from_ms(1_000)), "an explicit later start");
        assert!(validity_started(&row(1_400, 5_000), from_ms(5_000)));
    }

    #[test]
    fn now_is_cut_to_the_millisecond() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_999_999).unwrap();
        assert_eq!(to_millis(t), DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap());
    }
}
