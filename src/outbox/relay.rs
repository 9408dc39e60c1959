//! The relay loop (see the module note of `outbox`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::topology::{CLAIM_ROUTING_KEY, Topology};
use super::{QueueError, amqp_call, open_confirmed_channel};
use crate::domain::CouponRecord;
use crate::metrics::{Backoff, PipelineMetrics, pause_after_failure};
use crate::stock::StockStore;

/// Entries read per stream per pass.
pub const BATCH: usize = 500;
/// Claims per message at most (records of all buckets read in one pass are
/// packed together).
pub const MESSAGE_CLAIMS: usize = 2000;
/// How often a relay looks for entries to take over.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// Idle polling interval bounds (no blocking reads on the shared connection).
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);
/// Upper bound to wait for one broker confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
}

impl From<lapin::Error> for RelayError {
    fn from(e: lapin::Error) -> Self {
        RelayError::Queue(QueueError::Amqp(e))
    }
}

/// The body of a claims message: `{"kind":"claims","claims":[record...]}`.
pub fn claims_body(records: &[&str]) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + records.iter().map(|r| r.len() + 1).sum::<usize>());
    body.extend_from_slice(br#"{"kind":"claims","claims":["#);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// One outbox entry: its stream id and raw record.
struct Entry {
    id: String,
    raw: Option<String>,
}

fn entry_of(s: StreamId) -> Entry {
    let raw = match s.map.get("r") {
        Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
        Some(Value::SimpleString(t)) => Some(t.clone()),
        _ => None,
    };
    Entry { id: s.id, raw }
}

/// Milliseconds part of a stream id ("1700000000000-3").
fn id_ms(id: &str) -> u64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

pub struct Relay {
    stock: StockStore,
    amqp_url: String,
    topology: Topology,
    group: String,
    consumer: String,
    metrics: Arc<PipelineMetrics>,
    ack: redis::Script,
    redis_timeout: Duration,
    /// Entries pending with another consumer for this long are taken over.
    reclaim_idle: Duration,
    /// Bound of every RabbitMQ call.
    amqp_timeout: Duration,
}

impl Relay {
    pub fn new(
        stock: StockStore,
        amqp_url: String,
        metrics: Arc<PipelineMetrics>,
        redis_timeout: Duration,
        reclaim_idle: Duration,
    ) -> Self {
        let prefix = stock.keys().prefix().to_owned();
        Self {
            stock,
            amqp_url,
            topology: Topology::new(&prefix),
            group: format!("{prefix}-relay"),
            consumer: format!("relay-{}", ulid::Ulid::new()),
            metrics,
            ack: redis::Script::new(include_str!("../../lua/ack.lua")),
            redis_timeout,
            reclaim_idle,
            amqp_timeout: crate::outbox::DEFAULT_AMQP_TIMEOUT,
        }
    }

    /// The same relay with another bound on RabbitMQ calls.
    pub fn with_amqp_timeout(mut self, timeout: Duration) -> Self {
        self.amqp_timeout = timeout;
        self
    }

    /// Runs until `shutdown`; reconnects with backoff on any failure. On
    /// shutdown the batch in hand is finished (published and acked) first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    if !pause_after_failure("outbox relay", &e, &mut backoff, &self.metrics.errors, &shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "outbox relay stopped");
    }

    async fn bounded<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, RelayError> {
        tokio::time::timeout(self.redis_timeout, fut).await.map_err(|_| RelayError::Timeout)?.map_err(Into::into)
    }

    async fn ensure_groups(&self, conn: &mut ClusterConnection) -> Result<(), RelayError> {
        for b in 0..self.stock.keys().buckets() {
            let r: redis::RedisResult<()> = self
                .bounded(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(self.stock.keys().outbox(b))
                        .arg(&self.group)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(conn),
                )
                .await
                .map(|_: ()| Ok(()))
                .unwrap_or_else(|e| match e {
                    RelayError::Redis(r) => Err(r),
                    _ => Ok(()),
                });
            if let Err(e) = r
                && e.code() != Some("BUSYGROUP")
            {
                return Err(e.into());
            }
        }
        Ok(())
    }

    async fn session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), RelayError> {
        let t = self.amqp_timeout;
        let (conn, ch) = open_confirmed_channel(&self.amqp_url, &self.topology, t).await?;
        let mut redis = self.stock.connection();
        self.ensure_groups(&mut redis).await?;
        tracing::info!(consumer = %self.consumer, "outbox relay connected");
        backoff.reset();

        // Each bucket has its own polling interval: a bucket that had entries
        // is read again on the next pass, an empty one backs off (doubling up
        // to POLL_MAX). During a drop only the buckets of the live shards are
        // hot; polling the other ~50 every pass would cost Redis more than
        // the claims do.
        let buckets = usize::from(self.stock.keys().buckets());
        let mut interval = vec![POLL_MIN; buckets];
        let mut due = vec![Instant::now(); buckets];
        let mut last_reclaim = Instant::now() - RECLAIM_EVERY;
        loop {
            if shutdown.is_cancelled() {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
            let now = Instant::now();
            let reclaim = last_reclaim.elapsed() >= RECLAIM_EVERY;
            if reclaim {
                last_reclaim = now;
            }
            let reads = (0..buckets).filter(|b| reclaim || due[*b] <= now).map(|b| {
                let mut c = redis.clone();
                async move { (b, self.read_bucket(&mut c, b as u16, reclaim).await) }
            });
            let mut work = Vec::new();
            let mut backlog = 0;
            for (b, r) in join_all(reads).await {
                let (entries, len) = r?;
                backlog += len;
                if entries.is_empty() {
                    interval[b] = (interval[b] * 2).min(POLL_MAX);
                } else {
                    interval[b] = POLL_MIN;
                    work.push((b as u16, entries));
                }
                due[b] = now + interval[b];
            }
            if reclaim {
                PipelineMetrics::set(&self.metrics.outbox_len, backlog);
            }
            if work.is_empty() {
                PipelineMetrics::set(&self.metrics.outbox_age_ms, 0);
                let next = due.iter().min().copied().unwrap_or(now + POLL_MAX).max(now + POLL_MIN);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep_until(next.into()) => {}
                }
                continue;
            }
            let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
            let oldest = work.iter().flat_map(|(_, es)| es.iter().map(|e| id_ms(&e.id))).min().unwrap_or(now_ms);
            PipelineMetrics::set(&self.metrics.outbox_age_ms, now_ms.saturating_sub(oldest));
            self.publish_and_ack(&ch, &redis, &work).await?;
        }
    }

    /// New entries of one bucket, plus (when `reclaim`) entries idle in a
    /// dead relay's hands and the stream's length.
    async fn read_bucket(
        &self,
        conn: &mut ClusterConnection,
        bucket: u16,
        reclaim: bool,
    ) -> Result<(Vec<Entry>, u64), RelayError> {
        let key = self.stock.keys().outbox(bucket);
        let mut entries = Vec::new();
        let mut len = 0;
        if reclaim {
            len = self.bounded(redis::cmd("XLEN").arg(&key).query_async(conn)).await?;
            let claimed: StreamAutoClaimReply = self
                .bounded(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(&self.group)
                        .arg(&self.consumer)
                        .arg(self.reclaim_idle.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(conn),
                )
                .await?;
            PipelineMetrics::add(&self.metrics.reclaimed, claimed.claimed.len() as u64);
            entries.extend(claimed.claimed.into_iter().map(entry_of));
            // Entries deleted while pending: just clear them from the group.
            for id in claimed.deleted_ids {
                entries.push(Entry { id, raw: None });
            }
        }
        if entries.len() < BATCH {
            let read: Option<StreamReadReply> = self
                .bounded(
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&self.group)
                        .arg(&self.consumer)
                        .arg("COUNT")
                        .arg(BATCH - entries.len())
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(conn),
                )
                .await?;
            if let Some(read) = read {
                entries.extend(read.keys.into_iter().flat_map(|k| k.ids).map(entry_of));
            }
        }
        Ok((entries, len))
    }

    async fn publish(&self, ch: &Channel, records: &[&str]) -> Result<(), RelayError> {
        let body = claims_body(records);
        let first_id = serde_json::from_str::<CouponRecord>(records[0]).map(|r| r.id).unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("x-claims"), AMQPValue::LongUInt(records.len() as u32));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(first_id.as_str().into())
            .with_headers(headers);
        let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
        let claims = amqp_call(
            self.amqp_timeout,
            ch.basic_publish(
                self.topology.claims_exchange.as_str().into(),
                CLAIM_ROUTING_KEY.into(),
                mandatory,
                &body,
                props.clone(),
            ),
        )
        .await?;
        let events = amqp_call(
            self.amqp_timeout,
            ch.basic_publish(
                self.topology.events_exchange.as_str().into(),
                "claim".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            ),
        )
        .await?;
        for (what, confirm) in [("claims", claims), ("events", events)] {
            let c = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| QueueError::Timeout(CONFIRM_TIMEOUT))?
                .map_err(QueueError::Amqp)?;
            if !c.is_ack() {
                return Err(QueueError::Nacked(format!("{what}: nack")).into());
            }
            if c.take_message().is_some() {
                return Err(QueueError::Nacked(format!("{what}: unroutable")).into());
            }
        }
        Ok(())
    }

    /// Publishes the records read in one pass, from all buckets together,
    /// as messages of up to [`MESSAGE_CLAIMS`] claims (fewer, larger messages:
    /// the broker's cost is mostly per message), waits for every confirm,
    /// then acks and deletes exactly those entries, bucket by bucket.
    async fn publish_and_ack(
        &self,
        ch: &Channel,
        redis: &ClusterConnection,
        work: &[(u16, Vec<Entry>)],
    ) -> Result<(), RelayError> {
        // Well-formed records travel together; a malformed one alone, so the
        // persist worker dead-letters only it.
        let mut good: Vec<&str> = Vec::new();
        let mut bad: Vec<&Entry> = Vec::new();
        for e in work.iter().flat_map(|(_, es)| es) {
            match e.raw.as_deref() {
                Some(raw) if CouponRecord::parse_checked(raw).is_ok() => good.push(raw),
                Some(_) => bad.push(e),
                None => {}
            }
        }
        let mut sends: Vec<Vec<&str>> = good.chunks(MESSAGE_CLAIMS).map(<[&str]>::to_vec).collect();
        for e in &bad {
            tracing::error!(entry = %e.id, "malformed outbox record; sending it to the dead-letter queue");
            sends.push(vec![e.raw.as_deref().unwrap_or_default()]);
        }
        for r in join_all(sends.iter().map(|records| self.publish(ch, records))).await {
            r?;
        }
        PipelineMetrics::add(&self.metrics.published_batches, sends.len() as u64);
        PipelineMetrics::add(&self.metrics.relayed, good.len() as u64);

        let acks = work.iter().map(|(bucket, entries)| {
            let mut conn = redis.clone();
            async move {
                let mut inv = self.ack.key(self.stock.keys().outbox(*bucket));
                inv.arg(&self.group);
                for e in entries {
                    inv.arg(&e.id);
                }
                self.bounded(inv.invoke_async::<i64>(&mut conn)).await
            }
        });
        for r in join_all(acks).await {
            r?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_a_json_batch() {
        let body = claims_body(&[r#"{"a":1}"#, r#"{"b":2}"#]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "claims");
        assert_eq!(v["claims"].as_array().unwrap().len(), 2);
        assert_eq!(id_ms("1700000000123-4"), 1_700_000_000_123);
        assert_eq!(id_ms("junk"), 0);
    }
}
