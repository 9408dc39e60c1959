//! The persist worker loop (see the module note of `persist`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::domain::{CampaignId, CouponId, CouponRecord, UserId};
use crate::metrics::{Backoff, PipelineMetrics, pause_after_failure};
use crate::outbox::topology::Topology;
use crate::outbox::{QueueError, amqp_call, open_confirmed_channel};

/// Messages the broker may hand us before we ack: each carries up to 2000
/// claims (`outbox::relay::MESSAGE_CLAIMS`), so at most ~64k claims are held
/// in memory.
pub const PREFETCH: u16 = 32;
/// A batch is written when it holds this many rows...
pub const MAX_BATCH_ROWS: usize = 5000;
/// ...or when no more messages arrived for this long.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Batches written concurrently (each in its own transaction): the next
/// batch is gathered and written while the previous one commits.
pub const WRITERS: usize = 2;
/// On shutdown the worker keeps consuming until the broker has handed it
/// nothing for this long (the relay has stopped by then in `serve`), so what
/// was published before the shutdown is committed and acked, not requeued.
pub const DRAIN_IDLE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the broker closed the consumer")]
    ConsumerClosed,
}

impl From<lapin::Error> for PersistError {
    fn from(e: lapin::Error) -> Self {
        PersistError::Queue(QueueError::Amqp(e))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimsMessage {
    kind: String,
    claims: Vec<CouponRecord>,
}

/// Claims a message says it carries (header `x-claims`; 1 when absent).
fn claims_in(d: &Delivery) -> usize {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-claims"))
        .and_then(|v| match v {
            AMQPValue::LongUInt(n) => Some(*n as usize),
            _ => None,
        })
        .unwrap_or(1)
}

/// Parses and checks a claims message; `Err` is the dead-letter reason.
pub fn parse_message(body: &[u8]) -> Result<Vec<CouponRecord>, String> {
    let m: ClaimsMessage = serde_json::from_slice(body).map_err(|e| format!("not a claims message: {e}"))?;
    if m.kind != "claims" {
        return Err(format!("unknown message kind {:?}", m.kind));
    }
    for r in &m.claims {
        if CouponId::parse(&r.id).is_none() {
            return Err(format!("bad coupon id {:?}", r.id));
        }
        if CampaignId::parse(&r.campaign_id).is_none() {
            return Err(format!("bad campaign id {:?}", r.campaign_id));
        }
        if UserId::parse(&r.user_id).is_none() {
            return Err(format!("bad user id in coupon {}", r.id));
        }
        let plausible = |ms: i64| (0..=253_402_300_799_000).contains(&ms);
        if !(plausible(r.claimed_at_ms) && plausible(r.valid_from_ms) && plausible(r.valid_until_ms)) {
            return Err(format!("times out of range in coupon {}", r.id));
        }
    }
    Ok(m.claims)
}

pub struct PersistWorker {
    db: Db,
    amqp_url: String,
    topology: Topology,
    metrics: Arc<PipelineMetrics>,
    /// Bound of every RabbitMQ call.
    amqp_timeout: Duration,
}

impl PersistWorker {
    pub fn new(db: Db, amqp_url: String, prefix: &str, metrics: Arc<PipelineMetrics>) -> Self {
        Self {
            db,
            amqp_url,
            topology: Topology::new(prefix),
            metrics,
            amqp_timeout: crate::outbox::DEFAULT_AMQP_TIMEOUT,
        }
    }

    /// The same worker with another bound on RabbitMQ calls.
    pub fn with_amqp_timeout(mut self, timeout: Duration) -> Self {
        self.amqp_timeout = timeout;
        self
    }

    /// Runs until `shutdown`, reconnecting with backoff. On shutdown it first
    /// drains: takes what the broker still delivers until it has been idle
    /// for [`DRAIN_IDLE`], writes it and acks it (the caller bounds the time).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    if !pause_after_failure("persist worker", &e, &mut backoff, &self.metrics.errors, &shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("persist worker stopped");
    }

    async fn session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), PersistError> {
        let t = self.amqp_timeout;
        let (conn, ch) = open_confirmed_channel(&self.amqp_url, &self.topology, t).await?;
        amqp_call(t, ch.basic_qos(PREFETCH, BasicQosOptions::default())).await?;
        let mut consumer = amqp_call(
            t,
            ch.basic_consume(
                self.topology.claims_queue.as_str().into(),
                format!("persist-{}", ulid::Ulid::new()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        tracing::info!(queue = %self.topology.claims_queue, "persist worker consuming");
        backoff.reset();
        // Batches being written: while one is in the database the next one
        // is gathered (bounded by WRITERS, and by the prefetch overall).
        let mut writing: std::collections::VecDeque<tokio::task::JoinHandle<Result<bool, PersistError>>> =
            std::collections::VecDeque::new();
        loop {
            let first = if shutdown.is_cancelled() {
                tokio::time::timeout(DRAIN_IDLE, consumer.next()).await.ok()
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => tokio::time::timeout(DRAIN_IDLE, consumer.next()).await.ok(),
                    d = consumer.next() => Some(d),
                }
            };
            let Some(first) = first else {
                for w in writing {
                    let _ = w.await;
                }
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            };
            let mut batch = vec![first.ok_or(PersistError::ConsumerClosed)??];
            self.fill(&mut consumer, &mut batch).await?;
            let (records, good) = self.prepare(&ch, batch).await?;
            while writing.len() >= WRITERS {
                let done = writing.pop_front().expect("non-empty");
                if !done.await.unwrap_or(Ok(false))? {
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
            }
            writing.push_back(tokio::spawn(write_and_ack(
                self.db.clone(),
                self.metrics.clone(),
                records,
                good,
                shutdown.clone(),
                self.amqp_timeout,
            )));
        }
    }

    /// Adds deliveries already waiting, up to the batch limits.
    async fn fill(&self, consumer: &mut Consumer, batch: &mut Vec<Delivery>) -> Result<(), PersistError> {
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        let mut rows: usize = batch.iter().map(claims_in).sum();
        while rows < MAX_BATCH_ROWS && batch.len() < usize::from(PREFETCH) / 2 {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Err(_) => break,
                Ok(None) => return Err(PersistError::ConsumerClosed),
                Ok(Some(d)) => {
                    let d = d?;
                    rows += claims_in(&d);
                    batch.push(d);
                }
            }
        }
        Ok(())
    }

    /// Parses a batch: the claim records and the deliveries they came from;
    /// poison messages are dead-lettered on the way.
    async fn prepare(
        &self,
        ch: &Channel,
        batch: Vec<Delivery>,
    ) -> Result<(Vec<CouponRecord>, Vec<Delivery>), PersistError> {
        let mut good = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for d in batch {
            match parse_message(&d.data) {
                Ok(rs) => {
                    records.extend(rs);
                    good.push(d);
                }
                Err(reason) => self.dead_letter(ch, d, &reason).await?,
            }
        }
        Ok((records, good))
    }

    /// Republishes `d` to the dead-letter exchange with the reason, then
    /// acks it: nothing is dropped silently, and the worker goes on.
    async fn dead_letter(&self, ch: &Channel, d: Delivery, reason: &str) -> Result<(), PersistError> {
        tracing::error!(%reason, "dead-lettering a message from the claims queue");
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from("x-flashgrab-reason"), AMQPValue::LongString(LongString::from(reason)));
        headers.insert(
            ShortString::from("x-flashgrab-queue"),
            AMQPValue::LongString(LongString::from(self.topology.claims_queue.as_str())),
        );
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let t = self.amqp_timeout;
        let publish = amqp_call(
            t,
            ch.basic_publish(
                self.topology.dead_letter_exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &d.data,
                props,
            ),
        )
        .await?;
        let confirm = amqp_call(t, publish).await?;
        if !confirm.is_ack() {
            return Err(QueueError::Nacked("dead-letter publish".into()).into());
        }
        PipelineMetrics::add(&self.metrics.dead_lettered, 1);
        amqp_call(t, d.ack(BasicAckOptions::default())).await?;
        Ok(())
    }
}

/// Writes a batch (retrying until MySQL takes it) and then acks its
/// messages. Returns false when shutdown came while MySQL was unreachable:
/// nothing is acked then, and the broker redelivers the messages later.
async fn write_and_ack(
    db: Db,
    metrics: Arc<PipelineMetrics>,
    records: Vec<CouponRecord>,
    good: Vec<Delivery>,
    shutdown: CancellationToken,
    amqp_timeout: Duration,
) -> Result<bool, PersistError> {
    let mut backoff = Backoff::default();
    loop {
        match db.insert_coupons(&records).await {
            Ok(_new) => break,
            Err(e) => {
                PipelineMetrics::add(&metrics.errors, 1);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, rows = records.len(), retry_in = ?delay, "cannot write claims to mysql; will retry");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(false),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    let lag = records.iter().map(|r| now - r.claimed_at_ms).max().unwrap_or(0).max(0) as u64;
    PipelineMetrics::set(&metrics.persist_lag_ms, lag);
    PipelineMetrics::add(&metrics.persisted, records.len() as u64);
    for d in good {
        amqp_call(amqp_timeout, d.ack(BasicAckOptions::default())).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_claims_and_refuses_poison() {
        let rec = r#"{"id":"01JD0000000000000000000000","campaign_id":"01JD0000000000000000000001","user_id":"u","shard":0,"claimed_at_ms":1,"valid_from_ms":1,"valid_until_ms":2}"#;
        assert_eq!(parse_message(format!(r#"{{"kind":"claims","claims":[{rec}]}}"#).as_bytes()).unwrap().len(), 1);
        for poison in [
            "garbage".to_owned(),
            r#"{"kind":"claims"}"#.to_owned(),
            r#"{"kind":"other","claims":[]}"#.to_owned(),
            format!(r#"{{"kind":"claims","claims":[{}]}}"#, rec.replace("\"u\"", &format!("\"{}\"", "x".repeat(65)))),
            format!(r#"{{"kind":"claims","claims":[{}]}}"#, rec.replace("01JD0000000000000000000000", "nope")),
        ] {
            assert!(parse_message(poison.as_bytes()).is_err(), "{poison}");
        }
    }
}
