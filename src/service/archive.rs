//! Archiving ended campaigns: their per-shard Redis data goes, MySQL stays
//! the only copy.
//!
//! Why: nothing in Redis expires. Holders, claim records, idempotency keys
//! and transfer journals of every campaign ever run would stay (about 300
//! bytes per grant, docs/OPERATIONS.md "Sizing"), and a year of drops runs
//! the cluster out of memory. Once a campaign is over and MySQL holds every
//! grant, the Redis copy serves nobody.
//!
//! A campaign is archivable when, all at once:
//! - it is over (`ends_at`, or `closed_at` if earlier) for at least the
//!   grace period (`FLASHGRAB_ARCHIVE_AFTER_SECS` for the automatic pass):
//!   late claims, keyed replays and the pipeline's tail have had time;
//! - no stock transfer is journaled (the recovery pass lands them first);
//! - every grant is persisted: rows == claim records summed over the shards;
//! - reconcile matches (nothing missing, lost, extra, no invariant broken).
//!
//! Then, in this order: the row is marked (`campaigns.archived_at` and the
//! grants counted, `archived_claimed`), the grants leave their holders'
//! indexes (`stock::holdings`), and the shards' keys are deleted
//! (`stock::archive`). Marked first, so a crash in between leaves keys
//! that the next pass deletes (it revisits recently archived campaigns),
//! never a campaign whose Redis data is gone and which MySQL does not know
//! to be archived (reconcile would then report every row "lost in Redis",
//! and `--repair` would write them back). Every step is idempotent, so two
//! archivers at once are harmless; the automatic pass also takes a Redis
//! lock so that usually one instance does the work.
//!
//! After: stats come from MySQL, claims answer `ended` (a keyed replay gets
//! its coupon from its row), the coupons are listed, found and redeemed
//! from their rows as before, reconcile compares the rows with the count
//! kept at archive time.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::reconcile;
use super::{CampaignService, Result};
use crate::db::Db;
use crate::domain::CampaignId;
use crate::stock::StockStore;

/// Period of the automatic pass.
pub const PASS_EVERY: Duration = Duration::from_secs(300);
/// Candidates read per query, and queries per pass at most: a pass looks
/// at up to 1000 campaigns (the rest wait for the next pass).
const PASS_PAGE: u32 = 100;
const PASS_PAGES: usize = 10;
/// Campaigns archived this recently are revisited by every pass (their
/// keys deleted again: a no-op unless a pass died between mark and delete).
const REVISIT: Duration = Duration::from_secs(3600);

/// Why a campaign cannot be archived yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Not over yet, or over for less than the grace period.
    NotOverYet { archivable_at: DateTime<Utc> },
    /// Stock transfers still journaled (after a recovery pass).
    Journaled(u64),
    /// Grants in Redis without their row yet (the pipeline's tail, or
    /// dead-lettered claims).
    Unpersisted { granted: u64, rows: u64 },
    /// Reconcile does not match: the report says what.
    Reconcile(String),
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::NotOverYet { archivable_at } => {
                write!(f, "not over long enough: archivable from {}", archivable_at.to_rfc3339())
            }
            Blocker::Journaled(n) => write!(f, "{n} stock transfers still journaled"),
            Blocker::Unpersisted { granted, rows } => {
                write!(
                    f,
                    "not every grant is persisted: {granted} granted in redis, {rows} rows in mysql (they must be \
                     equal: let the pipeline drain, replay the dead letters, or see `flashgrab reconcile`)"
                )
            }
            Blocker::Reconcile(report) => write!(f, "reconcile does not match:\n{report}"),
        }
    }
}

/// What one archive call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveOutcome {
    /// Marked archived now and its Redis keys deleted.
    Archived {
        claimed: u64,
        keys_deleted: u64,
    },
    /// It was archived before (by another pass or instance); its keys were
    /// deleted again (`keys_deleted` is what was still there).
    AlreadyArchived {
        claimed: u64,
        keys_deleted: u64,
    },
    NotArchivable(Blocker),
}

impl fmt::Display for ArchiveOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveOutcome::Archived { claimed, keys_deleted } => {
                write!(f, "archived: {claimed} grants kept in mysql, {keys_deleted} redis keys deleted")
            }
            ArchiveOutcome::AlreadyArchived { claimed, keys_deleted } => {
                write!(f, "already archived ({claimed} grants); {keys_deleted} redis keys left over were deleted")
            }
            ArchiveOutcome::NotArchivable(b) => write!(f, "not archived: {b}"),
        }
    }
}

#[derive(Clone)]
pub struct ArchiveService {
    db: Db,
    stock: StockStore,
    campaigns: CampaignService,
}

impl ArchiveService {
    pub fn new(db: Db, stock: StockStore, campaigns: CampaignService) -> Self {
        Self { db, stock, campaigns }
    }

    /// Archives one campaign if it is archivable at `now` with `grace`.
    /// `None`: no such campaign. Idempotent.
    pub async fn archive(
        &self,
        id: &CampaignId,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Option<ArchiveOutcome>> {
        let Some(c) = self.db.get_campaign(id).await? else {
            return Ok(None);
        };
        if let Some(a) = self.db.archive_state(id).await? {
            let keys_deleted = self.delete_from_redis(&c).await?;
            return Ok(Some(ArchiveOutcome::AlreadyArchived { claimed: a.claimed, keys_deleted }));
        }
        let over_at = c.closed_at.map_or(c.ends_at, |t| t.min(c.ends_at));
        let archivable_at = over_at + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        if now < archivable_at {
            return Ok(Some(ArchiveOutcome::NotArchivable(Blocker::NotOverYet { archivable_at })));
        }
        // Transfers a dead process left: landed now, so the counts add up.
        self.stock.recover(&c).await?;
        let census = self.stock.census(&c).await?;
        if census.journaled > 0 {
            return Ok(Some(ArchiveOutcome::NotArchivable(Blocker::Journaled(census.journaled))));
        }
        let rows = self.db.count_persisted(id).await?;
        if rows != census.claimed {
            return Ok(Some(ArchiveOutcome::NotArchivable(Blocker::Unpersisted { granted: census.claimed, rows })));
        }
        let report = reconcile::reconcile(&self.stock, &self.db, &c, false).await?;
        if !report.matched() {
            return Ok(Some(ArchiveOutcome::NotArchivable(Blocker::Reconcile(report.to_string()))));
        }
        // Mark first, then delete (module note). A second archiver that
        // marked first makes this one's mark a no-op; both delete.
        let marked = self.db.mark_archived(id, now, census.claimed).await?;
        let keys_deleted = self.delete_from_redis(&c).await?;
        if !marked {
            let claimed = self.db.archive_state(id).await?.map_or(census.claimed, |a| a.claimed);
            return Ok(Some(ArchiveOutcome::AlreadyArchived { claimed, keys_deleted }));
        }
        self.campaigns.forget(id);
        tracing::info!(campaign = %id, claimed = census.claimed, keys_deleted, "campaign archived: redis keys deleted");
        Ok(Some(ArchiveOutcome::Archived { claimed: census.claimed, keys_deleted }))
    }

    /// The campaign's entries of its holders' indexes (`stock::holdings`),
    /// then its shards' keys: in that order, because the holders hash says
    /// whose index names which coupon and goes with the keys. A crash in
    /// between leaves keys, which the next pass unindexes and deletes.
    /// Returns the keys deleted.
    async fn delete_from_redis(&self, c: &crate::domain::Campaign) -> Result<u64> {
        let unindexed = self.stock.unindex_campaign(c).await?;
        let keys = self.stock.delete_campaign_keys(c).await?;
        if unindexed > 0 {
            tracing::debug!(campaign = %c.id, unindexed, "holdings index entries removed");
        }
        Ok(keys)
    }

    /// One automatic pass: every campaign over for `grace` and not archived
    /// (at most `PASS_PAGE` x `PASS_PAGES`), and the recently archived ones again.
    /// Returns the outcomes; a campaign's failure is logged and the pass
    /// goes on.
    pub async fn pass(&self, now: DateTime<Utc>, grace: Duration) -> Result<Vec<(CampaignId, ArchiveOutcome)>> {
        let before = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let since = now - chrono::Duration::from_std(REVISIT).expect("an hour fits");
        let mut out = Vec::new();
        // Paged by id, so campaigns that stay blocked (a dead-lettered
        // claim, a mismatch for a human) never starve the others.
        let mut ids = Vec::new();
        let mut after: Option<CampaignId> = None;
        for _ in 0..PASS_PAGES {
            let page = self.db.archive_candidates(before, since, after.as_ref(), PASS_PAGE).await?;
            let full = page.len() == PASS_PAGE as usize;
            after = page.last().cloned();
            ids.extend(page);
            if !full {
                break;
            }
        }
        for id in ids {
            match self.archive(&id, now, grace).await {
                Ok(Some(o)) => {
                    if let ArchiveOutcome::NotArchivable(b) = &o {
                        tracing::warn!(campaign = %id, "archive: {b}");
                    }
                    out.push((id, o));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(campaign = %id, error = %e, "archive failed; retried next pass"),
            }
        }
        Ok(out)
    }

    /// The background task of `serve`: a pass every `every`, by whichever
    /// instance takes the Redis lock for that period (the others skip it).
    pub async fn run(self, every: Duration, grace: Duration, stop: CancellationToken) {
        let holder = ulid::Ulid::new().to_string();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Held a little less than the period, so the next pass is free.
            let ttl = every.saturating_sub(Duration::from_secs(5)).max(Duration::from_secs(1));
            match self.stock.try_lock("archiver", &holder, ttl).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "archive: cannot take the lock; skipping this pass");
                    continue;
                }
            }
            let pass = tokio::select! {
                () = stop.cancelled() => return,
                r = self.pass(Utc::now(), grace) => r,
            };
            match pass {
                Ok(done) => {
                    let archived = done.iter().filter(|(_, o)| matches!(o, ArchiveOutcome::Archived { .. })).count();
                    if archived > 0 {
                        tracing::info!(archived, "archive pass done");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "archive pass failed; retried next period"),
            }
        }
    }
}
