//! Redeem and release events: from the `redemptions` table to the events
//! exchange.
//!
//! The history row is written in the transaction that decided the redeem or
//! release (see `db::redemptions`), so the table is a transactional outbox
//! and an event can never be lost by a crash between the decision and the
//! publish. This publisher, one per `serve`, sends unpublished rows in
//! batches with publisher confirms and only then stamps them `published_at`.
//! Delivery is at least once (two instances may send the same row, or a
//! crash between confirm and stamp resends it): consumers deduplicate by the
//! row `id`. Message shape, like the claim events:
//! `{"kind":"redemptions","redemptions":[{"id","action","coupon_id",...}]}`.
//!
//! Campaign lifecycle events (`db::lifecycle`) leave the same way, one
//! message each, routing key = kind: `campaign.started`, `campaign.sold_out`,
//! `campaign.closed`, `campaign.ended`, body
//! `{"kind","id":"<campaign_id>:<fact>","campaign_id","at"}` (`id` is the
//! same for every copy: deduplicate on it). Each pass first records the facts
//! that came due (sold out: every unit granted, read from Redis for the
//! campaigns started and not ended for long).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::lifecycle::LifecycleEvent;
use crate::db::redemptions::RedemptionEvent;
use crate::db::{Db, DbError};
use crate::metrics::PipelineMetrics;
use crate::queue::topology::Topology;
use crate::queue::{QueueError, amqp_call, open_confirmed_channel};
use crate::supervise::{Backoff, Supervised, pause_after_failure, supervise};

/// Rows per message.
pub const BATCH: u32 = 500;
/// Routing key of redemption events on the events exchange.
pub const REDEMPTION_ROUTING_KEY: &str = "redemption";
/// Look for unsent rows at least this often (a redeem also wakes it).
const POLL: Duration = Duration::from_secs(1);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publisher holds the lifecycle rows it is sending; past it
/// (the publisher died) another one sends them.
const LIFECYCLE_LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<lapin::Error> for EventsError {
    fn from(e: lapin::Error) -> Self {
        EventsError::Queue(QueueError::Amqp(e))
    }
}

/// `{"kind":"campaign.<fact>","id":"<campaign_id>:<fact>","campaign_id","at"}`.
pub fn lifecycle_body(e: &LifecycleEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": format!("campaign.{}", e.kind),
        "id": e.id(),
        "campaign_id": e.campaign_id,
        "at": crate::http::rfc3339(e.at),
    }))
    .expect("plain structs always serialize")
}

/// `{"kind":"redemptions","redemptions":[...]}`.
pub fn redemptions_body(events: &[RedemptionEvent]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "kind": "redemptions", "redemptions": events }))
        .expect("plain structs always serialize")
}

pub struct EventPublisher {
    db: Db,
    amqp: crate::backend::AmqpTarget,
    topology: Topology,
    wake: Arc<Notify>,
    metrics: Arc<PipelineMetrics>,
    /// Bound of every RabbitMQ call.
    amqp_timeout: Duration,
    /// Where sold out is read; `None`: no sold_out events from this one.
    stock: Option<crate::stock::StockStore>,
    /// This publisher's name on the lifecycle rows it leases.
    owner: String,
}

impl EventPublisher {
    /// `wake` is notified by the redeem service after each commit.
    pub fn new(
        db: Db,
        amqp_url: impl Into<crate::backend::AmqpTarget>,
        prefix: &str,
        wake: Arc<Notify>,
        metrics: Arc<PipelineMetrics>,
    ) -> Self {
        Self {
            db,
            amqp: amqp_url.into(),
            topology: Topology::new(prefix),
            wake,
            metrics,
            amqp_timeout: crate::queue::DEFAULT_AMQP_TIMEOUT,
            stock: None,
            owner: ulid::Ulid::new().to_string(),
        }
    }

    /// Also record sold-out facts, read from `stock`.
    pub fn with_stock(mut self, stock: crate::stock::StockStore) -> Self {
        self.stock = Some(stock);
        self
    }

    /// The same publisher with another bound on RabbitMQ calls.
    pub fn with_amqp_timeout(mut self, timeout: Duration) -> Self {
        self.amqp_timeout = timeout;
        self
    }

    /// Runs until `shutdown`, reconnecting with backoff; a last pass on
    /// shutdown sends what was committed before it.
    pub async fn run(self, shutdown: CancellationToken) {
        supervise("event publisher", &self.metrics.errors, &shutdown, &self).await;
        tracing::info!("event publisher stopped");
    }

    /// One broker connection. A refused batch (nacked: a consumer's queue
    /// is full or has no leader) is retried on the same connection after
    /// the next backoff delay; the rows stay unpublished meanwhile. Other
    /// broker errors end the session (reconnect).
    async fn run_session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), EventsError> {
        let t = self.amqp_timeout;
        let (conn, ch) = open_confirmed_channel(&self.amqp, &self.topology, t).await?;
        loop {
            loop {
                match self.pass(&ch).await {
                    Ok(n) => {
                        backoff.reset();
                        if n < BATCH as usize {
                            break;
                        }
                    }
                    Err(e @ EventsError::Queue(QueueError::Nacked(_))) => {
                        if !pause_after_failure("event publisher", &e, backoff, &self.metrics.errors, shutdown).await {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.pass(&ch).await?;
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Records the lifecycle facts now due and sends the unsent ones.
    async fn lifecycle_pass(&self, ch: &Channel) -> Result<usize, EventsError> {
        let now = Utc::now();
        self.db.record_due_lifecycle(now).await?;
        if let Some(stock) = &self.stock {
            let mut sold_out = Vec::new();
            for id in self.db.campaigns_selling(now).await? {
                let Some(c) = crate::domain::CampaignId::parse(&id) else { continue };
                let Some(c) = self.db.get_campaign(&c).await? else { continue };
                match stock.shard_stats(&c).await {
                    // Every unit granted (a close or the end does not grant
                    // units, so neither looks like a sell-out).
                    Ok(shards) if shards.iter().map(|s| s.claimed).sum::<u64>() >= c.total_stock => {
                        sold_out.push(LifecycleEvent { campaign_id: id, kind: "sold_out".into(), at: now });
                    }
                    Ok(_) => {}
                    // Looked at again next pass.
                    Err(e) => tracing::debug!(error = %e, campaign = %id, "sold-out check skipped"),
                }
            }
            self.db.record_lifecycle(&sold_out, now).await?;
        }
        let events = self.db.lease_unpublished_lifecycle(&self.owner, LIFECYCLE_LEASE, BATCH, Utc::now()).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(events.len());
        for e in &events {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(e.id().into());
            let routing = format!("campaign.{}", e.kind);
            confirms.push(
                amqp_call(
                    self.amqp_timeout,
                    ch.basic_publish(
                        self.topology.events_exchange.as_str().into(),
                        routing.as_str().into(),
                        BasicPublishOptions::default(),
                        &lifecycle_body(e),
                        props,
                    ),
                )
                .await?,
            );
        }
        for confirm in confirms {
            let c = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| QueueError::Timeout(CONFIRM_TIMEOUT))?
                .map_err(QueueError::Amqp)?;
            if !c.is_ack() {
                return Err(QueueError::Nacked("lifecycle events: nack".into()).into());
            }
        }
        self.db.mark_lifecycle_published(&events, Utc::now()).await?;
        Ok(events.len())
    }

    /// One pass: the redemption events, then the lifecycle events, each
    /// tried whatever the other's outcome (a consumer's queue that refuses
    /// one kind must not hold back the other; redemptions go first, as
    /// the older rows). The first error is the pass's.
    async fn pass(&self, ch: &Channel) -> Result<usize, EventsError> {
        let redemptions = self.redemptions_pass(ch).await;
        let lifecycle = self.lifecycle_pass(ch).await;
        Ok(redemptions? + lifecycle?)
    }

    /// Sends one batch of unsent redemption rows; returns how many.
    async fn redemptions_pass(&self, ch: &Channel) -> Result<usize, EventsError> {
        let events = self.db.unpublished_redemptions(BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
        let confirm = amqp_call(
            self.amqp_timeout,
            ch.basic_publish(
                self.topology.events_exchange.as_str().into(),
                REDEMPTION_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &redemptions_body(&events),
                props,
            ),
        )
        .await?;
        let c = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| QueueError::Timeout(CONFIRM_TIMEOUT))?
            .map_err(QueueError::Amqp)?;
        if !c.is_ack() {
            return Err(QueueError::Nacked("events: nack".into()).into());
        }
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        self.db.mark_published(&ids, Utc::now()).await?;
        Ok(events.len())
    }
}

impl Supervised for EventPublisher {
    type Error = EventsError;
    fn session<'a>(
        &'a self,
        shutdown: &'a CancellationToken,
        backoff: &'a mut Backoff,
    ) -> impl Future<Output = Result<(), EventsError>> + Send + 'a {
        self.run_session(shutdown, backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_claim_events_shape() {
        let e = RedemptionEvent {
            id: 7,
            action: "redeem".into(),
            coupon_id: "c".into(),
            campaign_id: "k".into(),
            user_id: "u".into(),
            order_id: "o".into(),
            discount_cents: 200,
            at_ms: 1,
        };
        let v: serde_json::Value = serde_json::from_slice(&redemptions_body(&[e])).unwrap();
        assert_eq!(v["kind"], "redemptions");
        assert_eq!(v["redemptions"][0]["action"], "redeem");
        assert_eq!(v["redemptions"][0]["discount_cents"], 200);
    }
}
