//! Redeem and release: the database is the source of truth.
//!
//! A redemption is decided inside one transaction that holds the coupon row
//! locked (`SELECT ... FOR UPDATE`): two concurrent redeems of one coupon
//! queue on that lock, and the second sees the first one's order. The same
//! transaction appends the history row (also the event outbox, see
//! migrations/0002) and the order lines for the report, so a decision, its
//! event and its report data commit or vanish together.
//!
//! No gap locks. At REPEATABLE READ a locking statement that finds nothing
//! (`DELETE FROM redemption_items WHERE coupon_id = ?` of a coupon without
//! lines) locks the gap where those rows would be; coupon ids are
//! time-ordered, so every fresh coupon's gap is the same one, at the end of
//! the index, and two redeems that each locked it and then inserted their
//! lines into it deadlocked (MySQL error 1213, answered 503). The lines are
//! therefore read without locking and deleted by primary key: the coupon
//! row lock already orders every writer of a coupon's lines, and the
//! transaction's snapshot is taken at that read, after the lock was granted,
//! so it sees every line its predecessors committed. Whatever conflict is
//! left (a lock wait timeout, a deadlock with some other writer) is
//! [`DbError::is_lock_conflict`]: the caller retries the whole decision.

use chrono::{DateTime, Utc};
use sqlx::{MySql, QueryBuilder, Row, Transaction};

use super::coupons::{CouponRow, coupon_columns, row_of};
use super::{Db, DbError, Result};
use crate::domain::order::Order;

/// Redeem or release, as the history and the events name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Redeem,
    Release,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redeem => "redeem",
            Action::Release => "release",
        }
    }
}

/// An open transaction on one coupon row; dropped without
/// [`CouponTx::commit`] it rolls back.
pub struct CouponTx<'a> {
    db: &'a Db,
    tx: Transaction<'static, MySql>,
}

/// One history row, as the events exchange carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedemptionEvent {
    pub id: u64,
    pub action: String,
    pub coupon_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub order_id: String,
    pub discount_cents: i64,
    pub at_ms: i64,
}

/// MySQL's "deadlock found, transaction rolled back" and "lock wait
/// timeout exceeded" (the statement failed; the transaction is rolled back
/// when it is dropped).
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

impl DbError {
    /// True when the transaction lost a lock conflict: nothing of it
    /// committed, and running it again is the remedy.
    pub fn is_lock_conflict(&self) -> bool {
        let DbError::Sql(sqlx::Error::Database(e)) = self else { return false };
        e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT))
    }
}

impl Db {
    /// Starts a transaction and locks the coupon row (None: no such row).
    pub async fn lock_coupon(&self, coupon_id: &str) -> Result<(CouponTx<'_>, Option<CouponRow>)> {
        let mut tx = self.run(self.pool().begin()).await?;
        let q =
            sqlx::query(concat!("SELECT ", coupon_columns!(), " FROM coupons WHERE id = ? FOR UPDATE")).bind(coupon_id);
        let row = self.run(q.fetch_optional(&mut *tx)).await?;
        let row = row.as_ref().map(row_of).transpose()?;
        Ok((CouponTx { db: self, tx }, row))
    }

    /// One coupon row, without locking.
    pub async fn coupon(&self, coupon_id: &str) -> Result<Option<CouponRow>> {
        let q = sqlx::query(concat!("SELECT ", coupon_columns!(), " FROM coupons WHERE id = ?")).bind(coupon_id);
        let row = self.run(q.fetch_optional(self.pool())).await?;
        Ok(row.as_ref().map(row_of).transpose()?)
    }

    /// Redeemed coupons of a campaign and the discount they gave.
    pub async fn redemption_totals(&self, campaign_id: &str) -> Result<(u64, i64)> {
        let q = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(discount_cents), 0) AS SIGNED) AS cents FROM coupons \
             WHERE campaign_id = ? AND status = 'redeemed'",
        )
        .bind(campaign_id);
        let row = self.run(q.fetch_one(self.pool())).await?;
        Ok((row.try_get::<i64, _>("n")?.max(0) as u64, row.try_get("cents")?))
    }

    /// History rows not yet sent to the events exchange, oldest first.
    pub async fn unpublished_redemptions(&self, limit: u32) -> Result<Vec<RedemptionEvent>> {
        let q = sqlx::query(
            "SELECT id, CAST(action AS CHAR) AS action, coupon_id, campaign_id, user_id, order_id, discount_cents, at \
             FROM redemptions WHERE published_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit);
        let rows = self.run(q.fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                Ok(RedemptionEvent {
                    id: r.try_get("id")?,
                    action: r.try_get("action")?,
                    coupon_id: r.try_get("coupon_id")?,
                    campaign_id: r.try_get("campaign_id")?,
                    user_id: r.try_get("user_id")?,
                    order_id: r.try_get("order_id")?,
                    discount_cents: r.try_get("discount_cents")?,
                    at_ms: r.try_get::<DateTime<Utc>, _>("at")?.timestamp_millis(),
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Stamps history rows as sent.
    pub async fn mark_published(&self, ids: &[u64], now: DateTime<Utc>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<MySql> = QueryBuilder::new("UPDATE redemptions SET published_at = ");
        q.push_bind(now).push(" WHERE id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        self.run(q.build().execute(self.pool())).await.map(|_| ())
    }
}

impl CouponTx<'_> {
    /// Marks the locked coupon redeemed on `order`, records the history row
    /// and the order lines (for the report).
    pub async fn redeem(
        &mut self,
        row: &CouponRow,
        order: &Order,
        discount_cents: i64,
        eligible: impl Fn(&crate::domain::order::OrderLine) -> bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE coupons SET status = 'redeemed', order_id = ?, discount_cents = ?, redeemed_at = ? WHERE id = ?",
        )
        .bind(&order.order_id)
        .bind(discount_cents)
        .bind(now)
        .bind(&row.id);
        self.db.run(q.execute(&mut *self.tx)).await?;
        self.history(row, Action::Redeem, &order.order_id, discount_cents, now).await?;
        // None are left by a release; cleared anyway, so a stray line can
        // never collide with the new ones.
        self.clear_lines(row).await?;
        if let Some(items) = order.items.as_deref().filter(|i| !i.is_empty()) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT INTO redemption_items (coupon_id, line, campaign_id, product_id, category_id, line_cents, \
                 eligible) ",
            );
            q.push_values(items.iter().enumerate(), |mut b, (i, l)| {
                b.push_bind(&row.id)
                    .push_bind(i as u32)
                    .push_bind(&row.campaign_id)
                    .push_bind(&l.product_id)
                    .push_bind(&l.category_id)
                    .push_bind(l.line_cents())
                    .push_bind(eligible(l));
            });
            self.db.run(q.build().execute(&mut *self.tx)).await?;
        }
        Ok(())
    }

    /// Puts the locked coupon back to `claimed` (the order was cancelled).
    pub async fn release(&mut self, row: &CouponRow, order_id: &str, now: DateTime<Utc>) -> Result<()> {
        let q = sqlx::query(
            "UPDATE coupons SET status = 'claimed', order_id = NULL, discount_cents = NULL, redeemed_at = NULL \
             WHERE id = ?",
        )
        .bind(&row.id);
        self.db.run(q.execute(&mut *self.tx)).await?;
        self.history(row, Action::Release, order_id, 0, now).await?;
        self.clear_lines(row).await
    }

    /// Deletes the order lines of the locked coupon without locking any gap
    /// (see the module note): a plain read of their numbers, then a delete
    /// by primary key of exactly those.
    async fn clear_lines(&mut self, row: &CouponRow) -> Result<()> {
        let q = sqlx::query_scalar::<_, u32>("SELECT line FROM redemption_items WHERE coupon_id = ?").bind(&row.id);
        let lines = self.db.run(q.fetch_all(&mut *self.tx)).await?;
        if lines.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<MySql> = QueryBuilder::new("DELETE FROM redemption_items WHERE coupon_id = ");
        q.push_bind(&row.id).push(" AND line IN (");
        let mut list = q.separated(", ");
        for line in &lines {
            list.push_bind(*line);
        }
        q.push(")");
        self.db.run(q.build().execute(&mut *self.tx)).await.map(|_| ())
    }

    async fn history(
        &mut self,
        row: &CouponRow,
        action: Action,
        order_id: &str,
        discount_cents: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO redemptions (coupon_id, campaign_id, user_id, order_id, action, discount_cents, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(&row.campaign_id)
        .bind(&row.user_id)
        .bind(order_id)
        .bind(action.as_str())
        .bind(discount_cents)
        .bind(now);
        self.db.run(q.execute(&mut *self.tx)).await.map(|_| ())
    }

    pub async fn commit(self) -> Result<()> {
        self.db.run(self.tx.commit()).await
    }
}
