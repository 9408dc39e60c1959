//! Campaign lifecycle events (`campaign_events`, migrations/0009): the
//! started / sold_out / closed / ended facts, one row per campaign and kind.
//!
//! Three of them follow from the campaign row and the clock (`starts_at`
//! passed, `ends_at` passed, `closed_at` set); sold out follows from Redis
//! (no unit left on any shard) and is recorded by the publisher that looked.
//! Every instance's publisher records what is due with `INSERT IGNORE`, so
//! the primary key makes each fact one row whichever instance saw it first,
//! and a fact that came due while no instance ran is recorded by the next
//! one. Rows are then published like redemption events and stamped.

use chrono::{DateTime, Utc};
use sqlx::{MySql, QueryBuilder, Row};

use super::{Db, Result};

/// One lifecycle fact of one campaign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleEvent {
    pub campaign_id: String,
    /// `started`, `sold_out`, `closed` or `ended`.
    pub kind: String,
    pub at: DateTime<Utc>,
}

impl LifecycleEvent {
    /// The id consumers deduplicate on: the same for every copy sent.
    pub fn id(&self) -> String {
        format!("{}:{}", self.campaign_id, self.kind)
    }
}

/// Campaigns that may have sold out: started, not archived, not ended for
/// more than [`SOLD_OUT_LOOKBACK_SECS`] (a sell-out just before the end or
/// a close is still seen), with no sold_out row yet.
const SELLING: &str = "SELECT c.id FROM campaigns c WHERE c.starts_at <= ? AND c.ends_at > ? \
     AND c.archived_at IS NULL \
     AND NOT EXISTS (SELECT 1 FROM campaign_events e WHERE e.campaign_id = c.id AND e.kind = 'sold_out') \
     ORDER BY c.id LIMIT 100";

/// How long after its end a campaign is still checked for a sell-out.
pub const SOLD_OUT_LOOKBACK_SECS: i64 = 600;

impl Db {
    /// Records the started / ended / closed facts that are due at `now` and
    /// not recorded yet; returns how many rows were new.
    pub async fn record_due_lifecycle(&self, now: DateTime<Utc>) -> Result<u64> {
        let now_n = now.naive_utc();
        // Read first, then insert by value: no INSERT ... SELECT, which
        // would hold shared locks on the campaign rows.
        let q = sqlx::query(
            "SELECT c.id, k.kind, CASE k.kind WHEN 'started' THEN c.starts_at WHEN 'ended' THEN c.ends_at \
             ELSE c.closed_at END AS at \
             FROM campaigns c JOIN (SELECT 'started' AS kind UNION ALL SELECT 'ended' UNION ALL SELECT 'closed') k \
             WHERE ((k.kind = 'started' AND c.starts_at <= ?) OR (k.kind = 'ended' AND c.ends_at <= ?) \
                    OR (k.kind = 'closed' AND c.closed_at IS NOT NULL)) \
               AND NOT EXISTS (SELECT 1 FROM campaign_events e WHERE e.campaign_id = c.id AND e.kind = k.kind) \
             LIMIT 500",
        )
        .bind(now_n)
        .bind(now_n);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        let due: Vec<LifecycleEvent> = rows
            .iter()
            .map(|r| {
                Ok(LifecycleEvent {
                    campaign_id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    at: r.try_get::<DateTime<Utc>, _>("at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()?;
        self.record_lifecycle(&due, now).await
    }

    /// Campaigns whose sold-out state the publisher should look at.
    pub async fn campaigns_selling(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
        let lookback = now - chrono::Duration::seconds(SOLD_OUT_LOOKBACK_SECS);
        let q = sqlx::query(SELLING).bind(now.naive_utc()).bind(lookback.naive_utc());
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter().map(|r| r.try_get("id")).collect::<std::result::Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Inserts `events` that are not recorded yet; returns how many were new.
    pub async fn record_lifecycle(&self, events: &[LifecycleEvent], now: DateTime<Utc>) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new("INSERT IGNORE INTO campaign_events (campaign_id, kind, at, recorded_at) ");
        q.push_values(events, |mut b, e| {
            b.push_bind(&e.campaign_id).push_bind(&e.kind).push_bind(e.at.naive_utc()).push_bind(now.naive_utc());
        });
        Ok(self.run(q.build().execute(self.pool())).await?.rows_affected())
    }

    /// Leases up to `limit` recorded facts not yet sent (and not leased by
    /// another publisher, or whose lease ran out) to `owner` for `lease`, and
    /// returns every unsent fact `owner` holds, oldest first.
    pub async fn lease_unpublished_lifecycle(
        &self,
        owner: &str,
        lease: std::time::Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<LifecycleEvent>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        let take = sqlx::query(
            "UPDATE campaign_events SET lease_owner = ?, lease_until = ? \
             WHERE published_at IS NULL AND (lease_until IS NULL OR lease_until < ? OR lease_owner = ?) \
             ORDER BY at LIMIT ?",
        )
        .bind(owner)
        .bind(until.naive_utc())
        .bind(now.naive_utc())
        .bind(owner)
        .bind(limit);
        self.run(take.execute(self.pool())).await?;
        let q = sqlx::query(
            "SELECT campaign_id, CAST(kind AS CHAR) AS kind, at FROM campaign_events \
             WHERE published_at IS NULL AND lease_owner = ? ORDER BY at, campaign_id, kind LIMIT ?",
        )
        .bind(owner)
        .bind(limit);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                Ok(LifecycleEvent {
                    campaign_id: r.try_get("campaign_id")?,
                    kind: r.try_get("kind")?,
                    at: r.try_get::<DateTime<Utc>, _>("at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Stamps facts as sent.
    pub async fn mark_lifecycle_published(&self, events: &[LifecycleEvent], now: DateTime<Utc>) -> Result<()> {
        for e in events {
            let q = sqlx::query(
                "UPDATE campaign_events SET published_at = ? WHERE campaign_id = ? AND kind = ? AND published_at IS NULL",
            )
            .bind(now.naive_utc())
            .bind(&e.campaign_id)
            .bind(&e.kind);
            self.run(q.execute(self.pool())).await?;
        }
        Ok(())
    }
}
