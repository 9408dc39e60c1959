//! Campaign rows.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use super::{Db, DbError, Result};
use crate::domain::{Campaign, CampaignId, CouponTerms};

fn from_row(row: &MySqlRow) -> Result<Campaign> {
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
    })
}

macro_rules! columns {
    () => {
        "id, name, total_stock, per_user_limit, starts_at, ends_at, closed_at, shard_buckets, coupon_terms, created_at"
    };
}

impl Db {
    pub async fn insert_campaign(&self, c: &Campaign) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO campaigns (id, name, total_stock, per_user_limit, starts_at, ends_at, closed_at, \
             shard_buckets, coupon_terms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.id.as_str())
        .bind(&c.name)
        .bind(c.total_stock)
        .bind(c.per_user_limit)
        // NaiveDateTime (UTC), not DateTime<Utc>: see `insert_coupons`.
        .bind(c.starts_at.naive_utc())
        .bind(c.ends_at.naive_utc())
        .bind(c.closed_at.map(|t| t.naive_utc()))
        .bind(serde_json::to_string(&c.shard_buckets).expect("vec serializes"))
        .bind(serde_json::to_string(&c.coupon).expect("terms serialize"))
        .bind(c.created_at.naive_utc());
        self.run(q.execute(self.pool())).await?;
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

    /// Sets `closed_at` once (the first close wins; later closes are no-ops).
    pub async fn close_campaign(&self, id: &CampaignId, at: DateTime<Utc>) -> Result<()> {
        let q = sqlx::query("UPDATE campaigns SET closed_at = ? WHERE id = ? AND closed_at IS NULL")
            .bind(at)
            .bind(id.as_str());
        self.run(q.execute(self.pool())).await?;
        Ok(())
    }

    /// Coupon rows persisted for a campaign.
    pub async fn count_persisted(&self, id: &CampaignId) -> Result<u64> {
        let q = sqlx::query("SELECT COUNT(*) AS n FROM coupons WHERE campaign_id = ?").bind(id.as_str());
        let row = self.run(q.fetch_one(self.pool())).await?;
        let n: i64 = row.try_get("n")?;
        Ok(n.max(0) as u64)
    }
}
