//! The database side of the invariants (`--mysql-url`): reads what MySQL
//! holds for the campaign into [`DbFacts`]; the checks themselves are pure
//! (`invariants::database`). Read-only, one connection, bounded by timeouts.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use sqlx::mysql::MySqlPoolOptions;

use crate::invariants::DbFacts;

pub async fn facts(url: &str, campaign: &str) -> anyhow::Result<DbFacts> {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to --mysql-url")?;
    let read = async {
        let (rows, distinct_ids): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM coupons WHERE campaign_id = ?")
                .bind(campaign)
                .fetch_one(&pool)
                .await?;
        let over: Option<(String, i64)> = sqlx::query_as(
            "SELECT user_id, COUNT(*) AS n FROM coupons WHERE campaign_id = ? \
             GROUP BY user_id HAVING n > 1 ORDER BY n DESC LIMIT 1",
        )
        .bind(campaign)
        .fetch_optional(&pool)
        .await?;
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM coupons WHERE campaign_id = ?").bind(campaign).fetch_all(&pool).await?;
        let (redeemed, discount): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(discount_cents), 0) AS SIGNED) FROM coupons \
             WHERE campaign_id = ? AND status = 'redeemed'",
        )
        .bind(campaign)
        .fetch_one(&pool)
        .await?;
        Ok::<_, sqlx::Error>(DbFacts {
            rows: rows as u64,
            distinct_ids: distinct_ids as u64,
            over_limit: over.map(|(u, n)| (u, n as u64)),
            ids: ids.into_iter().collect::<HashSet<_>>(),
            redeemed: redeemed as u64,
            discount_total_cents: discount,
        })
    };
    let facts = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .context("reading the campaign's rows took over 60 s")?
        .context("reading the campaign's rows");
    pool.close().await;
    facts
}
