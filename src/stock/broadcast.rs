//! Notices between instances over Redis pub/sub: "campaign X sold out",
//! "campaign X was closed", "campaign X changed" (`PATCH`).
//!
//! Each instance keeps in memory what lets it answer without Redis (the
//! sold-out set, the campaign cache). When one instance learns that a
//! campaign sold out (every shard empty, two scans, see `stock::rebalance`)
//! or closed it, it publishes a notice on `<prefix>:notices`; every instance
//! (itself included) applies it. In a Redis Cluster a PUBLISH on any node
//! reaches the subscribers of every node (the cluster bus forwards it), so
//! the subscriber holds one plain connection to one node of the configured
//! list, and moves to the next one when that connection fails.
//!
//! Pub/sub is fire-and-forget: a notice sent while an instance is
//! reconnecting is lost to it. That costs speed, never correctness: the
//! claim script enforces the window and the `closed` flag, and an instance
//! that missed a sell-out finds it out itself on the next claim (one script
//! call), exactly as it would with no broadcast. Each (re)subscription is
//! reported to the instance (`Notice::Resubscribed`), which then forgets its
//! sell-outs and reloads its open campaigns' terms: what a missed `changed`
//! notice would have told it.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Result, StockStore};
use crate::domain::CampaignId;
use crate::supervise::Backoff;

/// What an instance tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Every shard was seen empty with nothing in flight: no stock ever
    /// comes back (no restocking; transfers conserve units).
    SoldOut(CampaignId),
    /// The campaign was closed by an admin.
    Closed(CampaignId),
    /// The campaign's terms changed (`PATCH`: a name, a later end, a
    /// top-up): reload them, and forget a sell-out (a top-up brings stock
    /// back).
    Changed(CampaignId),
    /// Not sent by anyone: handed to `apply` after every (re)subscription,
    /// since notices sent while the subscriber was away are lost to it.
    Resubscribed,
}

impl Notice {
    pub fn encode(&self) -> String {
        match self {
            Notice::SoldOut(id) => format!("sold_out {id}"),
            Notice::Closed(id) => format!("closed {id}"),
            Notice::Changed(id) => format!("changed {id}"),
            Notice::Resubscribed => "resubscribed".to_owned(),
        }
    }

    /// `None` for anything that is not a notice of ours.
    pub fn decode(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(' ')?;
        let id = CampaignId::parse(id)?;
        match kind {
            "sold_out" => Some(Notice::SoldOut(id)),
            "closed" => Some(Notice::Closed(id)),
            "changed" => Some(Notice::Changed(id)),
            _ => None,
        }
    }
}

/// The channel of a deployment (its key prefix keeps test runs apart).
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:notices")
}

impl StockStore {
    /// Publishes `notice` to every instance of this prefix (this one too).
    pub async fn publish(&self, notice: &Notice) -> Result<()> {
        let mut c = self.conn.get();
        let _receivers: i64 = self
            .bounded(
                None,
                redis::cmd("PUBLISH").arg(channel(self.keys.prefix())).arg(notice.encode()).query_async(&mut c),
            )
            .await?;
        Ok(())
    }
}

/// Listens for notices until shutdown; see the module note.
pub struct Subscriber {
    redis: crate::backend::RedisTarget,
    channel: String,
    timeout: Duration,
}

impl Subscriber {
    pub fn new(nodes: &[String], prefix: &str, timeout: Duration) -> Self {
        Self::to(crate::backend::RedisTarget::plain(nodes), prefix, timeout)
    }

    /// A subscriber of the nodes of `redis` (TLS with its CA if set).
    pub fn to(redis: crate::backend::RedisTarget, prefix: &str, timeout: Duration) -> Self {
        Self { redis, channel: channel(prefix), timeout }
    }

    /// Calls `apply` for every notice received; reconnects (to the next
    /// node, with backoff) whenever the connection ends.
    pub async fn run(self, apply: impl Fn(Notice) + Send + Sync, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut next = 0usize;
        while !shutdown.is_cancelled() {
            let node = &self.redis.nodes[next % self.redis.nodes.len()];
            let shown = crate::backend::redact(node);
            next += 1;
            match self.listen(node, &apply, &shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, node = %shown, retry_in = ?delay, "notice subscriber interrupted");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One subscription on `node`: `Ok` on shutdown, `Err` when it failed.
    async fn listen(
        &self,
        node: &str,
        apply: &(impl Fn(Notice) + Send + Sync),
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> std::result::Result<(), redis::RedisError> {
        let client = self.redis.node_client(node)?;
        let timed_out = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let mut pubsub =
            tokio::time::timeout(self.timeout, client.get_async_pubsub()).await.map_err(|_| timed_out())??;
        tokio::time::timeout(self.timeout, pubsub.subscribe(&self.channel)).await.map_err(|_| timed_out())??;
        tracing::debug!(node = %crate::backend::redact(node), channel = %self.channel, "listening for notices");
        backoff.reset();
        apply(Notice::Resubscribed);
        let mut messages = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            let Some(msg) = msg else {
                return Err(redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
            };
            match std::str::from_utf8(msg.get_payload_bytes()).ok().and_then(Notice::decode) {
                Some(notice) => apply(notice),
                None => tracing::warn!(channel = %self.channel, "ignored a malformed notice"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_junk_is_refused() {
        let id = CampaignId::generate();
        for n in [Notice::SoldOut(id.clone()), Notice::Closed(id.clone()), Notice::Changed(id.clone())] {
            assert_eq!(Notice::decode(&n.encode()), Some(n));
        }
        for junk in ["", "sold_out", "sold_out nope", "restock 01JD0000000000000000000000", "closed  x"] {
            assert_eq!(Notice::decode(junk), None, "{junk:?}");
        }
    }
}
