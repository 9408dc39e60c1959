//! The console's additions to the campaign use cases: creation with an
//! `Idempotency-Key`, cursor pages of the list, and changes after creation
//! (`PATCH`: name, a later end, a top-up).
//!
//! A top-up is journaled before it touches Redis (`db::changes`): the row
//! is written, every shard gets its share (`stock::topup`, idempotent per
//! shard), then `total_stock` grows in the transaction that marks the row
//! applied. A process dying anywhere in between leaves a pending row that
//! [`CampaignService::recover_top_ups`] (every instance, periodically)
//! finishes, so at rest `remaining + claimed == total_stock` holds again.
//! While it is in flight the shards hold the new units before the total
//! says so: the stats can show more than `total_stock` for that moment,
//! never less.
//!
//! After a change the instance refreshes its cached terms and tells the
//! others (`Notice::Changed`): they reload the terms (a later end must not
//! be answered `ended` from an old copy) and forget a sell-out (a top-up
//! brings stock back).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{CampaignService, CampaignView};
use crate::domain::change::{CampaignPatch, InvalidChange};
use crate::domain::{CampaignId, NewCampaign};
use crate::service::Result;
use crate::stock::broadcast::Notice;

/// What `POST /v1/campaigns` with an `Idempotency-Key` did.
#[derive(Debug, Clone)]
pub enum Created {
    /// Made now (201).
    New(CampaignView),
    /// The key was used before with the same body: that campaign (200).
    Replayed(CampaignView),
    /// The key was used before with another body (409).
    Conflict,
}

/// What `PATCH /v1/campaigns/{id}` did.
#[derive(Debug, Clone)]
pub enum Patched {
    Done(CampaignView),
    Invalid(InvalidChange),
    NotFound,
}

/// Top-ups finished per recovery pass, at most.
const RECOVERY_BATCH: u32 = 100;

impl CampaignService {
    /// Creates a campaign once per `key`: `body_sha256` tells a retry of
    /// the same request from another request under the same key.
    pub async fn create_keyed(
        &self,
        new: NewCampaign,
        key: &str,
        body_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Created> {
        if let Some(answer) = self.earlier_request(key, body_sha256, now).await? {
            return Ok(answer);
        }
        let campaign = self.build(new, now).await?;
        self.stock.init_campaign(&campaign).await?;
        if self.db.insert_campaign_keyed(&campaign, key, body_sha256).await? {
            return Ok(Created::New(self.created(campaign, now)));
        }
        // A concurrent request with the key won; its campaign is the one
        // (the shards written here are unreachable, as after a crash
        // between the two writes of `create`).
        tracing::info!(campaign = %campaign.id, "idempotent create lost the race; answering the winner's campaign");
        Ok(self.earlier_request(key, body_sha256, now).await?.unwrap_or(Created::Conflict))
    }

    async fn earlier_request(&self, key: &str, body_sha256: &str, now: DateTime<Utc>) -> Result<Option<Created>> {
        let Some(earlier) = self.db.create_request(key).await? else { return Ok(None) };
        if earlier.body_sha256 != body_sha256 {
            return Ok(Some(Created::Conflict));
        }
        Ok(self.get(&earlier.campaign_id, now).await?.map(Created::Replayed))
    }

    /// One page of the list, newest first: campaigns older than `before`
    /// (the last id of the previous page), at most `limit`, and the cursor
    /// of the next page when there may be one.
    pub async fn list_page(
        &self,
        before: Option<&CampaignId>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<(Vec<CampaignView>, Option<CampaignId>)> {
        let mut rows = self.db.list_campaigns_before(before, limit + 1).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = more.then(|| rows.last().map(|c| c.id.clone())).flatten();
        let views = rows.into_iter().map(|c| self.view(Arc::new(c), now));
        Ok((futures_util::future::try_join_all(views).await?, next))
    }

    /// Applies a change (see `domain::change` for what may change).
    pub async fn patch(&self, id: &CampaignId, patch: &CampaignPatch, now: DateTime<Utc>) -> Result<Patched> {
        let Some(c) = self.db.get_campaign(id).await? else { return Ok(Patched::NotFound) };
        let claimed = match patch.total_stock {
            None => 0,
            Some(_) => match self.db.archive_state(id).await? {
                Some(archived) => archived.claimed,
                None => self.stock.shard_stats(&c).await?.iter().map(|s| s.claimed).sum(),
            },
        };
        let changes = match patch.decide(&c, claimed, now) {
            Ok(changes) => changes,
            Err(refused) => return Ok(Patched::Invalid(refused)),
        };
        if let Some(name) = &changes.name {
            self.db.rename_campaign(id, name).await?;
        }
        if let Some(ends_at) = changes.ends_at {
            // MySQL first: should the shards' write fail, the shards still
            // end claims at the old end (never later than MySQL says), and
            // the same PATCH again writes them.
            self.db.extend_campaign(id, ends_at).await?;
            let mut later = c.clone();
            later.ends_at = ends_at.max(c.ends_at);
            self.stock.set_end(&later).await?;
        }
        if let Some(total) = patch.total_stock.filter(|_| changes.top_up.is_some())
            && let Some(topup) = self.db.journal_top_up(id, total, now).await?
        {
            self.stock.top_up(&c, &topup.id, topup.units).await?;
            self.db.apply_top_up(&topup, Utc::now()).await?;
            tracing::info!(campaign = %id, units = topup.units, total, "campaign topped up");
        }
        self.changed(id).await;
        Ok(self.get(id, now).await?.map_or(Patched::NotFound, Patched::Done))
    }

    /// After a change: this instance's copy of the terms now, the others'
    /// through the notice.
    async fn changed(&self, id: &CampaignId) {
        self.refresh(id).await;
        if let Err(e) = self.stock.publish(&Notice::Changed(id.clone())).await {
            tracing::warn!(error = %e, campaign = %id, "could not broadcast the change");
        }
    }

    /// Reloads the cached terms of `id` (if cached: a campaign nobody
    /// claims here needs no copy), keeping its claim counters.
    pub async fn refresh(&self, id: &CampaignId) {
        if self.cache.get_stale(id).is_none() {
            return;
        }
        match self.db.get_campaign(id).await {
            Ok(Some(mut c)) => {
                if let Some(old) = self.cache.get_stale(id) {
                    c.tally = old.tally.clone();
                }
                self.cache.put(Arc::new(c));
            }
            Ok(None) => self.cache.forget(id),
            // The copy stays; it is refreshed within the TTL by the next
            // claim that gets past the fast paths.
            Err(e) => tracing::warn!(error = %e, campaign = %id, "could not reload the changed campaign"),
        }
    }

    /// Reloads every cached campaign that can still change (not closed):
    /// after the notice subscriber reconnected, it may have missed a
    /// `changed` notice.
    pub async fn refresh_all(&self) {
        for id in self.cache.open_ids() {
            self.refresh(&id).await;
        }
    }

    /// Finishes the top-ups journaled before `before` and never applied
    /// (their process died half-way). Returns how many it applied.
    pub async fn finish_top_ups(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut done = 0;
        for t in self.db.pending_top_ups(before, RECOVERY_BATCH).await? {
            let Some(c) = self.db.get_campaign(&t.campaign_id).await? else { continue };
            self.stock.top_up(&c, &t.id, t.units).await?;
            if self.db.apply_top_up(&t, Utc::now()).await? {
                tracing::warn!(campaign = %c.id, topup = %t.id, units = t.units, "finished a top-up left half-way");
                done += 1;
                self.changed(&c.id).await;
            }
        }
        Ok(done)
    }

    /// [`finish_top_ups`](Self::finish_top_ups) at once and then every
    /// `every`, for top-ups older than `age` (a live one takes
    /// milliseconds), until shutdown.
    pub async fn recover_top_ups(self, every: Duration, age: Duration, shutdown: CancellationToken) {
        loop {
            let before = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
            if let Err(e) = self.finish_top_ups(before).await {
                tracing::warn!(error = %e, "top-up recovery pass failed; retrying later");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
