//! Campaign rows.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use super::coupons::{CouponRow, coupon_columns, row_of};
use super::{Db, DbError, Result};
use crate::domain::{Campaign, CampaignId, CouponTerms};

/// A campaign archived: its Redis keys are gone, MySQL holds every grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveState {
    pub at: DateTime<Utc>,
    /// Grants Redis held when it was archived (== rows then).
    pub claimed: u64,
}

pub(super) fn from_row(row: &MySqlRow) -> Result<Campaign> {
    let id: String = row.try_get("id")?;
    let buckets: String = row.try_get("shard_buckets")?;
    let terms: String = row.try_get("coupon_terms")?;
    Ok(Campaign {
        id: CampaignId::parse(&id).ok_or_else(|| DbError::Corrupt(format!("campaign id {id:?}")))?,
        name: row.try_get("name")?,
        total_stock: row.try_get("total_stock")?,
        per_user_limit: row.try_get("per_user_limit")?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        closed_at: row.try_get("closed_at")?,
        shard_buckets: serde_json::from_str(&buckets)
            .map_err(|e| DbError::Corrupt(format!("shard_buckets of {id}: {e}")))?,
        coupon: serde_json::from_str::<CouponTerms>(&terms)
            .map_err(|e| DbError::Corrupt(format!("coupon_terms of {id}: {e}")))?,
        created_at: row.try_get("created_at")?,
        tally: Default::default(),
    })
}

macro_rules! columns {
    () => {
        "id, name, total_stock, per_user_limit, starts_at, ends_at, closed_at, shard_buckets, coupon_terms, created_at"
    };
}
pub(super) use columns;

/// The INSERT of a campaign row (alone, or in a transaction with its
/// `Idempotency-Key`: `db::changes`).
pub(super) fn insert_query(c: &Campaign) -> sqlx::query::Query<'static, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    sqlx::query(
        "INSERT INTO campaigns (id, name, total_stock, per_user_limit, starts_at, ends_at, closed_at, \
         shard_buckets, coupon_terms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(c.id.as_str().to_owned())
    .bind(c.name.clone())
    .bind(c.total_stock)
    .bind(c.per_user_limit)
    // NaiveDateTime (UTC), not DateTime<Utc>: see `insert_coupons`.
    .bind(c.starts_at.naive_utc())
    .bind(c.ends_at.naive_utc())
    .bind(c.closed_at.map(|t| t.naive_utc()))
    .bind(serde_json::to_string(&c.shard_buckets).expect("vec serializes"))
    .bind(serde_json::to_string(&c.coupon).expect("terms serialize"))
    .bind(c.created_at.naive_utc())
}

impl Db {
    pub async fn insert_campaign(&self, c: &Campaign) -> Result<()> {
        self.run(insert_query(c).execute(self.pool())).await?;
        Ok(())
    }

    pub async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>> {
        let sql = concat!("SELECT ", columns!(), " FROM campaigns WHERE id = ?");
        let row = self.run(sqlx::query(sql).bind(id.as_str()).fetch_optional(self.pool())).await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Newest first (ids are time-ordered ULIDs), at most `limit`.
    pub async fn list_campaigns(&self, limit: u32) -> Result<Vec<Campaign>> {
        let sql = concat!("SELECT ", columns!(), " FROM campaigns ORDER BY id DESC LIMIT ?");
        let rows = self.run(sqlx::query(sql).bind(limit).fetch_all(self.pool())).await?;
        rows.iter().map(from_row).collect()
    }

    /// Campaigns not archived whose window overlaps `[from, to]` (a coupon
    /// claimed in that time is of one of them), newest first, at most
    /// `limit`. `idx_campaigns_ends_at` (migrations/0008) reads only the
    /// campaigns ending after `from`.
    pub async fn campaigns_live_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Campaign>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM campaigns WHERE ends_at >= ? AND starts_at <= ? AND archived_at IS NULL \
             AND (closed_at IS NULL OR closed_at >= ?) ORDER BY id DESC LIMIT ?"
        );
        let q = sqlx::query(sql).bind(from.naive_utc()).bind(to.naive_utc()).bind(from.naive_utc()).bind(limit);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets `closed_at` once (the first close wins; later closes are no-ops).
    pub async fn close_campaign(&self, id: &CampaignId, at: DateTime<Utc>) -> Result<()> {
        let q = sqlx::query("UPDATE campaigns SET closed_at = ? WHERE id = ? AND closed_at IS NULL")
            .bind(at)
            .bind(id.as_str());
        self.run(q.execute(self.pool())).await?;
        Ok(())
    }

    /// Whether the campaign was archived (its Redis keys deleted; MySQL is
    /// the only copy), and what Redis held then. `None`: not archived, or
    /// no such campaign.
    pub async fn archive_state(&self, id: &CampaignId) -> Result<Option<ArchiveState>> {
        let q = sqlx::query("SELECT archived_at, archived_claimed FROM campaigns WHERE id = ?").bind(id.as_str());
        let row = self.run(q.fetch_optional(self.pool())).await?;
        let Some(row) = row else { return Ok(None) };
        let at: Option<DateTime<Utc>> = row.try_get("archived_at")?;
        let claimed: Option<i64> = row.try_get("archived_claimed")?;
        Ok(at.map(|at| ArchiveState { at, claimed: claimed.unwrap_or(0).max(0) as u64 }))
    }

    /// Marks a campaign archived with the grants Redis held, once: the first
    /// mark wins (a second archiver, or a rerun, changes nothing). Returns
    /// whether this call set it.
    pub async fn mark_archived(&self, id: &CampaignId, at: DateTime<Utc>, claimed: u64) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE campaigns SET archived_at = ?, archived_claimed = ? WHERE id = ? AND archived_at IS NULL",
        )
        .bind(at.naive_utc())
        .bind(claimed as i64)
        .bind(id.as_str());
        Ok(self.run(q.execute(self.pool())).await?.rows_affected() == 1)
    }

    /// Campaigns over by `before` (ended or closed then) and not archived,
    /// plus those archived since `rearchive_since` (a pass that died between
    /// the mark and the key deletion left keys behind: deleting again is a
    /// no-op otherwise). By id after `after`, at most `limit`.
    pub async fn archive_candidates(
        &self,
        before: DateTime<Utc>,
        rearchive_since: DateTime<Utc>,
        after: Option<&CampaignId>,
        limit: u32,
    ) -> Result<Vec<CampaignId>> {
        let q = sqlx::query(
            "SELECT id FROM campaigns WHERE id > ? AND ((archived_at IS NULL \
             AND LEAST(ends_at, COALESCE(closed_at, ends_at)) <= ?) OR archived_at >= ?) ORDER BY id LIMIT ?",
        )
        .bind(after.map_or("", CampaignId::as_str))
        .bind(before.naive_utc())
        .bind(rearchive_since.naive_utc())
        .bind(limit);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                CampaignId::parse(&id).ok_or_else(|| DbError::Corrupt(format!("campaign id {id:?}")))
            })
            .collect()
    }

    /// The coupon `user` was granted with `key` in campaign `campaign`: the
    /// keyed replay of an archived campaign, whose Redis idempotency keys
    /// are gone (the row keeps the key since migration 0003). User ids are
    /// compared exactly again (as `user_coupons` does).
    pub async fn coupon_by_key(&self, campaign: &str, user: &str, key: &str) -> Result<Option<CouponRow>> {
        let q = sqlx::query(concat!(
            "SELECT ",
            coupon_columns!(),
            " FROM coupons WHERE user_id = ? AND campaign_id = ? AND idempotency_key = ? ORDER BY id LIMIT 2"
        ))
        .bind(user)
        .bind(campaign)
        .bind(key);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        let rows: Vec<CouponRow> = rows.iter().map(row_of).collect::<std::result::Result<_, sqlx::Error>>()?;
        Ok(rows.into_iter().find(|r| r.user_id == user && r.idempotency_key.as_deref() == Some(key)))
    }

    /// Coupon rows persisted for a campaign.
    pub async fn count_persisted(&self, id: &CampaignId) -> Result<u64> {
        let q = sqlx::query("SELECT COUNT(*) AS n FROM coupons WHERE campaign_id = ?").bind(id.as_str());
        let row = self.run(q.fetch_one(self.pool())).await?;
        let n: i64 = row.try_get("n")?;
        Ok(n.max(0) as u64)
    }
}
