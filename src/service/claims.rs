//! Claiming a coupon and reading the user's coupons.
//!
//! The grant itself is one Lua script on the user's home shard (see
//! `stock`); this module turns its outcome into what the API promises and
//! builds the Coupon the app sees from the claim record plus the campaign's
//! terms.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{CampaignService, Result, ServiceError};
use crate::db::Db;
use crate::db::coupons::{CouponRow, Redemption, RowStatus, UserCouponsQuery};
use crate::domain::campaign::{AppliesTo, Discount};
use crate::domain::{Campaign, CampaignId, CouponId, CouponRecord, UserId};
use crate::metrics::LogEvery;
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
    /// Also filled by the `sold_out` notices of other instances.
    sold_out: Arc<std::sync::RwLock<std::collections::HashSet<CampaignId>>>,
    /// Claim rate and admission bound, applied behind the fast paths: a
    /// claim answered from memory costs the backends nothing.
    protection: Arc<Protection>,
    /// Throttles the "holdings index not written" warning.
    index_log: Arc<LogEvery>,
}

/// Bound of the sold-out set (cleared when full; it only saves work).
const SOLD_OUT_CAPACITY: usize = 10_000;

impl ClaimService {
    pub fn new(campaigns: CampaignService, stock: StockStore, db: Db) -> Self {
        Self {
            campaigns,
            stock,
            db,
            sold_out: Arc::default(),
            protection: Arc::new(Protection::unlimited()),
            index_log: Arc::new(LogEvery::new()),
        }
    }

    /// The same service behind the instance's limits.
    pub fn with_protection(mut self, protection: Arc<Protection>) -> Self {
        self.protection = protection;
        self
    }

    fn is_sold_out(&self, id: &CampaignId) -> bool {
        self.sold_out.read().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// Remembers that `id` sold out (this instance saw it, or another one
    /// said so: see `stock::broadcast`).
    pub fn mark_sold_out(&self, id: &CampaignId) {
        let mut set = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        if set.len() >= SOLD_OUT_CAPACITY {
            set.clear();
        }
        set.insert(id.clone());
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
        if idempotency_key.is_none() && self.is_sold_out(campaign_id) {
            return Some(ClaimResult::SoldOut);
        }
        // Before the start, after the end, once closed: from the cached
        // terms. After the end only without a key: a keyed retry of a claim
        // granted in time must reach the script, which replays it.
        self.campaigns.cached(campaign_id).and_then(|c| window_answer_for(&c, idempotency_key, now))
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
            return Ok(answer);
        }
        let coupon = CouponId::generate();
        let outcome = self.stock.claim(&campaign, user, &coupon, idempotency_key).await?;
        if matches!(outcome, ClaimOutcome::Granted(_) | ClaimOutcome::Replayed(_)) {
            self.index_holding(user, campaign_id).await;
        }
        Ok(match outcome {
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
        })
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

    /// Adds the campaign to the user's holdings index (see
    /// `stock::holdings`) after a grant, before the 201: one `SADD` on the
    /// key's master, in line, so a coupon answered 201 is found by
    /// `GET /v1/me/coupons` at once. A replay writes it again (idempotent),
    /// which repairs an index write that failed. A failed write does not
    /// turn the grant into an error: the coupon is granted and answered,
    /// and it shows in the listing, `GET /v1/me/coupons/{id}` and the
    /// redeem write-through once persisted (the pipeline's lag, normally
    /// well under a second); only until then is it invisible.
    async fn index_holding(&self, user: &UserId, campaign_id: &CampaignId) {
        if let Err(e) = self.stock.index_held(user, campaign_id).await
            && let Some(skipped) = self.index_log.allow()
        {
            // At most once a second: with one master down this fails for
            // every grant of a user whose index key lives there.
            tracing::warn!(error = %e, campaign = %campaign_id, user = %user, skipped,
                "holdings index not written: the coupon is listed once persisted");
        }
    }

    /// One page of the user's coupons, newest first (by coupon id: ULIDs
    /// are time-ordered). Two sources: the claim records in Redis (a claim
    /// shows the moment it was granted), found through the user's holdings
    /// index (one `SMEMBERS`, then the user's shard of each indexed
    /// campaign: O(the user's campaigns), never a scan of campaigns), and
    /// the user's rows in MySQL, one keyset page (`id < cursor`, filters in
    /// SQL), whose redemption state wins. Rows of campaigns no longer in
    /// Redis (archived, or not indexed) come from MySQL alone.
    ///
    /// The page is the first `limit` of the union: the MySQL page holds
    /// the first `limit + 1` rows, Redis adds what is not persisted yet;
    /// a Redis record persisted but outside the MySQL page gets its
    /// redemption state by primary key. `next_cursor` is set when more
    /// may follow (the last id of this page).
    pub async fn my_coupons(&self, user: &UserId, q: &CouponsQuery<'_>, now: DateTime<Utc>) -> Result<CouponPage> {
        let now = crate::domain::coupon::from_ms(now.timestamp_millis());
        let limit = q.limit.clamp(1, PAGE_MAX) as usize;
        let before = q.before.map(CouponId::as_str);
        let page_query = UserCouponsQuery {
            user_id: user.as_str(),
            campaign_id: q.campaign.map(CampaignId::as_str),
            status: q.status.map(row_status),
            before,
            limit: limit as u32 + 1,
            now,
        };
        let (held, rows) = tokio::join!(self.held_records(user, q.campaign), self.db.user_coupons(&page_query));
        let held: Vec<(CouponRecord, Arc<Campaign>)> =
            held?.into_iter().filter(|(r, _)| before.is_none_or(|b| r.id.as_str() < b)).collect();
        let rows = rows?;
        // A full MySQL page: nothing is known below its last row.
        let floor = (rows.len() > limit).then(|| rows.iter().map(|r| r.id.clone()).min()).flatten();
        let mut rows: HashMap<String, CouponRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        let outside: Vec<&str> = held.iter().map(|(r, _)| r.id.as_str()).filter(|id| !rows.contains_key(*id)).collect();
        let mut outside: HashMap<String, CouponRow> = self
            .db
            .coupons_by_id(&outside)
            .await?
            .into_iter()
            .filter(|r| r.user_id == user.as_str())
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut pool: BTreeMap<String, CouponView> = BTreeMap::new();
        for (r, c) in &held {
            let row = rows.remove(&r.id).or_else(|| outside.remove(&r.id));
            pool.insert(r.id.clone(), CouponView::new(r, c, row.and_then(|row| row.redemption), now));
        }
        // Rows Redis does not hold: their campaigns' terms (cached), read
        // together.
        let mut terms: HashMap<String, Arc<Campaign>> =
            held.iter().map(|(_, c)| (c.id.as_str().to_owned(), c.clone())).collect();
        let missing: std::collections::BTreeSet<CampaignId> = rows
            .values()
            .filter(|r| !terms.contains_key(&r.campaign_id))
            .filter_map(|r| CampaignId::parse(&r.campaign_id))
            .collect();
        let found = futures_util::future::try_join_all(missing.iter().map(|id| self.campaigns.find(id))).await?;
        terms.extend(found.into_iter().flatten().map(|c| (c.id.as_str().to_owned(), c)));
        for row in rows.into_values() {
            let Some(c) = terms.get(&row.campaign_id) else {
                tracing::error!(coupon = %row.id, campaign = %row.campaign_id, "coupon of an unknown campaign");
                continue;
            };
            pool.insert(row.id.clone(), CouponView::new(&row.to_record(), c, row.redemption.clone(), now));
        }
        pool.retain(|id, v| floor.as_ref().is_none_or(|f| id >= f) && q.status.is_none_or(|s| v.status == s));
        let more = pool.len() > limit || floor.is_some();
        let coupons: Vec<CouponView> = pool.into_values().rev().take(limit).collect();
        let next_cursor = more.then(|| coupons.last().map(|c| c.id.clone()).or(floor)).flatten();
        Ok(CouponPage { coupons, next_cursor })
    }

    /// The user's claim records in Redis, with their campaigns: of one
    /// campaign (its shard, indexed or not), or of every campaign in the
    /// user's holdings index. Indexed campaigns where the user holds
    /// nothing in Redis (their keys are gone: archived; or a failover lost
    /// the grant, which MySQL then has if it was persisted) are dropped
    /// from the index; campaigns whose shards no longer exist are simply
    /// empty.
    async fn held_records(
        &self,
        user: &UserId,
        campaign: Option<&CampaignId>,
    ) -> Result<Vec<(CouponRecord, Arc<Campaign>)>> {
        let ids = match campaign {
            Some(id) => vec![id.clone()],
            None => self.stock.held_campaigns(user).await?,
        };
        let terms = futures_util::future::try_join_all(ids.iter().map(|id| self.campaigns.find(id))).await?;
        let mut gone: Vec<CampaignId> = Vec::new();
        let campaigns: Vec<Arc<Campaign>> = ids
            .into_iter()
            .zip(terms)
            .filter_map(|(id, c)| {
                if c.is_none() {
                    gone.push(id);
                }
                c
            })
            .collect();
        let reads = campaigns.iter().map(|c| self.stock.user_coupons(c, user));
        let per_campaign = futures_util::future::try_join_all(reads).await?;
        let mut out = Vec::new();
        for (c, records) in campaigns.into_iter().zip(per_campaign) {
            if records.is_empty() {
                gone.push(c.id.clone());
            }
            out.extend(records.into_iter().map(|r| (r, c.clone())));
        }
        if campaign.is_none()
            && let Err(e) = self.stock.forget_held(user, &gone).await
        {
            tracing::warn!(error = %e, user = %user, "could not drop stale holdings index entries");
        }
        Ok(out)
    }

    /// The claim record of one of the user's coupons as Redis holds it (a
    /// claim the pipeline may not have persisted yet), with its campaign:
    /// looked up in the campaigns of the user's holdings index.
    pub async fn find_record(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
    ) -> Result<Option<(CouponRecord, Arc<Campaign>)>> {
        Ok(self.held_records(user, None).await?.into_iter().find(|(r, _)| r.id == coupon_id.as_str()))
    }

    /// One of the user's coupons: its row in MySQL (by primary key) if it
    /// was persisted, else its claim record in Redis (a coupon id does not
    /// say its campaign: the holdings index does).
    pub async fn my_coupon(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
        now: DateTime<Utc>,
    ) -> Result<Option<CouponView>> {
        if let Some(row) = self.db.coupon(coupon_id.as_str()).await? {
            if row.user_id != user.as_str() {
                return Ok(None);
            }
            let Some(c) = CampaignId::parse(&row.campaign_id) else { return Ok(None) };
            let Some(c) = self.campaigns.find(&c).await? else { return Ok(None) };
            return Ok(Some(CouponView::new(&row.to_record(), &c, row.redemption.clone(), now)));
        }
        Ok(self.find_record(user, coupon_id).await?.map(|(r, c)| CouponView::new(&r, &c, None, now)))
    }
}

/// Default page size of `GET /v1/me/coupons`.
pub const PAGE_DEFAULT: u32 = 100;
/// Largest page size of `GET /v1/me/coupons`.
pub const PAGE_MAX: u32 = 1000;

/// Which of the user's coupons a page lists.
#[derive(Debug, Clone, Default)]
pub struct CouponsQuery<'a> {
    pub campaign: Option<&'a CampaignId>,
    pub status: Option<CouponStatus>,
    /// The cursor: only coupons with a smaller id (older).
    pub before: Option<&'a CouponId>,
    /// Page size, 1..=[`PAGE_MAX`].
    pub limit: u32,
}

/// One page of the user's coupons; `next_cursor` when more may follow.
#[derive(Debug, Clone)]
pub struct CouponPage {
    pub coupons: Vec<CouponView>,
    pub next_cursor: Option<String>,
}

fn row_status(s: CouponStatus) -> RowStatus {
    match s {
        CouponStatus::Claimed => RowStatus::Claimed,
        CouponStatus::Redeemed => RowStatus::Redeemed,
        CouponStatus::Expired => RowStatus::Expired,
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
