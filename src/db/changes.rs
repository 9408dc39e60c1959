//! Rows behind the console's API additions: the `Idempotency-Key` of
//! campaign creation, the top-up journal, changes of name and end, and the
//! cursor pages of the campaign list (migration 0007).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Db, DbError, Result};
use crate::domain::{Campaign, CampaignId};

/// What a stored `Idempotency-Key` of `POST /v1/campaigns` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub body_sha256: String,
    pub campaign_id: CampaignId,
}

/// A top-up journaled and not applied yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTopUp {
    pub id: String,
    pub campaign_id: CampaignId,
    pub units: u64,
}

fn campaign_id(raw: &str) -> Result<CampaignId> {
    CampaignId::parse(raw).ok_or_else(|| DbError::Corrupt(format!("campaign id {raw:?}")))
}

/// True for MySQL's duplicate-key error (1062).
fn is_duplicate(e: &DbError) -> bool {
    matches!(e, DbError::Sql(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23000"))
}

impl Db {
    pub async fn create_request(&self, key: &str) -> Result<Option<CreateRequest>> {
        let q =
            sqlx::query("SELECT body_sha256, campaign_id FROM campaign_requests WHERE idempotency_key = ?").bind(key);
        let Some(row) = self.run(q.fetch_optional(self.pool())).await? else { return Ok(None) };
        let id: String = row.try_get("campaign_id")?;
        Ok(Some(CreateRequest { body_sha256: row.try_get("body_sha256")?, campaign_id: campaign_id(&id)? }))
    }

    /// Inserts the campaign row and, with a key, the key's row, in one
    /// transaction. `Ok(false)`: the key was taken meanwhile by a
    /// concurrent request (nothing is written; its campaign wins).
    pub async fn insert_campaign_keyed(&self, c: &Campaign, key: &str, body_sha256: &str) -> Result<bool> {
        let mut tx = self.run(self.pool().begin()).await?;
        let keyed = sqlx::query(
            "INSERT INTO campaign_requests (idempotency_key, body_sha256, campaign_id, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(key)
        .bind(body_sha256)
        .bind(c.id.as_str())
        .bind(c.created_at.naive_utc());
        match self.run(keyed.execute(&mut *tx)).await {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.run(super::campaigns::insert_query(c).execute(&mut *tx)).await?;
        self.run(tx.commit()).await?;
        Ok(true)
    }

    /// Newest first, ids below `before` (the cursor: the last id of the
    /// previous page), at most `limit`.
    pub async fn list_campaigns_before(&self, before: Option<&CampaignId>, limit: u32) -> Result<Vec<Campaign>> {
        let sql =
            concat!("SELECT ", super::campaigns::columns!(), " FROM campaigns WHERE id < ? ORDER BY id DESC LIMIT ?");
        // Every ULID sorts below "~".
        let q = sqlx::query(sql).bind(before.map_or("~", CampaignId::as_str)).bind(limit);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter().map(super::campaigns::from_row).collect()
    }

    pub async fn rename_campaign(&self, id: &CampaignId, name: &str) -> Result<()> {
        let q = sqlx::query("UPDATE campaigns SET name = ? WHERE id = ?").bind(name).bind(id.as_str());
        self.run(q.execute(self.pool())).await?;
        Ok(())
    }

    /// Moves the end later (never earlier: `GREATEST`, so two racing
    /// changes keep the later one).
    pub async fn extend_campaign(&self, id: &CampaignId, ends_at: DateTime<Utc>) -> Result<()> {
        let q = sqlx::query("UPDATE campaigns SET ends_at = GREATEST(ends_at, ?) WHERE id = ?")
            .bind(ends_at.naive_utc())
            .bind(id.as_str());
        self.run(q.execute(self.pool())).await?;
        Ok(())
    }

    /// Journals a top-up to `target` units in total: the units still
    /// missing once the applied total and the pending top-ups are counted,
    /// decided under a lock of the campaign row (two identical requests at
    /// once make one top-up, not two). `None`: nothing to add.
    pub async fn journal_top_up(
        &self,
        id: &CampaignId,
        target: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<PendingTopUp>> {
        let mut tx = self.run(self.pool().begin()).await?;
        let q = sqlx::query("SELECT total_stock FROM campaigns WHERE id = ? FOR UPDATE").bind(id.as_str());
        let Some(row) = self.run(q.fetch_optional(&mut *tx)).await? else { return Ok(None) };
        let total: u64 = row.try_get("total_stock")?;
        let q = sqlx::query(
            "SELECT CAST(COALESCE(SUM(units), 0) AS SIGNED) AS n FROM campaign_topups \
             WHERE campaign_id = ? AND applied_at IS NULL",
        )
        .bind(id.as_str());
        let pending: i64 = self.run(q.fetch_one(&mut *tx)).await?.try_get("n")?;
        let have = total + pending.max(0) as u64;
        if target <= have {
            return Ok(None);
        }
        let topup = PendingTopUp { id: ulid::Ulid::new().to_string(), campaign_id: id.clone(), units: target - have };
        let q = sqlx::query("INSERT INTO campaign_topups (id, campaign_id, units, created_at) VALUES (?, ?, ?, ?)")
            .bind(&topup.id)
            .bind(id.as_str())
            .bind(topup.units as i64)
            .bind(now.naive_utc());
        self.run(q.execute(&mut *tx)).await?;
        self.run(tx.commit()).await?;
        Ok(Some(topup))
    }

    /// Marks the top-up applied and grows `total_stock` by its units, once
    /// (a second call, by a recovering instance, changes nothing).
    pub async fn apply_top_up(&self, t: &PendingTopUp, now: DateTime<Utc>) -> Result<bool> {
        let mut tx = self.run(self.pool().begin()).await?;
        let q = sqlx::query("UPDATE campaign_topups SET applied_at = ? WHERE id = ? AND applied_at IS NULL")
            .bind(now.naive_utc())
            .bind(&t.id);
        if self.run(q.execute(&mut *tx)).await?.rows_affected() == 0 {
            return Ok(false);
        }
        let q = sqlx::query("UPDATE campaigns SET total_stock = total_stock + ? WHERE id = ?")
            .bind(t.units)
            .bind(t.campaign_id.as_str());
        self.run(q.execute(&mut *tx)).await?;
        self.run(tx.commit()).await?;
        Ok(true)
    }

    /// Top-ups journaled before `before` and not applied (their process
    /// died half-way), oldest first, at most `limit`.
    pub async fn pending_top_ups(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<PendingTopUp>> {
        let q = sqlx::query(
            "SELECT id, campaign_id, units FROM campaign_topups WHERE applied_at IS NULL AND created_at < ? \
             ORDER BY created_at LIMIT ?",
        )
        .bind(before.naive_utc())
        .bind(limit);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                let cid: String = r.try_get("campaign_id")?;
                let units: i64 = r.try_get("units")?;
                Ok(PendingTopUp { id: r.try_get("id")?, campaign_id: campaign_id(&cid)?, units: units.max(0) as u64 })
            })
            .collect()
    }
}
