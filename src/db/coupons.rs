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

/// Which rows of a user [`Db::user_coupons`] reads.
#[derive(Debug, Clone)]
pub struct UserCouponsQuery<'a> {
    pub user_id: &'a str,
    pub campaign_id: Option<&'a str>,
    pub status: Option<RowStatus>,
    /// Only ids below this one (the cursor: the last id of the page before).
    pub before: Option<&'a str>,
    pub limit: u32,
    /// What "expired" is relative to; at the millisecond.
    pub now: DateTime<Utc>,
}

/// A coupon's status as the listing filters it: redeemed (the row says
/// so), else expired (`valid_until <= now`), else claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    Claimed,
    Redeemed,
    Expired,
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

    /// One page of a user's coupon rows, newest first (by id: coupon ids
    /// are ULIDs, time-ordered), keyset-paged: the rows with an id below
    /// `q.before`, at most `q.limit`. The status filter is applied here so
    /// that a filtered page is full; `q.now` (at the millisecond, the
    /// columns' precision) decides "expired" exactly as the caller does.
    /// Served by `idx_coupons_user_id` (migrations/0005), or by
    /// `idx_coupons_user_campaign` with a campaign.
    ///
    /// The column compares exactly (a NO PAD collation, migrations/0004);
    /// the rows are checked again here, so a database still on the padding
    /// collation (`'alice ' = 'alice'`) cannot hand one user another's rows.
    pub async fn user_coupons(&self, q: &UserCouponsQuery<'_>) -> Result<Vec<CouponRow>> {
        let mut b: QueryBuilder<MySql> =
            QueryBuilder::new(concat!("SELECT ", coupon_columns!(), " FROM coupons WHERE user_id = "));
        b.push_bind(q.user_id);
        if let Some(c) = q.campaign_id {
            b.push(" AND campaign_id = ").push_bind(c);
        }
        if let Some(before) = q.before {
            b.push(" AND id < ").push_bind(before);
        }
        let now = q.now.naive_utc();
        match q.status {
            None => {}
            Some(RowStatus::Redeemed) => {
                b.push(" AND status = 'redeemed'");
            }
            Some(RowStatus::Claimed) => {
                b.push(" AND status <> 'redeemed' AND valid_until > ").push_bind(now);
            }
            Some(RowStatus::Expired) => {
                b.push(" AND status <> 'redeemed' AND valid_until <= ").push_bind(now);
            }
        }
        b.push(" ORDER BY id DESC LIMIT ").push_bind(q.limit);
        let rows = self.run(b.build().fetch_all(self.pool())).await?;
        let rows: Vec<CouponRow> = rows.iter().map(row_of).collect::<std::result::Result<_, sqlx::Error>>()?;
        Ok(rows.into_iter().filter(|r| r.user_id == q.user_id).collect())
    }

    /// The rows of these coupon ids that exist (primary key lookups).
    pub async fn coupons_by_id(&self, ids: &[&str]) -> Result<Vec<CouponRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut b: QueryBuilder<MySql> =
            QueryBuilder::new(concat!("SELECT ", coupon_columns!(), " FROM coupons WHERE id IN ("));
        let mut list = b.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        b.push(")");
        let rows = self.run(b.build().fetch_all(self.pool())).await?;
        rows.iter().map(row_of).collect::<std::result::Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Every coupon row of a campaign (reconcile).
    pub async fn campaign_coupons(&self, campaign_id: &str) -> Result<Vec<CouponRow>> {
        let q =
            sqlx::query(concat!("SELECT ", coupon_columns!(), " FROM coupons WHERE campaign_id = ?")).bind(campaign_id);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter().map(row_of).collect::<std::result::Result<_, sqlx::Error>>().map_err(Into::into)
    }
}
