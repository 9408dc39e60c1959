//! Live figures pushed to browsers and phones (Server-Sent Events): the
//! console's stats of a drop (`GET /v1/campaigns/{id}/live`, admin) and the
//! app's status and coarse stock (`GET /v1/campaigns/{id}/events`, user).
//!
//! One producer per campaign per instance and kind, however many watch:
//! the first subscriber starts a task that reads the campaign (stats from
//! Redis and MySQL once a second for the console; status and remaining
//! from Redis at most four times a second for the app, and not at all
//! before the start or after the end) and puts the latest value in a
//! `tokio::sync::watch` channel; every subscriber's stream waits on its own
//! receiver. Subscribers cost no Redis or MySQL traffic of their own, only
//! their connection and a receiver, so 10,000 phones waiting for 20:00 on
//! one instance are one producer (memory per subscriber: BENCHMARKS.md).
//! A watch channel keeps only the latest value: a slow reader skips to it
//! instead of queueing (nothing grows without bound). The producer stops
//! when its last subscriber left (checked each tick, under the lock that
//! hands out receivers, so none is handed a dead channel), and every
//! producer stops at shutdown, which ends the streams (graceful shutdown
//! does not wait on open event streams).
//!
//! The number of campaigns with a producer is bounded
//! ([`MAX_FEEDS`] per kind): beyond it a new feed is refused (503), the
//! running ones are not disturbed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{CampaignService, CampaignStats, Result};
use crate::domain::{CampaignId, CampaignStatus};
use crate::stock::StockStore;

/// Campaigns with a running producer, per kind, at most.
pub const MAX_FEEDS: usize = 1_000;
/// The app's feed reads at most this often while the campaign is live.
pub const USER_TICK: Duration = Duration::from_millis(250);
/// Before the start and after the end it only watches the clock and the
/// terms (a close, a later end).
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// The console's feed, once a second (API.md: at least once a second).
pub const ADMIN_TICK: Duration = Duration::from_secs(1);

/// What the app sees: the status and the stock, rounded (`event: status`
/// of `GET /v1/campaigns/{id}/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = StatusEvent)]
pub struct UserEvent {
    pub status: CampaignStatus,
    /// Units left, rounded down to two significant digits (exact below 100;
    /// 0 only when none is left).
    pub remaining_approx: u64,
}

/// What the console sees each second.
#[derive(Debug, Clone)]
pub struct AdminFrame {
    pub at: DateTime<Utc>,
    pub stats: Arc<CampaignStats>,
    /// Claims of the campaign that reached this instance so far (every
    /// outcome): the console derives claims per second from it.
    pub attempts_here: u64,
}

/// Stock rounded for the app: exact below 100, else to two significant
/// digits, never 0 while a unit is left (0 means gone) and never more
/// precise than a shopper needs (it is a hint, not a count).
pub fn approx(remaining: u64) -> u64 {
    if remaining < 100 {
        return remaining;
    }
    let mut scale = 1;
    while remaining / scale >= 100 {
        scale *= 10;
    }
    (remaining / scale) * scale
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    /// [`MAX_FEEDS`] campaigns already have a producer here.
    TooManyFeeds,
}

type Feeds<T> = Mutex<HashMap<CampaignId, watch::Receiver<T>>>;

struct Inner {
    campaigns: CampaignService,
    stock: StockStore,
    user: Feeds<UserEvent>,
    admin: Feeds<Option<AdminFrame>>,
    shutdown: CancellationToken,
}

/// The producers of this instance; cheap to clone.
#[derive(Clone)]
pub struct LiveHub(Arc<Inner>);

impl LiveHub {
    pub fn new(campaigns: CampaignService, stock: StockStore, shutdown: CancellationToken) -> Self {
        Self(Arc::new(Inner { campaigns, stock, user: Mutex::default(), admin: Mutex::default(), shutdown }))
    }

    /// Ends every producer (and so every stream): at shutdown.
    pub fn shutdown(&self) {
        self.0.shutdown.cancel();
    }

    /// Producers running now (app feeds, console feeds).
    pub fn feeds(&self) -> (usize, usize) {
        fn n<T>(m: &Feeds<T>) -> usize {
            m.lock().unwrap_or_else(|e| e.into_inner()).len()
        }
        (n(&self.0.user), n(&self.0.admin))
    }

    /// A receiver of the app's feed of `id`; its current value is the
    /// latest state (read before the receiver is handed out).
    pub async fn user_events(
        &self,
        id: &CampaignId,
    ) -> Result<std::result::Result<watch::Receiver<UserEvent>, Refused>> {
        if let Some(rx) = running(&self.0.user, id) {
            return Ok(Ok(rx));
        }
        let Some(first) = self.user_event(id, None).await? else { return Ok(Err(Refused::NotFound)) };
        Ok(self.start(&self.0.user, id, first, |hub, id, tx| hub.clone().produce_user(id, tx)))
    }

    /// A receiver of the console's feed of `id` (`None` until the first
    /// frame is read, a moment after the first subscriber).
    pub async fn admin_frames(
        &self,
        id: &CampaignId,
    ) -> Result<std::result::Result<watch::Receiver<Option<AdminFrame>>, Refused>> {
        if let Some(rx) = running(&self.0.admin, id) {
            return Ok(Ok(rx));
        }
        if self.0.campaigns.find(id).await?.is_none() {
            return Ok(Err(Refused::NotFound));
        }
        Ok(self.start(&self.0.admin, id, None, |hub, id, tx| hub.clone().produce_admin(id, tx)))
    }

    /// Starts a producer for `id` unless one was started meanwhile.
    fn start<T: Send + Sync + 'static, F, Fut>(
        &self,
        feeds: &Feeds<T>,
        id: &CampaignId,
        first: T,
        produce: F,
    ) -> std::result::Result<watch::Receiver<T>, Refused>
    where
        F: FnOnce(&LiveHub, CampaignId, watch::Sender<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut map = feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(id).filter(|rx| rx.has_changed().is_ok()) {
            return Ok(rx.clone());
        }
        if map.len() >= MAX_FEEDS {
            return Err(Refused::TooManyFeeds);
        }
        let (tx, rx) = watch::channel(first);
        map.insert(id.clone(), rx.clone());
        tokio::spawn(produce(self, id.clone(), tx));
        Ok(rx)
    }

    /// The app's view of `id` now; `last` spares Redis when the window
    /// decides (before the start, after the end).
    async fn user_event(&self, id: &CampaignId, last: Option<UserEvent>) -> Result<Option<UserEvent>> {
        let Some(c) = self.0.campaigns.find(id).await? else { return Ok(None) };
        let now = Utc::now();
        let event = match c.status_at(now, false) {
            CampaignStatus::Scheduled => {
                UserEvent { status: CampaignStatus::Scheduled, remaining_approx: approx(c.total_stock) }
            }
            CampaignStatus::Ended => {
                UserEvent { status: CampaignStatus::Ended, remaining_approx: last.map_or(0, |l| l.remaining_approx) }
            }
            CampaignStatus::Live | CampaignStatus::SoldOut => {
                let remaining: u64 = self.0.stock.shard_stats(&c).await?.iter().map(|s| s.remaining).sum();
                UserEvent { status: c.status_at(now, remaining == 0), remaining_approx: approx(remaining) }
            }
        };
        Ok(Some(event))
    }

    async fn produce_user(self, id: CampaignId, tx: watch::Sender<UserEvent>) {
        loop {
            let last = *tx.borrow();
            let tick = if last.status == CampaignStatus::Live { USER_TICK } else { IDLE_TICK };
            tokio::select! {
                () = self.0.shutdown.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
            if last_subscriber_left(&self.0.user, &id, &tx) {
                return;
            }
            match self.user_event(&id, Some(last)).await {
                Ok(Some(event)) => {
                    tx.send_if_modified(|v| std::mem::replace(v, event) != event);
                }
                Ok(None) => return,
                // The subscribers keep the last value; the next tick retries.
                Err(e) => tracing::debug!(error = %e, campaign = %id, "app feed: could not read the campaign"),
            }
        }
    }

    async fn produce_admin(self, id: CampaignId, tx: watch::Sender<Option<AdminFrame>>) {
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    () = self.0.shutdown.cancelled() => return,
                    () = tokio::time::sleep(ADMIN_TICK) => {}
                }
            }
            first = false;
            if last_subscriber_left(&self.0.admin, &id, &tx) {
                return;
            }
            let now = Utc::now();
            match self.0.campaigns.stats(&id, now).await {
                Ok(Some(stats)) => {
                    let attempts_here = self.0.campaigns.cached(&id).map_or(0, |c| c.tally.total());
                    tx.send_replace(Some(AdminFrame { at: now, stats: Arc::new(stats), attempts_here }));
                }
                Ok(None) => return,
                Err(e) => tracing::debug!(error = %e, campaign = %id, "console feed: could not read the stats"),
            }
        }
    }
}

/// The receiver of a running producer, if there is one.
fn running<T>(feeds: &Feeds<T>, id: &CampaignId) -> Option<watch::Receiver<T>> {
    let map = feeds.lock().unwrap_or_else(|e| e.into_inner());
    map.get(id).filter(|rx| rx.has_changed().is_ok()).cloned()
}

/// True (and the feed removed) when only the map's own receiver is left.
/// Under the lock that hands out receivers: none can be cloned meanwhile.
fn last_subscriber_left<T>(feeds: &Feeds<T>, id: &CampaignId, tx: &watch::Sender<T>) -> bool {
    let mut map = feeds.lock().unwrap_or_else(|e| e.into_inner());
    if tx.receiver_count() > 1 {
        return false;
    }
    map.remove(id);
    true
}

#[cfg(test)]
mod tests {
    use super::approx;

    #[test]
    fn stock_is_rounded_down_to_two_digits_and_never_to_zero() {
        assert_eq!(approx(0), 0);
        assert_eq!(approx(1), 1);
        assert_eq!(approx(99), 99);
        assert_eq!(approx(100), 100);
        assert_eq!(approx(123), 120);
        assert_eq!(approx(9_999), 9_900);
        assert_eq!(approx(1_234_567), 1_200_000);
    }
}
