//! Claiming a coupon and reading the user's coupons.
//!
//! The grant itself is one Lua script on the user's home shard (see
//! `stock`); this module turns its outcome into what the API promises and
//! builds the Coupon the app sees from the claim record plus the campaign's
//! terms.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;

use super::{CampaignService, Result, ServiceError};
use crate::db::Db;
use crate::db::coupons::{CouponRow, Redemption, RowStatus, UserCouponsQuery};
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

    /// One page of the user's coupons, newest first (by coupon id: ULIDs
    /// are time-ordered), from two sources merged by coupon id:
    ///
    /// - MySQL: one keyset page of the user's rows (`id < cursor`, filters
    ///   in SQL, `limit + 1` rows), whose redemption state wins;
    /// - Redis: the user's holdings index (`stock::holdings`, written by
    ///   the relay: a grant is in it once relayed), i.e. the coupons not
    ///   persisted yet. With `campaign_id`, that campaign's home shard
    ///   instead (it holds every grant the moment it is made).
    ///
    /// Neither is a scan of campaigns: O(the user's coupons). Index entries
    /// are taken newest first in chunks; a persisted one is answered from
    /// its row (by primary key, no Redis read), the others from their claim
    /// records on their home shards (one `HMGET` per campaign). Entries
    /// with neither row nor record are stale and dropped from the index.
    /// When the MySQL page is full, nothing below its last row is answered
    /// in this page, so a page never skips a row; `next_cursor` (the last
    /// id of the page) is set when more may follow.
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
        let (candidates, rows) = tokio::join!(self.candidates(user, q.campaign), self.db.user_coupons(&page_query));
        let rows = rows?;
        // A full MySQL page: nothing is known below its last row.
        let floor = (rows.len() > limit).then(|| rows.iter().map(|r| r.id.clone()).min()).flatten();
        let in_page: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut candidates: Vec<Candidate> = candidates?
            .into_iter()
            .filter(|c| before.is_none_or(|b| c.id.as_str() < b))
            .filter(|c| floor.as_deref().is_none_or(|f| c.id.as_str() > f) && !in_page.contains(&c.id))
            .collect();
        candidates.sort_by(|a, b| b.id.cmp(&a.id));

        let mut terms: HashMap<String, Arc<Campaign>> = HashMap::new();
        let mut pool: BTreeMap<String, CouponView> = BTreeMap::new();
        self.load_terms(rows.iter().map(|r| r.campaign_id.as_str()), &mut terms).await?;
        for row in rows {
            if let Some(v) = row_view(&row, &terms, now) {
                pool.insert(row.id.clone(), v);
            }
        }
        let wanted = |v: &CouponView| q.status.is_none_or(|s| v.status == s);
        let mut found = 0usize;
        let mut stale: Vec<String> = Vec::new();
        let mut rest = candidates.into_iter().peekable();
        let mut unread = false;
        while rest.peek().is_some() {
            if found >= limit {
                unread = true;
                break;
            }
            let chunk: Vec<Candidate> = rest.by_ref().take(limit.max(CHUNK_MIN)).collect();
            for (id, v) in self.resolve(user, chunk, &mut terms, &mut stale, now).await? {
                found += usize::from(wanted(&v));
                pool.insert(id, v);
            }
        }
        if !stale.is_empty() {
            let ids: Vec<&str> = stale.iter().map(String::as_str).collect();
            if let Err(e) = self.stock.forget_held(user, &ids).await {
                tracing::warn!(error = %e, user = %user, "could not drop stale holdings index entries");
            }
        }
        pool.retain(|_, v| wanted(v));
        let more = pool.len() > limit || floor.is_some() || unread;
        let coupons: Vec<CouponView> = pool.into_values().rev().take(limit).collect();
        let next_cursor = more.then(|| coupons.last().map(|c| c.id.clone()).or(floor)).flatten();
        Ok(CouponPage { coupons, next_cursor })
    }

    /// The coupons Redis may know of that MySQL may not: the user's index
    /// entries, or with a campaign the records on its home shard (indexed
    /// or not: a grant shows there the moment it is made).
    async fn candidates(&self, user: &UserId, campaign: Option<&CampaignId>) -> Result<Vec<Candidate>> {
        let Some(id) = campaign else {
            let held = self.stock.held(user).await?;
            return Ok(held.into_iter().map(|(id, campaign)| Candidate { id, campaign, record: None }).collect());
        };
        let Some(c) = self.campaigns.find(id).await? else { return Ok(Vec::new()) };
        let records = self.stock.user_coupons(&c, user).await?;
        Ok(records
            .into_iter()
            .map(|r| Candidate { id: r.id.clone(), campaign: c.id.clone(), record: Some(r) })
            .collect())
    }

    /// Views of `chunk`: from its rows where persisted (one `IN` query),
    /// else from the claim records (read per campaign where not in hand).
    /// Index entries with neither go to `stale`.
    async fn resolve(
        &self,
        user: &UserId,
        chunk: Vec<Candidate>,
        terms: &mut HashMap<String, Arc<Campaign>>,
        stale: &mut Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, CouponView)>> {
        let ids: Vec<&str> = chunk.iter().map(|c| c.id.as_str()).collect();
        let rows: HashMap<String, CouponRow> = self
            .db
            .coupons_by_id(&ids)
            .await?
            .into_iter()
            .filter(|r| r.user_id == user.as_str())
            .map(|r| (r.id.clone(), r))
            .collect();
        let campaigns = chunk.iter().map(|c| c.campaign.as_str()).chain(rows.values().map(|r| r.campaign_id.as_str()));
        self.load_terms(campaigns, terms).await?;
        // Records to read: per campaign, the ids without a row or record.
        let mut to_read: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for c in chunk.iter().filter(|c| c.record.is_none() && !rows.contains_key(&c.id)) {
            if terms.contains_key(c.campaign.as_str()) {
                to_read.entry(c.campaign.as_str()).or_default().push(c.id.as_str());
            }
        }
        let reads = to_read.iter().map(|(c, ids)| self.stock.user_records(&terms[*c], user, ids));
        let mut records: HashMap<String, CouponRecord> =
            try_join_all(reads).await?.into_iter().flatten().map(|r| (r.id.clone(), r)).collect();
        let mut out = Vec::new();
        for c in chunk {
            let view = match (rows.get(&c.id), c.record.or_else(|| records.remove(&c.id))) {
                (Some(row), _) => row_view(row, terms, now),
                (None, Some(r)) => terms.get(c.campaign.as_str()).map(|t| CouponView::new(&r, t, None, now)),
                (None, None) => None,
            };
            match view {
                Some(v) => out.push((c.id, v)),
                None => stale.push(c.id),
            }
        }
        Ok(out)
    }

    /// Adds the terms of `ids` not in `terms` yet (instance cache, read
    /// together). Unknown campaigns are left out.
    async fn load_terms<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        terms: &mut HashMap<String, Arc<Campaign>>,
    ) -> Result<()> {
        let missing: BTreeSet<CampaignId> =
            ids.filter(|id| !terms.contains_key(*id)).filter_map(CampaignId::parse).collect();
        let found = try_join_all(missing.iter().map(|id| self.campaigns.find(id))).await?;
        terms.extend(found.into_iter().flatten().map(|c| (c.id.as_str().to_owned(), c)));
        Ok(())
    }

    /// The claim record of one of the user's coupons as Redis holds it (a
    /// claim the pipeline may not have persisted yet), with its campaign:
    /// the campaign the user's holdings index names (one `HGET`, then the
    /// record on the home shard). Not indexed (not relayed yet: the
    /// moments after its 201; or the index write failed): the campaigns
    /// that were live when the coupon was claimed (its ULID says when, to
    /// [`LIVE_MARGIN`]; at most [`LIVE_MAX`], newest first), one `HMGET`
    /// each. Only a miss of both MySQL and the index pays that.
    pub async fn find_record(
        &self,
        user: &UserId,
        coupon_id: &CouponId,
    ) -> Result<Option<(CouponRecord, Arc<Campaign>)>> {
        let id = coupon_id.as_str();
        if let Some(c) = self.stock.held_campaign(user, id).await?
            && let Some(c) = self.campaigns.find(&c).await?
            && let Some(r) = self.stock.user_records(&c, user, &[id]).await?.pop()
        {
            return Ok(Some((r, c)));
        }
        let Ok(ulid) = ulid::Ulid::from_string(id) else { return Ok(None) };
        let at = crate::domain::coupon::from_ms(ulid.timestamp_ms() as i64);
        let margin = chrono::Duration::from_std(LIVE_MARGIN).expect("a minute fits");
        let live = self.db.campaigns_live_between(at - margin, at + margin, LIVE_MAX).await?;
        let reads = live.iter().map(|c| self.stock.user_records(c, user, std::slice::from_ref(&id)));
        let found = try_join_all(reads).await?;
        Ok(live.into_iter().zip(found).find_map(|(c, mut r)| r.pop().map(|r| (r, Arc::new(c)))))
    }

    /// One of the user's coupons: its row in MySQL (by primary key) if it
    /// was persisted, else its claim record in Redis ([`Self::find_record`]).
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

/// A coupon Redis may hold: an index entry (`record` None until read) or
/// a record read from a home shard.
struct Candidate {
    id: String,
    campaign: CampaignId,
    record: Option<CouponRecord>,
}

/// The view of a row, with its campaign's terms (None: unknown campaign,
/// logged).
fn row_view(row: &CouponRow, terms: &HashMap<String, Arc<Campaign>>, now: DateTime<Utc>) -> Option<CouponView> {
    let Some(c) = terms.get(&row.campaign_id) else {
        tracing::error!(coupon = %row.id, campaign = %row.campaign_id, "coupon of an unknown campaign");
        return None;
    };
    Some(CouponView::new(&row.to_record(), c, row.redemption.clone(), now))
}

/// Index entries resolved per step of a listing, at least (a page of one
/// still reads a useful chunk).
const CHUNK_MIN: usize = 50;
/// How far around a coupon id's time a campaign counts as live when it was
/// claimed (the id is stamped by the instance's clock, the window checked
/// on Redis's).
pub const LIVE_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);
/// Campaigns asked at most when a coupon is found neither in MySQL nor in
/// the index.
pub const LIVE_MAX: u32 = 200;

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
