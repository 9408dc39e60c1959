//! The persist worker loop (see the module note of `persist`).
//!
//! Why one file of ~590 lines (80 of them tests): consuming, splitting a
//! message into records, storing a batch (halving a refused one to find
//! the bad rows) and acking are one loop whose correctness is the order of
//! those steps; it reads best in one place.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use sqlx::mysql::MySqlDatabaseError;

use crate::db::{Db, DbError};
use crate::domain::CouponRecord;
use crate::metrics::PipelineMetrics;
use crate::queue::claims_body;
use crate::queue::topology::Topology;
use crate::queue::{QueueError, amqp_call, open_confirmed_channel};
use crate::supervise::{Backoff, Supervised, supervise};

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

/// The same envelope with the records left unparsed: the way in when one
/// record does not parse, so that only it is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LooseClaimsMessage {
    kind: String,
    claims: Vec<serde_json::Value>,
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

/// A claims message taken apart record by record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// The records that can be stored.
    pub good: Vec<CouponRecord>,
    /// The records that cannot (raw JSON of the record, reason): each goes
    /// to the dead-letter queue alone.
    pub bad: Vec<(String, String)>,
}

/// Takes a claims message apart: every record is checked on its own
/// ([`CouponRecord::check`]). `Err` (the dead-letter reason) only when the
/// message as a whole is not a claims message.
pub fn parse_message(body: &[u8]) -> Result<Split, String> {
    let mut split = Split::default();
    // The usual case: every record parses.
    if let Ok(m) = serde_json::from_slice::<ClaimsMessage>(body) {
        if m.kind != "claims" {
            return Err(format!("unknown message kind {:?}", m.kind));
        }
        for r in m.claims {
            match r.check() {
                Ok(()) => split.good.push(r),
                Err(reason) => split.bad.push((serde_json::to_string(&r).unwrap_or_default(), reason)),
            }
        }
        return Ok(split);
    }
    let m: LooseClaimsMessage = serde_json::from_slice(body).map_err(|e| format!("not a claims message: {e}"))?;
    if m.kind != "claims" {
        return Err(format!("unknown message kind {:?}", m.kind));
    }
    for v in m.claims {
        let raw = v.to_string();
        match CouponRecord::parse_checked(&raw) {
            Ok(r) => split.good.push(r),
            Err(reason) => split.bad.push((raw, reason)),
        }
    }
    Ok(split)
}

/// What a failed insert means for its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFailure {
    /// Try the same rows again later: the server is unreachable, busy,
    /// read-only during a failover, or the transaction lost a lock race.
    Transient,
    /// The server refused the data (too long, out of range, a constraint):
    /// the same rows will fail again, so find the bad ones and dead-letter
    /// them.
    Permanent,
}

/// Server error numbers (MySQL and MariaDB) that are [`SqlFailure::Transient`].
/// Besides the busy and connection ones, the errors no row causes (a
/// missing table or column, lost privileges, a full disk) are here too:
/// every row would fail alike, so the batch waits for the operator's fix
/// instead of emptying the queue into the dead-letter queue. Any other
/// error the server reports is about the rows.
pub const TRANSIENT_SQL_ERRORS: &[u16] = &[
    1021, // disk full
    1030, // error from the storage engine
    1037, 1038, 1041, // out of memory
    1040, // too many connections
    1044, 1045, 1142, 1143, 1227, // access denied
    1049, // unknown database
    1053, // server shutdown in progress
    1054, // unknown column (migration not applied)
    1114, // table is full
    1135, // cannot create a thread
    1146, // table does not exist
    1158, 1159, 1160, 1161, // network read/write errors
    1180, 1181, // commit / rollback failed
    1205, // lock wait timeout
    1213, // deadlock
    1290, 1792, 1836, // read-only server or transaction (failover)
    1317, // query interrupted
    1927, // connection killed (MariaDB)
    1969, // statement timeout (MariaDB)
    2006, 2013, // server gone away, lost connection
    3024, // max_execution_time exceeded (MySQL)
];

/// Classifies the error of a failed insert: only an error the server
/// reported about the statement, with a number outside
/// [`TRANSIENT_SQL_ERRORS`], is permanent; timeouts, I/O, pool and protocol
/// errors are transient.
pub fn classify(e: &DbError) -> SqlFailure {
    sql_error_number(e).map_or(SqlFailure::Transient, classify_number)
}

/// [`classify`] of an error the server reported, by its number.
pub fn classify_number(n: u16) -> SqlFailure {
    if TRANSIENT_SQL_ERRORS.contains(&n) { SqlFailure::Transient } else { SqlFailure::Permanent }
}

fn sql_error_number(e: &DbError) -> Option<u16> {
    match e {
        DbError::Sql(sqlx::Error::Database(d)) => d.try_downcast_ref::<MySqlDatabaseError>().map(|m| m.number()),
        _ => None,
    }
}

/// Dead-letter reason of a row the server refused.
fn row_reason(e: &DbError) -> String {
    match e {
        DbError::Sql(sqlx::Error::Database(d)) => match d.try_downcast_ref::<MySqlDatabaseError>() {
            Some(m) => format!("mysql refused the row: error {}: {}", m.number(), m.message()),
            None => format!("mysql refused the row: {d}"),
        },
        other => format!("mysql refused the row: {other}"),
    }
}

/// Publishes to the dead-letter exchange, each message confirmed by the
/// broker before the message it came from is acked.
#[derive(Clone)]
struct DeadLetters {
    ch: Channel,
    exchange: String,
    queue: String,
    timeout: Duration,
    metrics: Arc<PipelineMetrics>,
}

impl DeadLetters {
    /// Sends `(body, headers, reason)` messages; returns once the broker
    /// confirmed them all.
    async fn send(&self, messages: Vec<(Vec<u8>, FieldTable, String)>) -> Result<(), PersistError> {
        if let Some((_, _, reason)) = messages.first() {
            tracing::error!(messages = messages.len(), %reason, "dead-lettering from the claims queue");
        }
        let mut confirms = Vec::with_capacity(messages.len());
        for (body, mut headers, reason) in messages {
            headers.insert(ShortString::from(REASON_HEADER), AMQPValue::LongString(LongString::from(reason)));
            headers
                .insert(ShortString::from(QUEUE_HEADER), AMQPValue::LongString(LongString::from(self.queue.as_str())));
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(headers);
            let publish = self.ch.basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            );
            confirms.push(amqp_call(self.timeout, publish).await?);
        }
        let n = confirms.len() as u64;
        for confirm in confirms {
            if !amqp_call(self.timeout, confirm).await?.is_ack() {
                return Err(QueueError::Nacked("dead-letter publish".into()).into());
            }
        }
        PipelineMetrics::add(&self.metrics.dead_lettered, n);
        Ok(())
    }

    /// One dead-letter message per record: a claims message of that record
    /// alone, which `flashgrab dlq replay` can send back as it is.
    async fn records(&self, bad: Vec<(String, String)>) -> Result<(), PersistError> {
        let messages = bad
            .into_iter()
            .map(|(raw, reason)| {
                let mut headers = FieldTable::default();
                headers.insert(ShortString::from("x-claims"), AMQPValue::LongUInt(1));
                (claims_body(&[raw.as_str()]), headers, reason)
            })
            .collect();
        self.send(messages).await
    }
}

/// Header of a dead-lettered message: why.
pub const REASON_HEADER: &str = "x-flashgrab-reason";
/// Header of a dead-lettered message: the queue it came from.
pub const QUEUE_HEADER: &str = "x-flashgrab-queue";

pub struct PersistWorker {
    db: Db,
    amqp: crate::backend::AmqpTarget,
    topology: Topology,
    metrics: Arc<PipelineMetrics>,
    /// Bound of every RabbitMQ call.
    amqp_timeout: Duration,
}

impl PersistWorker {
    pub fn new(
        db: Db,
        amqp_url: impl Into<crate::backend::AmqpTarget>,
        prefix: &str,
        metrics: Arc<PipelineMetrics>,
    ) -> Self {
        Self {
            db,
            amqp: amqp_url.into(),
            topology: Topology::new(prefix),
            metrics,
            amqp_timeout: crate::queue::DEFAULT_AMQP_TIMEOUT,
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
        supervise("persist worker", &self.metrics.errors, &shutdown, &self).await;
        tracing::info!("persist worker stopped");
    }

    async fn run_session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), PersistError> {
        let t = self.amqp_timeout;
        let (conn, ch) = open_confirmed_channel(&self.amqp, &self.topology, t).await?;
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
        let dead = DeadLetters {
            ch: ch.clone(),
            exchange: self.topology.dead_letter_exchange.clone(),
            queue: self.topology.claims_queue.clone(),
            timeout: t,
            metrics: self.metrics.clone(),
        };
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
            let (records, good) = self.prepare(&dead, batch).await?;
            while writing.len() >= WRITERS {
                let done = writing.pop_front().expect("non-empty");
                if !done.await.unwrap_or(Ok(false))? {
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
            }
            writing.push_back(tokio::spawn(write_and_ack(
                self.db.clone(),
                dead.clone(),
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

    /// Parses a batch: the claim records and the deliveries they came from.
    /// What cannot be stored is dead-lettered on the way, record by record
    /// (a message that is not a claims message at all, whole); a message
    /// left with no record to store is acked at once.
    async fn prepare(
        &self,
        dead: &DeadLetters,
        batch: Vec<Delivery>,
    ) -> Result<(Vec<CouponRecord>, Vec<Delivery>), PersistError> {
        let mut good = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for d in batch {
            let store = match parse_message(&d.data) {
                Ok(split) => {
                    if !split.bad.is_empty() {
                        dead.records(split.bad).await?;
                    }
                    split.good
                }
                Err(reason) => {
                    let headers = d.properties.headers().clone().unwrap_or_default();
                    dead.send(vec![(d.data.clone(), headers, reason)]).await?;
                    Vec::new()
                }
            };
            if store.is_empty() {
                amqp_call(self.amqp_timeout, d.ack(BasicAckOptions::default())).await?;
            } else {
                records.extend(store);
                good.push(d);
            }
        }
        Ok((records, good))
    }
}

/// Parts of a refused batch at most this long are written row by row
/// instead of being halved again.
const ROW_BY_ROW: usize = 16;

/// Writes a batch and then acks its messages. Returns false when shutdown
/// came while MySQL was unreachable: nothing is acked then, and the broker
/// redelivers the messages later (rows already written are not written
/// twice: the insert is idempotent).
async fn write_and_ack(
    db: Db,
    dead: DeadLetters,
    metrics: Arc<PipelineMetrics>,
    records: Vec<CouponRecord>,
    good: Vec<Delivery>,
    shutdown: CancellationToken,
    amqp_timeout: Duration,
) -> Result<bool, PersistError> {
    let Some(refused) = store(&db, &dead, &metrics, &records, &shutdown).await? else {
        return Ok(false);
    };
    let now = chrono::Utc::now().timestamp_millis();
    let lag = records.iter().map(|r| now - r.claimed_at_ms).max().unwrap_or(0).max(0) as u64;
    PipelineMetrics::set(&metrics.persist_lag_ms, lag);
    PipelineMetrics::add(&metrics.persisted, (records.len() - refused) as u64);
    for d in good {
        amqp_call(amqp_timeout, d.ack(BasicAckOptions::default())).await?;
    }
    Ok(true)
}

/// Writes `records`: a transient failure is retried with backoff until
/// MySQL takes the rows; a permanent one (see [`classify`]) halves the
/// part that failed, down to single rows, and dead-letters each row that
/// still fails alone, with the server's reason. Returns how many rows were
/// dead-lettered, or `None` when shutdown came during a retry wait.
async fn store(
    db: &Db,
    dead: &DeadLetters,
    metrics: &PipelineMetrics,
    records: &[CouponRecord],
    shutdown: &CancellationToken,
) -> Result<Option<usize>, PersistError> {
    let mut backoff = Backoff::default();
    let mut parts = vec![records];
    let mut refused = 0;
    while let Some(part) = parts.pop() {
        let Err(e) = db.insert_coupons(part).await else {
            continue;
        };
        match classify(&e) {
            SqlFailure::Permanent if part.len() == 1 => {
                let raw = serde_json::to_string(&part[0]).unwrap_or_default();
                dead.records(vec![(raw, row_reason(&e))]).await?;
                refused += 1;
            }
            SqlFailure::Permanent => {
                tracing::warn!(error = %e, rows = part.len(), "mysql refused a batch of claims; looking for the bad rows");
                if part.len() <= ROW_BY_ROW {
                    parts.extend(part.chunks(1).rev());
                } else {
                    let (a, b) = part.split_at(part.len() / 2);
                    parts.push(b);
                    parts.push(a);
                }
            }
            SqlFailure::Transient => {
                PipelineMetrics::add(&metrics.errors, 1);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, rows = part.len(), retry_in = ?delay, "cannot write claims to mysql; will retry");
                parts.push(part);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    Ok(Some(refused))
}

impl Supervised for PersistWorker {
    type Error = PersistError;
    fn session<'a>(
        &'a self,
        shutdown: &'a CancellationToken,
        backoff: &'a mut Backoff,
    ) -> impl Future<Output = Result<(), PersistError>> + Send + 'a {
        self.run_session(shutdown, backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = r#"{"id":"01JD0000000000000000000000","campaign_id":"01JD0000000000000000000001","user_id":"u","shard":0,"claimed_at_ms":1,"valid_from_ms":1,"valid_until_ms":2}"#;

    fn message(records: &[String]) -> Vec<u8> {
        claims_body(&records.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn refuses_what_is_not_a_claims_message_whole() {
        for poison in
            ["garbage", r#"{"kind":"claims"}"#, r#"{"kind":"other","claims":[]}"#, r#"{"kind":"other","claims":[1]}"#]
        {
            assert!(parse_message(poison.as_bytes()).is_err(), "{poison}");
        }
    }

    /// One bad record never takes the others with it: whatever is wrong
    /// with it (a time the pipeline cannot store, an id, not a record at
    /// all), it alone is refused, with its reason.
    #[test]
    fn refuses_bad_records_one_by_one() {
        let good = REC.to_owned();
        let other_good = REC.replace("01JD0000000000000000000000", "01JD0000000000000000000002");
        let far = REC.replace(r#""valid_until_ms":2"#, r#""valid_until_ms":253402300799999"#);
        let early = REC.replace(r#""valid_from_ms":1"#, r#""valid_from_ms":-86400000"#);
        let long_user = REC.replace(r#""u""#, &format!("\"{}\"", "x".repeat(65)));
        let bad_id = REC.replace("01JD0000000000000000000000", "nope");
        for (records, bad, why) in [
            (vec![good.clone(), far.clone(), other_good.clone()], &far, "valid_until_ms"),
            (vec![early.clone(), good.clone(), other_good.clone()], &early, "valid_from_ms"),
            (vec![good.clone(), other_good.clone(), long_user.clone()], &long_user, "user id"),
            (vec![good.clone(), bad_id.clone(), other_good.clone()], &bad_id, "coupon id"),
            (
                vec![good.clone(), r#"{"id":"x"}"#.to_owned(), other_good.clone()],
                &r#"{"id":"x"}"#.to_owned(),
                "not a claim record",
            ),
        ] {
            let split = parse_message(&message(&records)).unwrap();
            let ids: Vec<&str> = split.good.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["01JD0000000000000000000000", "01JD0000000000000000000002"], "{records:?}");
            assert_eq!(split.bad.len(), 1, "{records:?}");
            let (raw, reason) = &split.bad[0];
            assert!(reason.contains(why), "{reason} should say {why}");
            // The dead-lettered record is the record (a message of it alone
            // parses back to the same refusal).
            let a: serde_json::Value = serde_json::from_str(raw).unwrap();
            let b: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert_eq!(a, b);
            let again = parse_message(&claims_body(&[raw.as_str()])).unwrap();
            assert!(again.good.is_empty() && again.bad.len() == 1);
        }
        assert_eq!(parse_message(&message(&[])).unwrap(), Split::default());
    }

    #[test]
    fn sql_errors_about_rows_are_permanent_the_rest_transient() {
        // Data too long, out of range, bad datetime, bad value, NULL, CHECK
        // (MySQL, MariaDB), duplicate on another unique key, foreign key.
        for n in [1406, 1264, 1292, 1366, 1048, 3819, 4025, 1062, 1452] {
            assert_eq!(classify_number(n), SqlFailure::Permanent, "{n}");
        }
        // Deadlock, lock wait, gone away, read-only, too many connections,
        // a table that is not there (every row would fail alike).
        for n in [1213, 1205, 2006, 2013, 1290, 1040, 1146] {
            assert_eq!(classify_number(n), SqlFailure::Transient, "{n}");
        }
        assert_eq!(classify(&DbError::Timeout(Duration::from_secs(1))), SqlFailure::Transient);
        assert_eq!(classify(&DbError::Sql(sqlx::Error::PoolTimedOut)), SqlFailure::Transient);
        assert_eq!(
            classify(&DbError::Sql(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)))),
            SqlFailure::Transient
        );
    }
}
