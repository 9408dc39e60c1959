//! Coupon rows: the durable record of every grant.
//!
//! Written in batches by the persist worker (and by reconcile --repair) with
//! `INSERT ... ON DUPLICATE KEY UPDATE id = id`: keyed by the coupon id, so a
//! record delivered twice (relay retry, broker redelivery, repair) is one
//! row, and only duplicates are ignored (unlike INSERT IGNORE, which would
//! also hide truncation and other errors).

use chrono::{DateTime, Utc};
use sqlx::{MySql, QueryBuilder, Row};

use super::{Db, Result};
use crate::domain::CouponRecord;
use crate::domain::coupon::from_ms;

/// Rows per INSERT statement (8 parameters each; MariaDB here writes about
/// 230k rows/s with 500-row statements on one connection).
pub const ROWS_PER_STATEMENT: usize = 500;

/// A persisted coupon, as reconcile and the coupon listing read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponRow {
    pub id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub shard: u32,
    pub claimed_at: DateTime<Utc>,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    /// Set while the coupon is redeemed (the database decides redemptions).
    pub redemption: Option<Redemption>,
    /// The claim's `Idempotency-Key`, if it had one (rows persisted before
    /// migration 0003 have none).
    pub idempotency_key: Option<String>,
}

/// The order a coupon is redeemed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub order_id: String,
    pub discount_cents: i64,
    pub redeemed_at: DateTime<Utc>,
}

/// Columns [`row_of`] reads.
macro_rules! coupon_columns {
    () => {
        "id, campaign_id, user_id, shard, claimed_at, valid_from, valid_until, status, order_id, discount_cents, \
         redeemed_at, idempotency_key"
    };
}
pub(crate) use coupon_columns;

impl CouponRow {
    /// True when the row says what the claim record says (times compared at
    /// millisecond precision, which is what DATETIME(3) keeps).
    pub fn matches(&self, r: &CouponRecord) -> bool {
        self.id == r.id
            && self.campaign_id == r.campaign_id
            && self.user_id == r.user_id
            && self.shard == r.shard
            && self.claimed_at == from_ms(r.claimed_at_ms)
            && self.valid_from == from_ms(r.valid_from_ms)
            && self.valid_until == from_ms(r.valid_until_ms)
    }
}

pub(crate) fn row_of(r: &sqlx::mysql::MySqlRow) -> std::result::Result<CouponRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let redemption = match (status.as_str(), r.try_get("order_id")?, r.try_get("redeemed_at")?) {
        ("redeemed", Some(order_id), Some(redeemed_at)) => Some(Redemption {
            order_id,
            discount_cents: r.try_get::<Option<i64>, _>("discount_cents")?.unwrap_or(0),
            redeemed_at,
        }),
        _ => None,
    };
    Ok(CouponRow {
        id: r.try_get("id")?,
        campaign_id: r.try_get("campaign_id")?,
        user_id: r.try_get("user_id")?,
        shard: r.try_get("shard")?,
        claimed_at: r.try_get("claimed_at")?,
        valid_from: r.try_get("valid_from")?,
        valid_until: r.try_get("valid_until")?,
        redemption,
        idempotency_key: r.try_get("idempotency_key")?,
    })
}

impl CouponRow {
    /// Back to the claim record it was written from.
    pub fn to_record(&self) -> CouponRecord {
        CouponRecord {
            id: self.id.clone(),
            campaign_id: self.campaign_id.clone(),
            user_id: self.user_id.clone(),
            shard: self.shard,
            claimed_at_ms: self.claimed_at.timestamp_millis(),
            valid_from_ms: self.valid_from.timestamp_millis(),
            valid_until_ms: self.valid_until.timestamp_millis(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

impl Db {
    /// Writes `records` in one transaction; returns how many rows were new.
    pub async fn insert_coupons(&self, records: &[CouponRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let work = async {
            let mut tx = self.pool().begin().await?;
            let mut inserted = 0;
            for chunk in records.chunks(ROWS_PER_STATEMENT) {
                let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                    "INSERT INTO coupons (id, campaign_id, user_id, shard, claimed_at, valid_from, valid_until, \
                     idempotency_key) ",
                );
                // Times as NaiveDateTime (UTC): sqlx sends a DateTime<Utc>
                // as a TIMESTAMP parameter, which MariaDB turns into NULL
                // outside 1970-01-01..2038-01-19 (a 10-year coupon claimed
                // after 2028 would be refused by NOT NULL).
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.id)
                        .push_bind(&r.campaign_id)
                        .push_bind(&r.user_id)
                        .push_bind(r.shard)
                        .push_bind(from_ms(r.claimed_at_ms).naive_utc())
                        .push_bind(from_ms(r.valid_from_ms).naive_utc())
                        .push_bind(from_ms(r.valid_until_ms).naive_utc())
                        .push_bind(r.idempotency_key.as_deref());
                });
                q.push(" ON DUPLICATE KEY UPDATE id = id");
                // MySQL counts 1 per inserted row and 0 for an unchanged duplicate.
                inserted += q.build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(inserted)
        };
        self.run(work).await
    }

    /// A user's coupon rows, optionally of one campaign (newest first, at most
    /// 1000: the listing is for an app screen).
    ///
    /// The column compares exactly (a NO PAD collation, migrations/0004);
    /// the rows are checked again here, so a database still on the padding
    /// collation (`'alice ' = 'alice'`) cannot hand one user another's rows.
    pub async fn user_coupons(&self, user_id: &str, campaign_id: Option<&str>) -> Result<Vec<CouponRow>> {
        let q = sqlx::query(concat!(
            "SELECT ",
            coupon_columns!(),
            " FROM coupons WHERE user_id = ? AND (? IS NULL OR campaign_id = ?) ORDER BY claimed_at DESC LIMIT 1000"
        ))
        .bind(user_id)
        .bind(campaign_id)
        .bind(campaign_id);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        let rows: Vec<CouponRow> = rows.iter().map(row_of).collect::<std::result::Result<_, sqlx::Error>>()?;
        Ok(rows.into_iter().filter(|r| r.user_id == user_id).collect())
    }

    /// Every coupon row of a campaign (reconcile).
    pub async fn campaign_coupons(&self, campaign_id: &str) -> Result<Vec<CouponRow>> {
        let q =
            sqlx::query(concat!("SELECT ", coupon_columns!(), " FROM coupons WHERE campaign_id = ?")).bind(campaign_id);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter().map(row_of).collect::<std::result::Result<_, sqlx::Error>>().map_err(Into::into)
    }
}
