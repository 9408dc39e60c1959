//! `flashgrab reconcile`: the claim records held in Redis (what was
//! granted) against the coupon rows in MySQL, for one campaign.
//!
//! - missing: granted in Redis, no row (not persisted yet, or lost on the
//!   way); `--repair` inserts the rows with the persist worker's idempotent
//!   insert;
//! - forgotten: a row Redis has no grant for, that looks exactly like a
//!   grant of this campaign (home shard of its user, claimed inside the
//!   window, validity as the terms give it). The known cause is a failover
//!   in `fast` mode that lost grants after the relay had shipped them: the
//!   user was answered 201, MySQL holds the coupon, and Redis put the unit
//!   back in stock and would let the user claim again. `--repair` writes
//!   them back into Redis (`stock::restore`): record, holder entry,
//!   idempotency key, one unit less; if no unit is left the unit was sold
//!   again meanwhile and the campaign is oversold, which is reported;
//! - extra: a row that no grant explains and that does not look like one
//!   (must never happen): left for a human, never "repaired";
//! - mismatched: both exist but disagree: for a human.
//!
//! Every run also checks the invariants on the union of both sides: grants
//! beyond `total_stock` (oversold), users beyond `per_user_limit`, and
//! stock conservation (`remaining + claimed == total_stock`). Repair never
//! deletes. An archived campaign (`service::archive`: its Redis keys are
//! deleted) is compared on the MySQL side only: the rows against the grants
//! counted at archive time; nothing is ever written back into Redis for it.
//! Run it at rest: during a drop, claims still on their way through
//! the outbox and the queue show as missing.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::ServiceError;
use crate::db::Db;
use crate::domain::campaign::home_shard;
use crate::domain::{Campaign, CouponRecord};
use crate::stock::StockStore;

#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    pub campaign_id: String,
    pub total_stock: u64,
    pub per_user_limit: u32,
    pub granted: usize,
    pub rows: usize,
    pub missing: Vec<CouponRecord>,
    /// Rows of grants Redis lost (see the module note).
    pub forgotten: Vec<CouponRecord>,
    pub extra: Vec<String>,
    pub mismatched: Vec<String>,
    /// Rows written by `--repair`.
    pub repaired: u64,
    /// Forgotten grants written back into Redis by `--repair`.
    pub restored: u64,
    /// Of the restored grants, those for which no shard had a unit left:
    /// their unit had been granted again after the loss.
    pub resold: Vec<String>,
    /// Distinct grants (Redis and MySQL together) beyond `total_stock`.
    pub oversold: u64,
    /// Users holding more than `per_user_limit` coupons (Redis and MySQL
    /// together), with their count.
    pub over_limit: Vec<(String, usize)>,
    /// Units in stock (remaining plus in flight) and claimed, summed over
    /// the shards after the repair: at rest their sum is `total_stock`.
    pub remaining: u64,
    pub claimed: u64,
    /// Set for an archived campaign: its Redis keys are gone, and the rows
    /// are compared with the grants counted when it was archived.
    pub archived: Option<crate::db::campaigns::ArchiveState>,
}

impl ReconcileReport {
    /// Redis and MySQL hold the same grants (after the repair, if one was
    /// made).
    pub fn agrees(&self) -> bool {
        let missing_left = self.missing.len() as u64 > self.repaired;
        let forgotten_left = self.forgotten.len() as u64 > self.restored;
        let archived_differs = self.archived.is_some_and(|a| a.claimed != self.rows as u64);
        !archived_differs && !missing_left && !forgotten_left && self.extra.is_empty() && self.mismatched.is_empty()
    }

    /// The stock adds up: remaining + claimed == total_stock.
    pub fn conserved(&self) -> bool {
        self.remaining + self.claimed == self.total_stock
    }

    /// Redis and MySQL agree, and no invariant is broken (no oversell, no
    /// user over the limit, the stock adds up): nothing for a human to do.
    pub fn matched(&self) -> bool {
        self.agrees() && self.oversold == 0 && self.over_limit.is_empty() && self.conserved()
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "campaign {}", self.campaign_id)?;
        if let Some(a) = self.archived {
            writeln!(
                f,
                "  archived at {} with {} grants (redis keys deleted; rows compared with that count){}",
                a.at.to_rfc3339(),
                a.claimed,
                if a.claimed == self.rows as u64 { "" } else { "  ROWS DIFFER" }
            )?;
        }
        writeln!(f, "  granted in redis: {}", self.granted)?;
        writeln!(f, "  rows in mysql:    {}", self.rows)?;
        writeln!(f, "  missing rows:     {}", self.missing.len())?;
        writeln!(f, "  lost in redis:    {}", self.forgotten.len())?;
        writeln!(f, "  extra rows:       {}", self.extra.len())?;
        writeln!(f, "  mismatched rows:  {}", self.mismatched.len())?;
        if self.repaired > 0 || !self.missing.is_empty() {
            writeln!(f, "  repaired:         {}", self.repaired)?;
        }
        if self.restored > 0 || !self.forgotten.is_empty() {
            writeln!(f, "  restored:         {}", self.restored)?;
        }
        writeln!(
            f,
            "  stock:            remaining {} + claimed {} = {} of {}{}",
            self.remaining,
            self.claimed,
            self.remaining + self.claimed,
            self.total_stock,
            if self.conserved() { "" } else { "  NOT CONSERVED" }
        )?;
        for r in self.missing.iter().take(10) {
            writeln!(f, "    missing    {} (user {}, shard {})", r.id, r.user_id, r.shard)?;
        }
        for r in self.forgotten.iter().take(10) {
            writeln!(f, "    lost       {} (user {}, shard {})", r.id, r.user_id, r.shard)?;
        }
        for id in self.extra.iter().take(10) {
            writeln!(f, "    extra      {id}")?;
        }
        for id in self.mismatched.iter().take(10) {
            writeln!(f, "    mismatched {id}")?;
        }
        if self.oversold > 0 {
            writeln!(
                f,
                "  OVERSOLD by {}: {} coupons granted for a stock of {}",
                self.oversold,
                self.total_stock + self.oversold,
                self.total_stock
            )?;
        }
        for id in self.resold.iter().take(10) {
            writeln!(f, "    resold     {id} (restored, but its unit had been granted again)")?;
        }
        if !self.over_limit.is_empty() {
            writeln!(f, "  users over the limit of {}: {}", self.per_user_limit, self.over_limit.len())?;
        }
        for (user, n) in self.over_limit.iter().take(10) {
            writeln!(f, "    over limit {user} holds {n}")?;
        }
        write!(f, "  result: {}", if self.matched() { "MATCH" } else { "MISMATCH" })
    }
}

/// Whether a row no grant in Redis explains is one the claim script could
/// have written for `c`: the campaign, its user's home shard, claimed
/// inside the window, and the validity the terms give a claim at that
/// moment. A row like that is a grant Redis lost; anything else is for a
/// human.
pub fn looks_granted(c: &Campaign, r: &CouponRecord) -> bool {
    let valid_from = c.coupon.valid_from.map_or(r.claimed_at_ms, |t| t.timestamp_millis());
    let valid_until = match (c.coupon.valid_until, c.coupon.valid_for_days) {
        (Some(t), _) => Some(t.timestamp_millis()),
        (None, Some(days)) => r.claimed_at_ms.checked_add(days.saturating_mul(86_400_000)),
        (None, None) => None,
    };
    r.campaign_id == c.id.as_str()
        && r.shard < c.shards()
        && r.shard == home_shard(&r.user_id, c.shards())
        && r.claimed_at() >= c.starts_at
        && r.claimed_at() < c.ends_at
        && r.valid_from_ms == valid_from
        && Some(r.valid_until_ms) == valid_until
}

/// Compares (and with `repair`, fills in both ways) one campaign.
pub async fn reconcile(
    stock: &StockStore,
    db: &Db,
    c: &Campaign,
    repair: bool,
) -> Result<ReconcileReport, ServiceError> {
    // Archived: nothing of it is left in Redis, and nothing may be written
    // back there (a repair would resurrect a campaign nobody reads).
    if let Some(a) = db.archive_state(&c.id).await? {
        return reconcile_archived(db, c, a).await;
    }
    // Land the stock transfers a dead process left, so the stats at rest add up.
    stock.recover(c).await?;
    let granted = stock.campaign_records(c).await?;
    let rows = db.campaign_coupons(c.id.as_str()).await?;
    let by_id: HashMap<&str, &CouponRecord> = granted.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut report = ReconcileReport {
        campaign_id: c.id.to_string(),
        total_stock: c.total_stock,
        per_user_limit: c.per_user_limit,
        granted: granted.len(),
        rows: rows.len(),
        ..Default::default()
    };
    let mut seen = HashSet::new();
    for row in &rows {
        seen.insert(row.id.as_str());
        match by_id.get(row.id.as_str()) {
            None => {
                let r = row.to_record();
                if looks_granted(c, &r) {
                    report.forgotten.push(r);
                } else {
                    report.extra.push(row.id.clone());
                }
            }
            Some(r) if !row.matches(r) => report.mismatched.push(row.id.clone()),
            Some(_) => {}
        }
    }
    report.missing = granted.iter().filter(|r| !seen.contains(r.id.as_str())).cloned().collect();
    if repair && !report.missing.is_empty() {
        db.insert_coupons(&report.missing).await?;
        report.repaired = report.missing.len() as u64;
    }
    // Archived meanwhile (by an archiver racing this run): its Redis keys
    // are being deleted, which is not a loss to write back.
    if repair && !report.forgotten.is_empty() && db.archive_state(&c.id).await?.is_none() {
        let done = stock.restore_grants(c, &report.forgotten).await?;
        // Present already counts as restored: a repair run again (or one
        // racing another) has nothing left to do for it.
        report.restored = report.forgotten.len() as u64;
        report.resold = done.without_unit;
    }

    // The invariants, on every grant either side knows of.
    let mut per_user: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (user, id) in granted
        .iter()
        .map(|r| (r.user_id.as_str(), r.id.as_str()))
        .chain(rows.iter().map(|r| (r.user_id.as_str(), r.id.as_str())))
    {
        per_user.entry(user).or_default().insert(id);
    }
    let distinct: usize = per_user.values().map(HashSet::len).sum();
    report.oversold = (distinct as u64).saturating_sub(c.total_stock);
    report.over_limit = per_user
        .iter()
        .filter(|(_, ids)| ids.len() > c.per_user_limit as usize)
        .map(|(user, ids)| ((*user).to_owned(), ids.len()))
        .collect();
    report.over_limit.sort();
    for s in stock.shard_stats(c).await? {
        report.remaining += s.remaining;
        report.claimed += s.claimed;
    }
    Ok(report)
}

/// Reconcile of an archived campaign: MySQL only. The rows must number
/// what Redis held at archive time (`archived_claimed`), each must look
/// like a grant of the campaign, and the invariants hold on the rows.
/// `--repair` has nothing it may do: it never writes into Redis, and a row
/// Redis never counted is for a human.
async fn reconcile_archived(
    db: &Db,
    c: &Campaign,
    a: crate::db::campaigns::ArchiveState,
) -> Result<ReconcileReport, ServiceError> {
    let rows = db.campaign_coupons(c.id.as_str()).await?;
    let mut report = ReconcileReport {
        campaign_id: c.id.to_string(),
        total_stock: c.total_stock,
        per_user_limit: c.per_user_limit,
        granted: a.claimed as usize,
        rows: rows.len(),
        archived: Some(a),
        ..Default::default()
    };
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        if !looks_granted(c, &row.to_record()) {
            report.extra.push(row.id.clone());
        }
        *per_user.entry(row.user_id.as_str()).or_default() += 1;
    }
    report.oversold = (rows.len() as u64).saturating_sub(c.total_stock);
    report.over_limit = per_user
        .into_iter()
        .filter(|(_, n)| *n > c.per_user_limit as usize)
        .map(|(user, n)| (user.to_owned(), n))
        .collect();
    report.over_limit.sort();
    report.claimed = a.claimed;
    report.remaining = c.total_stock.saturating_sub(a.claimed);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::campaign::{AppliesTo, CouponTerms, Discount};

    fn campaign() -> Campaign {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        Campaign {
            id: crate::domain::CampaignId::parse("01JD0000000000000000000001").unwrap(),
            name: "c".into(),
            total_stock: 10,
            per_user_limit: 1,
            starts_at: t("2026-01-01T00:00:00Z"),
            ends_at: t("2026-01-02T00:00:00Z"),
            closed_at: None,
            coupon: CouponTerms {
                discount: Discount::Fixed { amount_cents: 500 },
                min_spend_cents: 0,
                applies_to: AppliesTo::default(),
                valid_for_days: Some(7),
                valid_until: None,
                valid_from: None,
            },
            shard_buckets: vec![0, 1, 2],
            created_at: t("2025-12-31T00:00:00Z"),
            tally: Default::default(),
        }
    }

    #[test]
    fn only_rows_the_claim_script_could_have_written_look_granted() {
        let c = campaign();
        let claimed = c.starts_at.timestamp_millis() + 1000;
        let good = CouponRecord {
            id: "01JD0000000000000000000009".into(),
            campaign_id: c.id.to_string(),
            user_id: "alice".into(),
            shard: home_shard("alice", 3),
            claimed_at_ms: claimed,
            valid_from_ms: claimed,
            valid_until_ms: claimed + 7 * 86_400_000,
            idempotency_key: None,
        };
        assert!(looks_granted(&c, &good));
        let other_shard = CouponRecord { shard: (good.shard + 1) % 3, ..good.clone() };
        assert!(!looks_granted(&c, &other_shard), "not the user's home shard");
        let before = CouponRecord { claimed_at_ms: claimed - 3_600_000, ..good.clone() };
        assert!(!looks_granted(&c, &before), "claimed before the start");
        let validity = CouponRecord { valid_until_ms: claimed, ..good.clone() };
        assert!(!looks_granted(&c, &validity), "validity the terms never give");
        let campaign = CouponRecord { campaign_id: "01JD0000000000000000000002".into(), ..good };
        assert!(!looks_granted(&c, &campaign));
    }
}
