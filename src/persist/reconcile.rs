//! `flashgrab reconcile`: the claim records held in Redis (the truth of what
//! was granted) against the coupon rows in MySQL, for one campaign.
//!
//! - missing: granted in Redis, no row (not persisted yet, or lost);
//! - extra: a row with no grant behind it (must never happen);
//! - mismatched: both exist but disagree.
//!
//! `--repair` writes the missing rows with the same idempotent insert the
//! persist worker uses; it never deletes or rewrites (extra and mismatched
//! rows need a human). Run it at rest: during a drop, claims still on their
//! way through the outbox and the queue show as missing.

use std::collections::HashMap;
use std::fmt;

use crate::db::Db;
use crate::domain::{Campaign, CouponRecord};
use crate::service::ServiceError;
use crate::stock::StockStore;

#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    pub campaign_id: String,
    pub granted: usize,
    pub rows: usize,
    pub missing: Vec<CouponRecord>,
    pub extra: Vec<String>,
    pub mismatched: Vec<String>,
    /// Rows written by `--repair`.
    pub repaired: u64,
}

impl ReconcileReport {
    /// True when Redis and MySQL agree (after the repair, if one was made).
    pub fn matched(&self) -> bool {
        let missing_left = self.missing.len() as u64 > self.repaired;
        !missing_left && self.extra.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "campaign {}", self.campaign_id)?;
        writeln!(f, "  granted in redis: {}", self.granted)?;
        writeln!(f, "  rows in mysql:    {}", self.rows)?;
        writeln!(f, "  missing rows:     {}", self.missing.len())?;
        writeln!(f, "  extra rows:       {}", self.extra.len())?;
        writeln!(f, "  mismatched rows:  {}", self.mismatched.len())?;
        if self.repaired > 0 || !self.missing.is_empty() {
            writeln!(f, "  repaired:         {}", self.repaired)?;
        }
        for r in self.missing.iter().take(10) {
            writeln!(f, "    missing    {} (user {}, shard {})", r.id, r.user_id, r.shard)?;
        }
        for id in self.extra.iter().take(10) {
            writeln!(f, "    extra      {id}")?;
        }
        for id in self.mismatched.iter().take(10) {
            writeln!(f, "    mismatched {id}")?;
        }
        write!(f, "  result: {}", if self.matched() { "MATCH" } else { "MISMATCH" })
    }
}

/// Compares (and with `repair`, fills in) one campaign.
pub async fn reconcile(
    stock: &StockStore,
    db: &Db,
    c: &Campaign,
    repair: bool,
) -> Result<ReconcileReport, ServiceError> {
    // Land the stock transfers a dead process left, so the stats at rest add up.
    stock.recover(c).await?;
    let granted = stock.campaign_records(c).await?;
    let rows = db.campaign_coupons(c.id.as_str()).await?;
    let by_id: HashMap<&str, &CouponRecord> = granted.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut report = ReconcileReport {
        campaign_id: c.id.to_string(),
        granted: granted.len(),
        rows: rows.len(),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    for row in &rows {
        seen.insert(row.id.as_str());
        match by_id.get(row.id.as_str()) {
            None => report.extra.push(row.id.clone()),
            Some(r) if !row.matches(r) => report.mismatched.push(row.id.clone()),
            Some(_) => {}
        }
    }
    report.missing = granted.iter().filter(|r| !seen.contains(r.id.as_str())).cloned().collect();
    if repair && !report.missing.is_empty() {
        db.insert_coupons(&report.missing).await?;
        report.repaired = report.missing.len() as u64;
    }
    Ok(report)
}
