//! The relay loop (see the module note of `outbox`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
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
use crate::metrics::{Backoff, LogEvery, PipelineMetrics, pause_after_failure};
use crate::stock::holdings::IndexWrites;
use crate::stock::{Durability, StockError, StockStore};

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
/// After the first read of a pass ends, the others that end within this
/// are taken in the same pass (healthy reads end together).
const GATHER: Duration = Duration::from_millis(5);
/// Upper bound for a pass's holdings index writes (what is not written by
/// then counts as one failure; the entries are acked anyway).
const INDEX_WAIT: Duration = Duration::from_millis(500);
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

/// The key of the tiny write that makes a gated read's WAIT cover every
/// entry it returned: same hash tag (slot) as the outbox stream.
fn relay_wait_key(outbox: &str) -> String {
    format!("{}:relaywait", outbox.strip_suffix(":outbox").unwrap_or(outbox))
}

fn protocol(what: String) -> RelayError {
    RelayError::Redis(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "unexpected reply", what)))
}

/// The entries of an `XREADGROUP` reply on one stream: nil (none), or
/// `[[stream, [[id, fields], ...]]]` (a map in RESP3). A history read
/// (`0`) answers an entry deleted while pending with nil fields: it comes
/// back without a record and is only cleared from the group.
fn stream_entries(v: Value) -> Result<Vec<Entry>, RelayError> {
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(protocol(format!("XREADGROUP answered {other:?}"))),
    };
    let mut out = Vec::new();
    for ids in streams {
        let Value::Array(ids) = ids else { continue };
        for e in ids {
            let Value::Array(mut parts) = e else {
                return Err(protocol(format!("stream entry {e:?}")));
            };
            if parts.len() != 2 {
                return Err(protocol(format!("stream entry {parts:?}")));
            }
            let fields = parts.pop().unwrap_or(Value::Nil);
            let id: String =
                redis::from_redis_value(parts.pop().unwrap_or(Value::Nil)).map_err(redis::RedisError::from)?;
            let pairs: Vec<(Value, Value)> = match fields {
                Value::Array(flat) => {
                    let mut it = flat.into_iter();
                    std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
                }
                Value::Map(pairs) => pairs,
                _ => Vec::new(),
            };
            let raw = pairs.into_iter().find_map(|(k, v)| {
                let is_r =
                    matches!(&k, Value::BulkString(b) if b == b"r") || matches!(&k, Value::SimpleString(s) if s == "r");
                if !is_r {
                    return None;
                }
                match v {
                    Value::BulkString(b) => String::from_utf8(b).ok(),
                    Value::SimpleString(t) => Some(t),
                    _ => None,
                }
            });
            out.push(Entry { id, raw });
        }
    }
    Ok(out)
}

/// Milliseconds part of a stream id ("1700000000000-3").
fn id_ms(id: &str) -> u64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

pub struct Relay {
    stock: StockStore,
    amqp: crate::backend::AmqpTarget,
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
    /// `replicated` mode: per bucket, whether this consumer may hold
    /// unshipped entries of it ([`COLD`], [`HOT`], [`HELD`]). Kept across
    /// sessions: entries read and not acked stay in this consumer's pending
    /// list through a reconnect.
    gate: Vec<AtomicU8>,
    /// Throttles the "holdings index not written" warning (a master down
    /// fails it on every pass).
    index_log: LogEvery,
}

/// A bucket this consumer holds nothing of: read as in `fast` mode.
const COLD: u8 = 0;
/// A bucket this consumer may hold entries of: read through the gate.
const HOT: u8 = 1;
/// As [`HOT`], and the last gate found no replica acknowledging.
const HELD: u8 = 2;

impl Relay {
    pub fn new(
        stock: StockStore,
        amqp_url: impl Into<crate::backend::AmqpTarget>,
        metrics: Arc<PipelineMetrics>,
        redis_timeout: Duration,
        reclaim_idle: Duration,
    ) -> Self {
        let prefix = stock.keys().prefix().to_owned();
        let gate = (0..stock.keys().buckets()).map(|_| AtomicU8::new(COLD)).collect();
        Self {
            stock,
            amqp: amqp_url.into(),
            topology: Topology::new(&prefix),
            group: format!("{prefix}-relay"),
            consumer: format!("relay-{}", ulid::Ulid::new()),
            metrics,
            ack: redis::Script::new(include_str!("../../lua/ack.lua")),
            redis_timeout,
            reclaim_idle,
            amqp_timeout: crate::outbox::DEFAULT_AMQP_TIMEOUT,
            gate,
            index_log: LogEvery::new(),
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
            let started = Instant::now();
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    backoff.after_session(started.elapsed());
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

    /// Creates the consumer group of one bucket's stream (and the stream),
    /// if missing.
    async fn ensure_group(&self, conn: &mut ClusterConnection, bucket: u16) -> Result<(), RelayError> {
        let created: Result<(), RelayError> = self
            .bounded(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.stock.keys().outbox(bucket))
                    .arg(&self.group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(conn),
            )
            .await;
        match created {
            Err(RelayError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            r => r,
        }
    }

    /// One bucket's read as the session runs it: the group first if it is
    /// not known to exist, then [`Relay::read_bucket`].
    async fn read_one(&self, mut conn: ClusterConnection, bucket: u16, group: bool, reclaim: bool) -> BucketRead {
        if group && let Err(e) = self.ensure_group(&mut conn, bucket).await {
            return BucketRead { bucket, reclaim, result: Err(e) };
        }
        BucketRead { bucket, reclaim, result: self.read_bucket(&mut conn, bucket, reclaim).await }
    }

    /// One connection to the broker: reads, publishes and acks until
    /// `shutdown` or a broker error.
    ///
    /// Buckets are independent. Each one's read is its own future, kept
    /// across passes until it ends: a pass takes the reads that finished
    /// (the first, and whatever finishes within [`GATHER`] of it), so a
    /// bucket whose master hangs holds back nobody but itself. A bucket
    /// whose read or ack fails is retried on its own backoff (jittered,
    /// 100 ms to 5 s) while the others go on; the failures of a pass are
    /// logged in one line, at most once a second. Only the broker failing
    /// ends the session: then nothing can be relayed anyway.
    async fn session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), RelayError> {
        let t = self.amqp_timeout;
        let (conn, ch) = open_confirmed_channel(&self.amqp, &self.topology, t).await?;
        let mut events = EventsChannel::open(&conn, t).await;
        tracing::info!(consumer = %self.consumer, "outbox relay connected");

        // Each bucket has its own polling interval: a bucket that had entries
        // is read again on the next pass, an empty one backs off (doubling up
        // to POLL_MAX). During a drop only the buckets of the live shards are
        // hot; polling the other ~50 every pass would cost Redis more than
        // the claims do.
        let buckets = usize::from(self.stock.keys().buckets());
        let mut b: Vec<BucketState> = (0..buckets).map(|_| BucketState::new()).collect();
        let mut reads: FuturesUnordered<Pin<Box<dyn Future<Output = BucketRead> + Send + '_>>> =
            FuturesUnordered::new();
        let failures_log = LogEvery::new();
        loop {
            let stopping = shutdown.is_cancelled();
            if stopping && reads.is_empty() {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
            let now = Instant::now();
            if !stopping {
                for (i, st) in b.iter_mut().enumerate().filter(|(_, st)| !st.reading && st.due <= now) {
                    let reclaim = now.duration_since(st.last_reclaim) >= RECLAIM_EVERY;
                    if reclaim {
                        st.last_reclaim = now;
                    }
                    st.reading = true;
                    // The store's current connection, not one kept for the
                    // session: the store rebuilds its connection when trouble
                    // lasts (`stock::reconnect`), and a session holding the old
                    // one timed out on every read after connections were
                    // killed (found by the connection-reset fault tests).
                    let redis = self.stock.connection();
                    reads.push(Box::pin(self.read_one(redis, i as u16, st.needs_group, reclaim)));
                }
            }
            let next_due = b.iter().filter(|st| !st.reading).map(|st| st.due).min();
            let first = tokio::select! {
                () = shutdown.cancelled(), if !stopping => continue,
                () = sleep_until_or_forever(next_due), if !stopping => continue,
                r = reads.next(), if !reads.is_empty() => r,
                () = sleep_until_or_forever(next_due), if reads.is_empty() => continue,
            };
            let mut done: Vec<BucketRead> = first.into_iter().collect();
            let gather_until = tokio::time::Instant::now() + GATHER;
            while !reads.is_empty() {
                match tokio::time::timeout_at(gather_until, reads.next()).await {
                    Ok(Some(r)) => done.push(r),
                    _ => break,
                }
            }

            let now = Instant::now();
            let mut work = Vec::new();
            let mut failed: Vec<(u16, RelayError)> = Vec::new();
            let mut lengths_changed = false;
            for read in done {
                let st = &mut b[usize::from(read.bucket)];
                st.reading = false;
                match read.result {
                    Ok((entries, len)) => {
                        st.needs_group = false;
                        st.retry.reset();
                        if read.reclaim {
                            st.len = len;
                            lengths_changed = true;
                        }
                        if entries.is_empty() {
                            st.interval = (st.interval * 2).min(POLL_MAX);
                        } else {
                            st.interval = POLL_MIN;
                            work.push((read.bucket, entries));
                        }
                        st.due = now + st.interval;
                    }
                    Err(e) => {
                        st.fail(&e, now);
                        failed.push((read.bucket, e));
                    }
                }
            }
            if lengths_changed {
                PipelineMetrics::set(&self.metrics.outbox_len, b.iter().map(|st| st.len).sum());
            }
            if !work.is_empty() {
                let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let oldest = work.iter().flat_map(|(_, es)| es.iter().map(|e| id_ms(&e.id))).min().unwrap_or(now_ms);
                PipelineMetrics::set(&self.metrics.outbox_age_ms, now_ms.saturating_sub(oldest));
                let ack_failed = self.publish_and_ack(&ch, &mut events, &conn, &work).await?;
                backoff.reset();
                for (bucket, e) in ack_failed {
                    b[usize::from(bucket)].fail(&e, Instant::now());
                    failed.push((bucket, e));
                }
            } else {
                PipelineMetrics::set(&self.metrics.outbox_age_ms, 0);
            }
            if !failed.is_empty() {
                PipelineMetrics::add(&self.metrics.errors, failed.len() as u64);
                if let Some(skipped) = failures_log.allow() {
                    let buckets: Vec<u16> = failed.iter().map(|(b, _)| *b).collect();
                    let (_, first) = &failed[0];
                    tracing::warn!(
                        ?buckets,
                        error = %first,
                        skipped,
                        "outbox buckets unreachable; retrying them with backoff, the others go on"
                    );
                }
            }
        }
    }

    /// New entries of one bucket, plus (when `reclaim`) entries idle in a
    /// dead relay's hands and the stream's length. In `replicated` mode only
    /// entries a replica acknowledged (see [`Relay::read_bucket_acked`]).
    async fn read_bucket(
        &self,
        conn: &mut ClusterConnection,
        bucket: u16,
        reclaim: bool,
    ) -> Result<(Vec<Entry>, u64), RelayError> {
        match self.stock.durability() {
            Durability::Fast => self.read_bucket_plain(conn, bucket, reclaim).await,
            Durability::Replicated { wait } => self.read_bucket_acked(conn, bucket, reclaim, wait).await,
        }
    }

    /// The read of `fast` mode: `XLEN` and `XAUTOCLAIM` (when `reclaim`),
    /// then `XREADGROUP >`, one round trip each.
    async fn read_bucket_plain(
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

    /// `replicated` mode: the entries of one bucket that a replica has, so
    /// that nothing leaves Redis that a failover could make Redis forget
    /// (MySQL would hold a row for a unit Redis sells again).
    ///
    /// A cold bucket (this consumer holds nothing of it) is read as in
    /// `fast` mode, no write and no WAIT: idle buckets cost nothing more.
    /// Whatever that read returns is only moved into this consumer's
    /// pending list, not shipped; the gated read follows at once.
    ///
    /// The gated read is ONE pipeline to the bucket's slot: [`XLEN`,
    /// `XAUTOCLAIM` when reclaiming] `XREADGROUP ... 0` (this consumer's
    /// own pending entries: held back before, or read by the cold read),
    /// `XREADGROUP >`, a tiny write on the same slot (`HSET
    /// {tag}:relaywait t <ms>`), `WAIT 1 <wait>`. One pipeline is one node
    /// and one connection, in order; WAIT counts the replicas that
    /// acknowledged the connection's last write, the HSET, which comes after
    /// every entry returned (a history read propagates nothing, so without
    /// the write the WAIT would prove nothing for it). A retried or
    /// redirected pipeline runs whole on the new node and ships what that
    /// node returned and its replica acknowledged. Fewer than one replica:
    /// nothing of the bucket is shipped this pass; the entries stay pending
    /// here and come back through the next gated read.
    async fn read_bucket_acked(
        &self,
        conn: &mut ClusterConnection,
        bucket: u16,
        reclaim: bool,
        wait: Duration,
    ) -> Result<(Vec<Entry>, u64), RelayError> {
        let state = &self.gate[usize::from(bucket)];
        let mut len = 0;
        let mut reclaim_in_gate = reclaim;
        if state.load(Ordering::Relaxed) == COLD {
            let (found, l) = self.read_bucket_plain(conn, bucket, reclaim).await?;
            if found.is_empty() {
                return Ok((found, l));
            }
            len = l;
            reclaim_in_gate = false;
            state.store(HOT, Ordering::Relaxed);
        }
        let key = self.stock.keys().outbox(bucket);
        let read = |from: &str| {
            let mut c = redis::cmd("XREADGROUP");
            c.arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("STREAMS")
                .arg(&key)
                .arg(from);
            c
        };
        let mut pipe = redis::pipe();
        if reclaim_in_gate {
            pipe.cmd("XLEN").arg(&key);
            pipe.cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.reclaim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(BATCH);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        pipe.add_command(read("0")).add_command(read(">"));
        pipe.cmd("HSET").arg(relay_wait_key(&key)).arg("t").arg(now_ms).ignore();
        pipe.cmd("WAIT").arg(1).arg(wait.as_millis() as u64);
        let mut replies: Vec<Value> = self.bounded(pipe.query_async(conn)).await?;
        let acked = match replies.pop() {
            Some(Value::Int(n)) => n,
            other => return Err(protocol(format!("WAIT answered {other:?}"))),
        };
        let mut replies = replies.into_iter();
        let mut entries = Vec::new();
        if reclaim_in_gate {
            len = redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).map_err(redis::RedisError::from)?;
            let claimed: StreamAutoClaimReply =
                redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).map_err(redis::RedisError::from)?;
            PipelineMetrics::add(&self.metrics.reclaimed, claimed.claimed.len() as u64);
            entries.extend(claimed.claimed.into_iter().map(entry_of));
            entries.extend(claimed.deleted_ids.into_iter().map(|id| Entry { id, raw: None }));
        }
        for reply in replies {
            entries.extend(stream_entries(reply)?);
        }
        // Own pending and XAUTOCLAIM can return the same entry (ours, idle).
        let mut seen = HashSet::new();
        entries.retain(|e| seen.insert(e.id.clone()));
        if entries.is_empty() {
            state.store(COLD, Ordering::Relaxed);
            return Ok((entries, len));
        }
        if acked < 1 {
            PipelineMetrics::add(&self.metrics.unreplicated, entries.len() as u64);
            if state.swap(HELD, Ordering::Relaxed) != HELD {
                tracing::warn!(
                    bucket,
                    entries = entries.len(),
                    ?wait,
                    "no replica acknowledged the outbox: holding its entries back"
                );
            }
            return Ok((Vec::new(), len));
        }
        if state.swap(HOT, Ordering::Relaxed) == HELD {
            tracing::info!(
                bucket,
                entries = entries.len(),
                "a replica acknowledged the outbox again: relaying the entries held back"
            );
        }
        Ok((entries, len))
    }

    /// Publishes one claims message and waits for its confirm (the only
    /// thing the ack of the outbox entries depends on); then sends the same
    /// body to the events fan-out, best effort (see [`EventsChannel`]).
    async fn publish(&self, ch: &Channel, events: &EventsChannel, records: &[&str]) -> Result<(), RelayError> {
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
        let confirm = amqp_call(
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
        let c = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| QueueError::Timeout(CONFIRM_TIMEOUT))?
            .map_err(QueueError::Amqp)?;
        if !c.is_ack() {
            return Err(QueueError::Nacked("claims: nack".into()).into());
        }
        if c.take_message().is_some() {
            return Err(QueueError::Nacked("claims: unroutable".into()).into());
        }
        events.send(self, &body, props).await;
        Ok(())
    }

    /// Publishes the records read in one pass, from all buckets together,
    /// as messages of up to [`MESSAGE_CLAIMS`] claims (fewer, larger messages:
    /// the broker's cost is mostly per message), waits for every claims
    /// confirm, then acks and deletes exactly those entries, bucket by
    /// bucket. A broker failure is the error; the buckets whose ack failed
    /// are returned (their entries stay pending with this consumer and are
    /// taken over by `XAUTOCLAIM` after the idle time, sent again: the
    /// persist worker is idempotent).
    ///
    /// While the messages are confirmed, the same records go into their
    /// users' holdings index (`stock::holdings`, one `HSET` per user, the
    /// writes of a pass concurrent with its publishes): before the ack, so
    /// an entry acked was indexed or its index write failed. Failed writes
    /// do not hold the entries back (counted in `index_failed`, logged at
    /// most once a second): such grants are shipped as always and found in
    /// MySQL once persisted, so an index node down costs visibility for
    /// the pipeline's lag, never persistence. A pass run again (the
    /// entries reclaimed after a crash before the ack) writes the same
    /// fields again: no change.
    async fn publish_and_ack(
        &self,
        ch: &Channel,
        events: &mut EventsChannel,
        conn: &lapin::Connection,
        work: &[(u16, Vec<Entry>)],
    ) -> Result<Vec<(u16, RelayError)>, RelayError> {
        // Well-formed records travel together; a malformed one alone, so the
        // persist worker dead-letters only it.
        let mut good: Vec<&str> = Vec::new();
        let mut records: Vec<CouponRecord> = Vec::new();
        let mut bad: Vec<&Entry> = Vec::new();
        for e in work.iter().flat_map(|(_, es)| es) {
            match e.raw.as_deref().map(|raw| (raw, CouponRecord::parse_checked(raw))) {
                Some((raw, Ok(r))) => {
                    good.push(raw);
                    records.push(r);
                }
                Some((_, Err(_))) => bad.push(e),
                None => {}
            }
        }
        let mut sends: Vec<Vec<&str>> = good.chunks(MESSAGE_CLAIMS).map(<[&str]>::to_vec).collect();
        for e in &bad {
            tracing::error!(entry = %e.id, "malformed outbox record; sending it to the dead-letter queue");
            sends.push(vec![e.raw.as_deref().unwrap_or_default()]);
        }
        events.reopen_if_closed(conn, self.amqp_timeout).await;
        let to_index: Vec<&CouponRecord> = records.iter().collect();
        // Bounded on its own: a frozen master must not stall every pass for
        // the store's full timeout until its breaker opens.
        let index = async {
            tokio::time::timeout(INDEX_WAIT, self.stock.index_grants(&to_index)).await.unwrap_or_else(|_| IndexWrites {
                failed: 1,
                first_error: Some(StockError::Timeout(INDEX_WAIT)),
                ..IndexWrites::default()
            })
        };
        let (published, indexed) =
            tokio::join!(join_all(sends.iter().map(|records| self.publish(ch, events, records))), index);
        PipelineMetrics::add(&self.metrics.indexed, indexed.written as u64);
        if indexed.failed > 0 {
            PipelineMetrics::add(&self.metrics.index_failed, indexed.failed as u64);
            if let Some(skipped) = self.index_log.allow() {
                let error = indexed.first_error.as_ref().map(ToString::to_string).unwrap_or_default();
                tracing::warn!(users = indexed.failed, %error, skipped,
                    "holdings index not written; those grants are shipped anyway and listed once persisted");
            }
        }
        for r in published {
            r?;
        }
        PipelineMetrics::add(&self.metrics.published_batches, sends.len() as u64);
        PipelineMetrics::add(&self.metrics.relayed, good.len() as u64);

        let acks = work.iter().map(|(bucket, entries)| {
            let mut conn = self.stock.connection();
            async move {
                let mut inv = self.ack.key(self.stock.keys().outbox(*bucket));
                inv.arg(&self.group);
                for e in entries {
                    inv.arg(&e.id);
                }
                (*bucket, self.bounded(inv.invoke_async::<i64>(&mut conn)).await)
            }
        });
        Ok(join_all(acks).await.into_iter().filter_map(|(b, r)| r.err().map(|e| (b, e))).collect())
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The outcome of one bucket's read.
struct BucketRead {
    bucket: u16,
    /// The read also reclaimed and measured the stream.
    reclaim: bool,
    result: Result<(Vec<Entry>, u64), RelayError>,
}

/// What the session knows of one bucket.
struct BucketState {
    /// Its read is in flight (never two at once).
    reading: bool,
    /// When to read it next.
    due: Instant,
    /// Polling interval while healthy (see `session`).
    interval: Duration,
    /// Backoff while its reads or acks fail.
    retry: Backoff,
    /// Last time its read included the reclaim and the length.
    last_reclaim: Instant,
    /// Its stream's length as of then (feeds the outbox-length gauge).
    len: u64,
    /// Its consumer group is not known to exist (at start, after NOGROUP).
    needs_group: bool,
}

impl BucketState {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            reading: false,
            due: now,
            interval: POLL_MIN,
            retry: Backoff::default(),
            last_reclaim: now - RECLAIM_EVERY,
            len: 0,
            needs_group: true,
        }
    }

    /// A read or an ack failed: try again after the next backoff delay.
    fn fail(&mut self, e: &RelayError, now: Instant) {
        if matches!(e, RelayError::Redis(r) if r.code() == Some("NOGROUP")) {
            self.needs_group = true;
        }
        self.due = now + self.retry.next_delay();
        // Measure the stream again at the first read that works.
        self.last_reclaim = now - RECLAIM_EVERY;
    }
}

/// Claim events leave on their own channel, best effort: the ack of the
/// outbox waits only for the claims confirm. Each event's confirm is
/// awaited by a task of its own; a nack, a timeout or a failed publish
/// counts in `events_failed` and is not retried (an optional consumer's
/// full or leaderless queue must not make the relay send the claims again
/// and again). At most [`EVENTS_IN_FLIGHT`] confirms are awaited at once;
/// past that an event is dropped (counted), so nothing grows without bound
/// while a consumer refuses. Consumers that need every event read them
/// from MySQL or the claims pipeline, not from this fan-out.
struct EventsChannel {
    ch: Option<Channel>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Event confirms awaited at once, at most.
const EVENTS_IN_FLIGHT: usize = 64;

impl EventsChannel {
    async fn open(conn: &lapin::Connection, timeout: Duration) -> Self {
        let mut me = Self { ch: None, in_flight: Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT)) };
        me.reopen_if_closed(conn, timeout).await;
        me
    }

    /// A channel closed by the broker (a refused publish can close it) is
    /// opened again; failing that, events are dropped until the next pass.
    async fn reopen_if_closed(&mut self, conn: &lapin::Connection, timeout: Duration) {
        if self.ch.as_ref().is_some_and(|c| c.status().connected()) {
            return;
        }
        self.ch = None;
        let opened = async {
            let ch = amqp_call(timeout, conn.create_channel()).await?;
            amqp_call(timeout, ch.confirm_select(lapin::options::ConfirmSelectOptions::default())).await?;
            Ok::<_, QueueError>(ch)
        };
        match opened.await {
            Ok(ch) => self.ch = Some(ch),
            Err(e) => tracing::debug!(error = %e, "cannot open the events channel; claim events are dropped meanwhile"),
        }
    }

    async fn send(&self, relay: &Relay, body: &[u8], props: BasicProperties) {
        let failed = &relay.metrics.events_failed;
        let (Some(ch), Ok(permit)) = (&self.ch, self.in_flight.clone().try_acquire_owned()) else {
            PipelineMetrics::add(failed, 1);
            return;
        };
        let publish = ch.basic_publish(
            relay.topology.events_exchange.as_str().into(),
            "claim".into(),
            BasicPublishOptions::default(),
            body,
            props,
        );
        let confirm = match amqp_call(relay.amqp_timeout, publish).await {
            Ok(c) => c,
            Err(_) => {
                PipelineMetrics::add(failed, 1);
                return;
            }
        };
        let metrics = relay.metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let ok = matches!(tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await, Ok(Ok(c)) if c.is_ack());
            if !ok {
                PipelineMetrics::add(&metrics.events_failed, 1);
            }
        });
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

    #[test]
    fn stream_replies_of_new_and_history_reads() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert!(stream_entries(Value::Nil).unwrap().is_empty(), "`>` with nothing new");
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("{fg:b1.0}:outbox"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("r"), bulk("{}")])]),
                // A history read answers an entry deleted while pending with nil fields.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let es = stream_entries(reply).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!((es[0].id.as_str(), es[0].raw.as_deref()), ("1-0", Some("{}")));
        assert_eq!((es[1].id.as_str(), es[1].raw.as_deref()), ("2-0", None));
        let empty = Value::Array(vec![Value::Array(vec![bulk("k"), Value::Array(vec![])])]);
        assert!(stream_entries(empty).unwrap().is_empty(), "own pending, none");
        assert!(stream_entries(Value::Int(3)).is_err());
        assert_eq!(relay_wait_key("{fg:b3.7}:outbox"), "{fg:b3.7}:relaywait");
    }
}
