//! The relay loop (see the module note of `outbox`).
//!
//! Why one file of ~600 lines: the session loop, the replica gate and
//! publish-then-ack are one state machine over the same per-bucket state
//! (`BucketState`, the gate words); split, each part would need the others'
//! internals. The Redis commands it sends are in `stream`, the RabbitMQ
//! plumbing in `queue`.

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
use redis::cluster_async::ClusterConnection;
use tokio_util::sync::CancellationToken;

use crate::domain::CouponRecord;
use crate::metrics::PipelineMetrics;
use crate::queue::claims_body;
use crate::queue::topology::{CLAIM_ROUTING_KEY, Topology};
use crate::queue::{QueueError, amqp_call, open_confirmed_channel};
use crate::stock::holdings::IndexWrites;
use crate::stock::{Durability, StockError, StockStore};
use crate::supervise::{Backoff, Supervised, supervise};
use crate::telemetry::LogEvery;

use super::stream::{Consumer, Entry, GatedRead, OutboxStreams, Read, StreamError};

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
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl From<lapin::Error> for RelayError {
    fn from(e: lapin::Error) -> Self {
        RelayError::Queue(QueueError::Amqp(e))
    }
}

pub struct Relay {
    /// For the holdings index writes (`stock::holdings`).
    stock: StockStore,
    streams: OutboxStreams,
    consumer: Consumer,
    amqp: crate::backend::AmqpTarget,
    topology: Topology,
    metrics: Arc<PipelineMetrics>,
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
            streams: OutboxStreams::new(stock.clone(), redis_timeout),
            stock,
            consumer: Consumer {
                group: format!("{prefix}-relay"),
                name: format!("relay-{}", ulid::Ulid::new()),
                reclaim_idle,
            },
            amqp: amqp_url.into(),
            topology: Topology::new(&prefix),
            metrics,
            amqp_timeout: crate::queue::DEFAULT_AMQP_TIMEOUT,
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
        supervise("outbox relay", &self.metrics.errors, &shutdown, &self).await;
        tracing::info!(consumer = %self.consumer.name, "outbox relay stopped");
    }

    /// One bucket's read as the session runs it: the group first if it is
    /// not known to exist, then [`Relay::read_bucket`].
    async fn read_one(&self, mut conn: ClusterConnection, bucket: u16, group: bool, reclaim: bool) -> BucketRead {
        if group && let Err(e) = self.streams.ensure_group(&mut conn, bucket, &self.consumer).await {
            return BucketRead { bucket, reclaim, result: Err(e.into()) };
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
    async fn run_session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), RelayError> {
        let t = self.amqp_timeout;
        let (conn, ch) = open_confirmed_channel(&self.amqp, &self.topology, t).await?;
        let mut events = EventsChannel::open(&conn, t).await;
        tracing::info!(consumer = %self.consumer.name, "outbox relay connected");

        // Each bucket has its own polling interval: a bucket that had entries
        // is read again on the next pass, an empty one backs off (doubling up
        // to POLL_MAX). During a drop only the buckets of the live shards are
        // hot; polling the other ~50 every pass would cost Redis more than
        // the claims do.
        let buckets = usize::from(self.streams.buckets());
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
                    // session (see `OutboxStreams::connection`).
                    let redis = self.streams.connection();
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
                let oldest = work.iter().flat_map(|(_, es)| es.iter().map(Entry::appended_ms)).min().unwrap_or(now_ms);
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
        let read = match self.stock.durability() {
            Durability::Fast => self.streams.read(conn, bucket, &self.consumer, reclaim).await?,
            Durability::Replicated { wait } => self.read_bucket_acked(conn, bucket, reclaim, wait).await?,
        };
        PipelineMetrics::add(&self.metrics.reclaimed, read.reclaimed as u64);
        Ok((read.entries, read.len))
    }

    /// `replicated` mode: the entries of one bucket that a replica has, so
    /// that nothing leaves Redis that a failover could make Redis forget
    /// (MySQL would hold a row for a unit Redis sells again).
    ///
    /// A cold bucket (this consumer holds nothing of it) is read as in
    /// `fast` mode, no write and no WAIT: idle buckets cost nothing more.
    /// Whatever that read returns is only moved into this consumer's
    /// pending list, not shipped; the gated read
    /// ([`OutboxStreams::read_gated`]) follows at once and returns it with
    /// this consumer's other pending entries and the new ones. Fewer than
    /// one replica acknowledging: nothing of the bucket is shipped this
    /// pass; the entries stay pending here and come back through the next
    /// gated read.
    async fn read_bucket_acked(
        &self,
        conn: &mut ClusterConnection,
        bucket: u16,
        reclaim: bool,
        wait: Duration,
    ) -> Result<Read, StreamError> {
        let state = &self.gate[usize::from(bucket)];
        let mut cold = None;
        if state.load(Ordering::Relaxed) == COLD {
            let found = self.streams.read(conn, bucket, &self.consumer, reclaim).await?;
            if found.entries.is_empty() {
                return Ok(found);
            }
            cold = Some(found);
            state.store(HOT, Ordering::Relaxed);
        }
        // A cold read that reclaimed and measured is not done again.
        let reclaim_in_gate = reclaim && cold.is_none();
        let GatedRead { mut read, acked } =
            self.streams.read_gated(conn, bucket, &self.consumer, reclaim_in_gate, wait).await?;
        if let Some(cold) = cold {
            read.len = cold.len;
            read.reclaimed += cold.reclaimed;
        }
        if read.entries.is_empty() {
            state.store(COLD, Ordering::Relaxed);
            return Ok(read);
        }
        if !acked {
            PipelineMetrics::add(&self.metrics.unreplicated, read.entries.len() as u64);
            if state.swap(HELD, Ordering::Relaxed) != HELD {
                tracing::warn!(
                    bucket,
                    entries = read.entries.len(),
                    ?wait,
                    "no replica acknowledged the outbox: holding its entries back"
                );
            }
            read.entries.clear();
            return Ok(read);
        }
        if state.swap(HOT, Ordering::Relaxed) == HELD {
            tracing::info!(
                bucket,
                entries = read.entries.len(),
                "a replica acknowledged the outbox again: relaying the entries held back"
            );
        }
        Ok(read)
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
            let mut conn = self.streams.connection();
            async move { (*bucket, self.streams.ack(&mut conn, *bucket, &self.consumer, entries).await) }
        });
        Ok(join_all(acks).await.into_iter().filter_map(|(b, r)| r.err().map(|e| (b, e.into()))).collect())
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
        if matches!(e, RelayError::Stream(s) if s.is_nogroup()) {
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

impl Supervised for Relay {
    type Error = RelayError;
    fn session<'a>(
        &'a self,
        shutdown: &'a CancellationToken,
        backoff: &'a mut Backoff,
    ) -> impl Future<Output = Result<(), RelayError>> + Send + 'a {
        self.run_session(shutdown, backoff)
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
    }
}
