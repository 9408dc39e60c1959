//! Claiming a coupon and reading the user's coupons.
//!
//! The grant itself is one Lua script on the user's home shard (see
//! `stock`); this module turns its outcome into what the API promises and
//! builds the Coupon the app sees from the claim record plus the campaign's
//! terms.

mod listing;

pub use listing::{CouponPage, CouponsQuery, PAGE_DEFAULT, PAGE_MAX};

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{CampaignService, Result, ServiceError};
use crate::db::Db;
use crate::db::coupons::Redemption;
use crate::domain::campaign::{AppliesTo, Discount};
use crate::domain::{Campaign, CampaignId, CouponId, CouponRecord, UserId};
use crate::metrics::{ClaimLabel, ClaimTally};
use crate::protect::Protection;
use crate::stock::broadcast::Notice;
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
    /// The order it is redeemed on, if it is.
    pub redemption: Option<Redemption>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CouponStatus {
    Claimed,
    Redeemed,
    Expired,
}

impl CouponView {
    /// A coupon from its claim record and its redemption state (the
    /// database's; none for a claim not yet persisted). Redeemed wins over
    /// expired: a coupon redeemed in time stays redeemed.
    pub fn new(record: &CouponRecord, campaign: &Campaign, redemption: Option<Redemption>, now: DateTime<Utc>) -> Self {
        let valid_until = record.valid_until();
        Self {
            id: record.id.clone(),
            campaign_id: record.campaign_id.clone(),
            user_id: record.user_id.clone(),
            status: match (&redemption, now >= valid_until) {
                (Some(_), _) => CouponStatus::Redeemed,
                (None, true) => CouponStatus::Expired,
                (None, false) => CouponStatus::Claimed,
            },
            claimed_at: record.claimed_at(),
            valid_from: record.valid_from(),
            valid_until,
            discount: campaign.coupon.discount.clone(),
            min_spend_cents: campaign.coupon.min_spend_cents,
            applies_to: campaign.coupon.applies_to.clone(),
            redemption,
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

impl ClaimResult {
    /// The `outcome` label of `flashgrab_claims_total` for this answer (the
    /// HTTP layer labels the same answer the same way).
    pub fn label(&self) -> ClaimLabel {
        match self {
            ClaimResult::Granted(_) => ClaimLabel::Granted,
            ClaimResult::Replayed(_) => ClaimLabel::Replayed,
            ClaimResult::AlreadyClaimed { .. } => ClaimLabel::AlreadyClaimed,
            ClaimResult::LimitReached { .. } => ClaimLabel::LimitReached,
            ClaimResult::NotStarted { .. } => ClaimLabel::NotStarted,
            ClaimResult::Ended => ClaimLabel::Ended,
            ClaimResult::SoldOut => ClaimLabel::SoldOut,
            ClaimResult::Busy => ClaimLabel::Unavailable,
            ClaimResult::CampaignNotFound => ClaimLabel::NotFound,
        }
    }
}

#[derive(Clone)]
pub struct ClaimService {
    campaigns: CampaignService,
    stock: StockStore,
    db: Db,
    /// Campaigns this instance has seen sold out, with their claim
    /// counters (so the answers from memory are counted per campaign with
    /// no second lookup). Stock never comes back once every shard is empty
    /// and nothing is in flight (transfers conserve units), except by a
    /// top-up (`PATCH`), whose `changed` notice takes the campaign out of
    /// here; so later claims are answered from memory: after a sell-out
    /// most of a drop's traffic is 410s, and each would otherwise cost a
    /// script and two scans of every shard. Also filled by the `sold_out`
    /// notices of other instances.
    sold_out: Arc<std::sync::RwLock<SoldOut>>,
    /// Claim rate and admission bound, applied behind the fast paths: a
    /// claim answered from memory costs the backends nothing.
    protection: Arc<Protection>,
}

/// Campaigns known sold out, and their claim counters (if cached here).
type SoldOut = std::collections::HashMap<CampaignId, Option<Arc<ClaimTally>>>;

/// Bound of the sold-out set (cleared when full; it only saves work).
const SOLD_OUT_CAPACITY: usize = 10_000;

impl ClaimService {
    pub fn new(campaigns: CampaignService, stock: StockStore, db: Db) -> Self {
        Self { campaigns, stock, db, sold_out: Arc::default(), protection: Arc::new(Protection::unlimited()) }
    }

    /// The same service behind the instance's limits.
    pub fn with_protection(mut self, protection: Arc<Protection>) -> Self {
        self.protection = protection;
        self
    }

    fn is_sold_out(&self, id: &CampaignId) -> bool {
        self.sold_out.read().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    /// A top-up brought stock back (or may have: see `Notice::Changed`).
    pub fn forget_sold_out(&self, id: &CampaignId) {
        self.sold_out.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Forgets every sell-out (a `changed` notice may have been missed;
    /// the next claims find out again with one script call).
    pub fn forget_sold_outs(&self) {
        self.sold_out.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Remembers that `id` sold out (this instance saw it, or another one
    /// said so: see `stock::broadcast`).
    pub fn mark_sold_out(&self, id: &CampaignId) {
        let tally = self.campaigns.cached(id).map(|c| c.tally.clone());
        let mut set = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        if set.len() >= SOLD_OUT_CAPACITY {
            set.clear();
        }
        set.insert(id.clone(), tally);
    }

    pub async fn claim(
        &self,
        campaign_id: &CampaignId,
        user: &UserId,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ClaimResult> {
        if let Some(answer) = self.answer_from_memory(campaign_id, idempotency_key, now) {
            return Ok(answer);
        }
        // Boxed: the backend part is a large state machine; kept out of line,
        // the fast paths above do not build and move it on every request.
        Box::pin(self.claim_from_redis(campaign_id, user, idempotency_key, now)).await
    }

    /// The fast paths: what can be answered without any I/O.
    fn answer_from_memory(
        &self,
        campaign_id: &CampaignId,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<ClaimResult> {
        // A retry with an Idempotency-Key must still find its coupon, so only
        // key-less claims take the shortcut.
        if idempotency_key.is_none()
            && let Some(tally) = self.sold_out.read().unwrap_or_else(|e| e.into_inner()).get(campaign_id)
        {
            if let Some(t) = tally {
                t.count(ClaimLabel::SoldOut);
            }
            return Some(ClaimResult::SoldOut);
        }
        // Before the start, after the end, once closed: from the cached
        // terms. After the end only without a key: a keyed retry of a claim
        // granted in time must reach the script, which replays it.
        let c = self.campaigns.cached(campaign_id)?;
        let answer = window_answer_for(&c, idempotency_key, now)?;
        c.tally.count(answer.label());
        Some(answer)
    }

    async fn claim_from_redis(
        &self,
        campaign_id: &CampaignId,
        user: &UserId,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ClaimResult> {
        // Only now does the claim need the backends: the user's allowance
        // (see the `User` extractor), the instance's claim rate, a slot.
        self.protection.limits.check_user(user).map_err(ServiceError::RateLimited)?;
        self.protection.limits.check_claim().map_err(ServiceError::RateLimited)?;
        let _permit = self.protection.admission.enter()?;
        let Some(campaign) = self.campaigns.find(campaign_id).await? else {
            return Ok(ClaimResult::CampaignNotFound);
        };
        if let Some(answer) = window_answer_for(&campaign, idempotency_key, now) {
            campaign.tally.count(answer.label());
            return Ok(answer);
        }
        let coupon = CouponId::generate();
        let outcome = self.stock.claim(&campaign, user, &coupon, idempotency_key).await?;
        let result = match outcome {
            ClaimOutcome::Granted(r) => ClaimResult::Granted(CouponView::new(&r, &campaign, None, now)),
            ClaimOutcome::Replayed(r) => {
                let redemption = self.redemption_of(&r.id).await;
                ClaimResult::Replayed(CouponView::new(&r, &campaign, redemption, now))
            }
            ClaimOutcome::Holding(ids) if campaign.per_user_limit == 1 => {
                ClaimResult::AlreadyClaimed { coupon_id: ids.into_iter().next().unwrap_or_default() }
            }
            ClaimOutcome::Holding(coupon_ids) => ClaimResult::LimitReached { coupon_ids },
            ClaimOutcome::NotStarted { starts_ms } => {
                ClaimResult::NotStarted { starts_at: crate::domain::coupon::from_ms(starts_ms) }
            }
            ClaimOutcome::Ended => {
                // If the terms here said open, the campaign was closed and
                // this instance missed the notice (or its clock is behind):
                // remember it, so the next claims are answered from memory.
                // (A keyed claim past the end gets here with terms that
                // already say ended: nothing to learn.)
                if window_answer(&campaign, now).is_none() {
                    self.campaigns.apply_closed(campaign_id, now);
                }
                ClaimResult::Ended
            }
            ClaimOutcome::SoldOut => {
                if !self.is_sold_out(campaign_id) {
                    self.mark_sold_out(campaign_id);
                    // Every instance answers from memory from now on; one
                    // that misses the notice finds out on its next claim.
                    if let Err(e) = Box::pin(self.stock.publish(&Notice::SoldOut(campaign_id.clone()))).await {
                        tracing::warn!(error = %e, campaign = %campaign_id, "could not broadcast the sell-out");
                    }
                }
                ClaimResult::SoldOut
            }
            ClaimOutcome::Contended => ClaimResult::Busy,
            ClaimOutcome::Missing => {
                Box::pin(self.answer_without_shards(&campaign, user, idempotency_key, now)).await?
            }
        };
        campaign.tally.count(result.label());
        Ok(result)
    }

    /// A claim that found no shard in Redis. An archived campaign (see
    /// `service::archive`) has none by design: it is over, so `ended`,
    /// except a keyed replay, which gets its coupon from its row (the row
    /// keeps the key). Otherwise the shards are missing for real: 404, as
    /// for an unknown campaign.
    async fn answer_without_shards(
        &self,
        campaign: &Campaign,
        user: &UserId,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ClaimResult> {
        if self.db.archive_state(&campaign.id).await?.is_none() {
            tracing::error!(campaign = %campaign.id, "campaign row exists but its shards are missing in redis");
            return Ok(ClaimResult::CampaignNotFound);
        }
        let Some(key) = idempotency_key else { return Ok(ClaimResult::Ended) };
        Ok(match self.db.coupon_by_key(campaign.id.as_str(), user.as_str(), key).await? {
            Some(row) => {
                ClaimResult::Replayed(CouponView::new(&row.to_record(), campaign, row.redemption.clone(), now))
            }
            None => ClaimResult::Ended,
        })
    }

    /// The redemption of a replayed coupon. Redis's claim record knows
    /// nothing of redemptions (MySQL decides them), so a replay of a coupon
    /// redeemed since would say "claimed": only replays (a client's retry,
    /// rare) pay this primary-key read. If MySQL cannot answer, the replay
    /// is answered from the record alone: a claim never waits on MySQL.
    async fn redemption_of(&self, coupon_id: &str) -> Option<Redemption> {
        match self.db.coupon(coupon_id).await {
            Ok(row) => row.and_then(|r| r.redemption),
            Err(e) => {
                tracing::warn!(error = %e, coupon = coupon_id, "replay: no redemption state from mysql, answering from the claim record");
                None
            }
        }
    }
}

/// The answer the campaign's window gives without Redis: not started yet,
/// or ended (past `ends_at`, or closed). `None` while it is open.
///
/// Uses this instance's clock where the script uses Redis's: with NTP the
/// two agree within milliseconds. An instance whose clock runs behind
/// answers `not_started` for that long after the start; one whose clock
/// runs ahead sends early claims to the script, which refuses them.
pub fn window_answer(c: &Campaign, now: DateTime<Utc>) -> Option<ClaimResult> {
    use crate::domain::CampaignStatus;
    match c.status_at(now, false) {
        CampaignStatus::Scheduled => Some(ClaimResult::NotStarted { starts_at: c.starts_at }),
        CampaignStatus::Ended => Some(ClaimResult::Ended),
        CampaignStatus::Live | CampaignStatus::SoldOut => None,
    }
}

/// [`window_answer`] for a claim with or without an `Idempotency-Key`: a
/// keyed claim after the end (or the close) is not answered `ended` here,
/// it goes to the script, which replays the coupon granted for the key in
/// time (and answers `ended` otherwise). Before the start nothing can have
/// been granted, so that answer holds with a key too.
pub fn window_answer_for(c: &Campaign, idempotency_key: Option<&str>, now: DateTime<Utc>) -> Option<ClaimResult> {
    match window_answer(c, now) {
        Some(ClaimResult::Ended) if idempotency_key.is_some() => None,
        other => other,
    }
}
