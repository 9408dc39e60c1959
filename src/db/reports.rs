//! Read-only queries behind `GET /v1/campaigns/{id}/report`.
//!
//! Everything is computed from the persisted rows (the claims pipeline
//! writes them within a fraction of a second), so a report never touches
//! the claim hot path in Redis. Each query is bounded by an index on
//! `campaign_id` and a LIMIT.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Db, Result};
use crate::domain::coupon::from_ms;

/// At most this many minutes in the timeline (about a week).
pub const MAX_MINUTES: u32 = 10_080;
/// Claims per second are reported for drops whose claims span at most
/// this many seconds (an hour): a flash sale that sells out in 8 seconds is
/// one bar per minute, which shows nothing.
pub const MAX_SECONDS: i64 = 3_600;

/// Claims over time, from the persisted rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimTimeline {
    pub first_claim_at: Option<DateTime<Utc>>,
    pub last_claim_at: Option<DateTime<Utc>>,
    /// (start of the minute, claims in it), oldest first, minutes without claims left out.
    pub per_minute: Vec<(DateTime<Utc>, u64)>,
    /// The same per second, when the claims span at most [`MAX_SECONDS`]
    /// (empty otherwise).
    pub per_second: Vec<(DateTime<Utc>, u64)>,
}

/// A product or category and how many redeemed coupons' orders had it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TopEntry {
    pub id: String,
    /// Redeemed coupons whose order had it (among the lines the coupon applied to).
    pub redemptions: u64,
    /// Sum of those order lines.
    pub line_cents: i64,
}

/// Which order-line column to rank.
#[derive(Debug, Clone, Copy)]
pub enum Dimension {
    Product,
    Category,
}

impl Db {
    pub async fn claim_timeline(&self, campaign_id: &str) -> Result<ClaimTimeline> {
        let q =
            sqlx::query("SELECT MIN(claimed_at) AS first, MAX(claimed_at) AS last FROM coupons WHERE campaign_id = ?")
                .bind(campaign_id);
        let row = self.run(q.fetch_one(self.pool())).await?;
        let (first_claim_at, last_claim_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            (row.try_get("first")?, row.try_get("last")?);
        // The session time zone is UTC (see Db::connect), so UNIX_TIMESTAMP
        // of a DATETIME is the epoch time it stores.
        let q = sqlx::query(
            "SELECT CAST(FLOOR(UNIX_TIMESTAMP(claimed_at) / 60) AS SIGNED) AS m, COUNT(*) AS n FROM coupons \
             WHERE campaign_id = ? GROUP BY m ORDER BY m LIMIT ?",
        )
        .bind(campaign_id)
        .bind(MAX_MINUTES);
        let per_minute = self.buckets(q, 60_000).await?;
        let short =
            matches!((first_claim_at, last_claim_at), (Some(f), Some(l)) if (l - f).num_seconds() <= MAX_SECONDS);
        let per_second = if short {
            let q = sqlx::query(
                "SELECT CAST(FLOOR(UNIX_TIMESTAMP(claimed_at)) AS SIGNED) AS m, COUNT(*) AS n FROM coupons \
                 WHERE campaign_id = ? GROUP BY m ORDER BY m LIMIT ?",
            )
            .bind(campaign_id)
            .bind(MAX_SECONDS + 1);
            self.buckets(q, 1_000).await?
        } else {
            Vec::new()
        };
        Ok(ClaimTimeline { first_claim_at, last_claim_at, per_minute, per_second })
    }

    /// Rows of (bucket number `m`, count `n`) as (bucket start, count).
    async fn buckets(
        &self,
        q: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
        width_ms: i64,
    ) -> Result<Vec<(DateTime<Utc>, u64)>> {
        let rows = self.run(q.fetch_all(self.pool())).await?;
        Ok(rows
            .iter()
            .map(|r| Ok((from_ms(r.try_get::<i64, _>("m")? * width_ms), r.try_get::<i64, _>("n")?.max(0) as u64)))
            .collect::<std::result::Result<_, sqlx::Error>>()?)
    }

    /// The products or categories most often in orders that redeemed a
    /// coupon of the campaign (lines the coupon applied to only).
    pub async fn top_redeemed(&self, campaign_id: &str, by: Dimension, limit: u32) -> Result<Vec<TopEntry>> {
        let q = match by {
            Dimension::Product => sqlx::query(
                "SELECT product_id AS k, COUNT(DISTINCT coupon_id) AS n, CAST(SUM(line_cents) AS SIGNED) AS cents \
                 FROM redemption_items WHERE campaign_id = ? AND eligible AND product_id IS NOT NULL \
                 GROUP BY product_id ORDER BY n DESC, k LIMIT ?",
            ),
            Dimension::Category => sqlx::query(
                "SELECT category_id AS k, COUNT(DISTINCT coupon_id) AS n, CAST(SUM(line_cents) AS SIGNED) AS cents \
                 FROM redemption_items WHERE campaign_id = ? AND eligible AND category_id IS NOT NULL \
                 GROUP BY category_id ORDER BY n DESC, k LIMIT ?",
            ),
        };
        let rows = self.run(q.bind(campaign_id).bind(limit).fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                Ok(TopEntry {
                    id: r.try_get("k")?,
                    redemptions: r.try_get::<i64, _>("n")?.max(0) as u64,
                    line_cents: r.try_get("cents")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
