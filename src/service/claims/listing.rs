//! The user's coupons: one page of `GET /v1/me/coupons` and one coupon by
//! id, from MySQL (persisted) and Redis (the holdings index and home shards,
//! for what is not persisted yet). Methods of [`ClaimService`], which holds
//! the stores; apart from claiming because nothing here grants or changes a
//! coupon.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;

use super::{ClaimService, CouponStatus, CouponView};
use crate::db::coupons::{CouponRow, RowStatus, UserCouponsQuery};
use crate::domain::{Campaign, CampaignId, CouponId, CouponRecord, UserId};
use crate::service::Result;

impl ClaimService {
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
