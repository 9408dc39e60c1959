//! `flashgrab dlq`: what the dead-letter queue holds and why, and sending it
//! back once the cause is fixed.
//!
//! The persist worker dead-letters one message per claim record it cannot
//! store (a claims message of that record alone, with the reason in the
//! `x-flashgrab-reason` header), and a message that is not a claims message
//! at all as it came. The broker adds what it dead-letters itself (from the
//! claims queue's `x-dead-letter-exchange`, with an `x-death` header).
//!
//! - [`list`] reads the queue without taking anything away: every message
//!   is fetched unacknowledged and returned to the queue at the end (each
//!   listing counts as a delivery in the broker's `x-delivery-count`).
//! - [`replay`] moves messages back to the claims exchange, each one acked
//!   in the dead-letter queue only after the broker confirmed its copy. A
//!   crash in between leaves a claim in both places: harmless, the insert is
//!   idempotent per coupon id. What is still bad comes back to the
//!   dead-letter queue with its reason; a replay reads at most the messages
//!   that were there when it started, so it never chases its own returns.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::worker::{QUEUE_HEADER, REASON_HEADER};
use crate::queue::topology::{CLAIM_ROUTING_KEY, Topology};
use crate::queue::{QueueError, amqp_call};

/// Header a replay adds: how many times the message was sent back.
pub const REPLAYS_HEADER: &str = "x-flashgrab-replays";
/// Messages a replay has in flight (published, not yet confirmed).
const REPLAY_WINDOW: usize = 64;
/// A message body longer than this is shown cut.
const SHOW_BYTES: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("rabbitmq has no queue {0} (is FLASHGRAB_KEY_PREFIX right? the persist worker declares it)")]
    NoQueue(String),
}

impl From<lapin::Error> for DlqError {
    fn from(e: lapin::Error) -> Self {
        DlqError::Queue(QueueError::Amqp(e))
    }
}

/// One dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: String,
    /// The claim records it carries (raw JSON); for a message that is not a
    /// claims message, its body (cut to 2000 bytes).
    pub records: Vec<String>,
    /// False when the body is not a claims message.
    pub is_claims: bool,
}

/// What [`list`] found.
#[derive(Debug, Clone, Default)]
pub struct DlqListing {
    pub queue: String,
    pub messages: u64,
    /// Claim records in those messages.
    pub claims: u64,
    /// Messages per reason, most frequent first.
    pub by_reason: Vec<(String, u64)>,
    /// The first messages, in queue order, holding at most `limit` records
    /// between them.
    pub first: Vec<DeadLetter>,
}

impl DlqListing {
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }
}

impl fmt::Display for DlqListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dead-letter queue {}: {} messages, {} claims", self.queue, self.messages, self.claims)?;
        if self.is_empty() {
            return Ok(());
        }
        writeln!(f, "messages per reason:")?;
        for (reason, n) in &self.by_reason {
            writeln!(f, "  {n:>8}  {reason}")?;
        }
        let shown: usize = self.first.iter().map(|d| d.records.len()).sum();
        writeln!(f, "first {shown} records:")?;
        for d in &self.first {
            for r in &d.records {
                let what = if d.is_claims { "" } else { "(not a claims message) " };
                writeln!(f, "  [{}] {what}{r}", d.reason)?;
            }
        }
        Ok(())
    }
}

/// What [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub queue: String,
    pub to_exchange: String,
    /// Messages sent back (and removed from the dead-letter queue).
    pub messages: u64,
    pub claims: u64,
    /// Messages in the dead-letter queue when the replay was done.
    pub left: u64,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replayed {} messages ({} claims) from {} to the exchange {}; {} left in the dead-letter queue",
            self.messages, self.claims, self.queue, self.to_exchange, self.left
        )
    }
}

async fn connect(amqp: &crate::backend::AmqpTarget, timeout: Duration) -> Result<(Connection, Channel), DlqError> {
    let conn = amqp_call(timeout, amqp.connect()).await?;
    let ch = amqp_call(timeout, conn.create_channel()).await?;
    Ok((conn, ch))
}

/// Messages ready in `queue`, without creating it (a wrong prefix must not
/// leave new queues behind).
async fn ready(ch: &Channel, queue: &str, timeout: Duration) -> Result<u64, DlqError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    match tokio::time::timeout(timeout, ch.queue_declare(queue.into(), passive, FieldTable::default())).await {
        Err(_) => Err(QueueError::Timeout(timeout).into()),
        Ok(Ok(q)) => Ok(u64::from(q.message_count())),
        Ok(Err(e)) => match e.kind() {
            lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404 => Err(DlqError::NoQueue(queue.to_owned())),
            _ => Err(e.into()),
        },
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Why a message was dead-lettered: the worker's reason, else the broker's
/// (`x-death`), else "no reason given".
pub fn reason_of(headers: Option<&FieldTable>) -> String {
    let Some(h) = headers.map(FieldTable::inner) else {
        return "no reason given".to_owned();
    };
    if let Some(r) = h.get(REASON_HEADER).and_then(text) {
        return r;
    }
    if let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death")
        && let Some(AMQPValue::FieldTable(last)) = deaths.as_slice().first()
    {
        let field = |k: &str| last.inner().get(k).and_then(text).unwrap_or_else(|| "?".to_owned());
        return format!("dead-lettered by the broker ({}) from {}", field("reason"), field("queue"));
    }
    "no reason given".to_owned()
}

/// The records of a dead-lettered body: `(records, is_claims)`.
fn records_of(body: &[u8]) -> (Vec<String>, bool) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        kind: String,
        claims: Vec<serde_json::Value>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(m) if m.kind == "claims" => (m.claims.iter().map(ToString::to_string).collect(), true),
        _ => {
            let cut = &body[..body.len().min(SHOW_BYTES)];
            (vec![String::from_utf8_lossy(cut).into_owned()], false)
        }
    }
}

/// Reads the whole dead-letter queue of `prefix` and gives every message
/// back: counts, messages per reason, and the first messages holding up to
/// `limit` records.
pub async fn list(
    amqp: impl Into<crate::backend::AmqpTarget>,
    prefix: &str,
    limit: usize,
    timeout: Duration,
) -> Result<DlqListing, DlqError> {
    let topology = Topology::new(prefix);
    let queue = topology.dead_letter_queue;
    let (conn, ch) = connect(&amqp.into(), timeout).await?;
    let n = ready(&ch, &queue, timeout).await?;
    let mut listing = DlqListing { queue: queue.clone(), ..Default::default() };
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut shown = 0;
    let mut held = Vec::new();
    // At most the messages that were there: new arrivals wait for the next
    // listing, so the read always ends.
    for _ in 0..n {
        let get = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false });
        let Some(m) = amqp_call(timeout, get).await? else {
            break;
        };
        let d = m.delivery;
        let reason = reason_of(d.properties.headers().as_ref());
        let (records, is_claims) = records_of(&d.data);
        listing.messages += 1;
        if is_claims {
            listing.claims += records.len() as u64;
        }
        *reasons.entry(reason.clone()).or_default() += 1;
        if shown < limit {
            let records: Vec<String> = records.into_iter().take(limit - shown).collect();
            shown += records.len();
            listing.first.push(DeadLetter { reason, records, is_claims });
        }
        held.push(d.delivery_tag);
    }
    for tag in held {
        let requeue = BasicNackOptions { multiple: false, requeue: true };
        amqp_call(timeout, ch.basic_nack(tag, requeue)).await?;
    }
    let _ = conn.close(200, "dlq list done".into()).await;
    let mut by_reason: Vec<(String, u64)> = reasons.into_iter().collect();
    by_reason.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    listing.by_reason = by_reason;
    Ok(listing)
}

/// Headers of a replayed copy: the original ones without the verdict of
/// the last trip (the worker writes a fresh reason if it refuses it again),
/// plus the replay count.
fn replay_headers(original: Option<&FieldTable>) -> FieldTable {
    let mut headers = FieldTable::default();
    let mut replays = 0u32;
    for (k, v) in original.map(|h| h.inner().iter()).into_iter().flatten() {
        match k.as_str() {
            REASON_HEADER
            | QUEUE_HEADER
            | "x-death"
            | "x-first-death-exchange"
            | "x-first-death-queue"
            | "x-first-death-reason"
            | "x-last-death-exchange"
            | "x-last-death-queue"
            | "x-last-death-reason" => {}
            REPLAYS_HEADER => {
                if let AMQPValue::LongUInt(n) = v {
                    replays = *n;
                }
            }
            _ => {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(ShortString::from(REPLAYS_HEADER), AMQPValue::LongUInt(replays.saturating_add(1)));
    headers
}

/// Sends up to `limit` (default: all) of the messages in the dead-letter
/// queue of `prefix` back to its claims exchange, oldest first.
pub async fn replay(
    amqp: impl Into<crate::backend::AmqpTarget>,
    prefix: &str,
    limit: Option<u64>,
    timeout: Duration,
) -> Result<ReplayReport, DlqError> {
    let topology = Topology::new(prefix);
    let queue = topology.dead_letter_queue.clone();
    let (conn, ch) = connect(&amqp.into(), timeout).await?;
    let n = ready(&ch, &queue, timeout).await?;
    amqp_call(timeout, ch.confirm_select(lapin::options::ConfirmSelectOptions::default())).await?;
    // Same declarations as the relay and the worker (idempotent): the claims
    // queue exists, so nothing replayed is unroutable.
    amqp_call(timeout, topology.declare(&ch)).await?;
    let mut report =
        ReplayReport { queue: queue.clone(), to_exchange: topology.claims_exchange.clone(), ..Default::default() };
    let mut todo = limit.map_or(n, |l| l.min(n));
    while todo > 0 {
        // A window of messages: fetch, publish, then confirm and ack each.
        let mut in_flight = Vec::new();
        while todo > 0 && in_flight.len() < REPLAY_WINDOW {
            todo -= 1;
            let get = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false });
            let Some(m) = amqp_call(timeout, get).await? else {
                todo = 0;
                break;
            };
            let d = m.delivery;
            let (records, is_claims) = records_of(&d.data);
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(replay_headers(d.properties.headers().as_ref()));
            if let Some(id) = d.properties.message_id() {
                props = props.with_message_id(id.clone());
            }
            let publish = ch.basic_publish(
                topology.claims_exchange.as_str().into(),
                CLAIM_ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &d.data,
                props,
            );
            let confirm = amqp_call(timeout, publish).await?;
            in_flight.push((d.delivery_tag, confirm, if is_claims { records.len() as u64 } else { 0 }));
        }
        for (tag, confirm, claims) in in_flight {
            let c = amqp_call(timeout, confirm).await?;
            if !c.is_ack() {
                return Err(QueueError::Nacked("replay publish: nack".into()).into());
            }
            if c.take_message().is_some() {
                return Err(QueueError::Nacked("replay publish: unroutable".into()).into());
            }
            amqp_call(timeout, ch.basic_ack(tag, BasicAckOptions::default())).await?;
            report.messages += 1;
            report.claims += claims;
        }
    }
    report.left = ready(&ch, &queue, timeout).await?;
    let _ = conn.close(200, "dlq replay done".into()).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    #[test]
    fn reasons_come_from_the_worker_or_the_broker() {
        assert_eq!(reason_of(None), "no reason given");
        let mut h = FieldTable::default();
        h.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from("valid_until_ms outside")));
        assert_eq!(reason_of(Some(&h)), "valid_until_ms outside");
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString(LongString::from("rejected")));
        death.insert("queue".into(), AMQPValue::LongString(LongString::from("fg.claims")));
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])));
        assert_eq!(reason_of(Some(&h)), "dead-lettered by the broker (rejected) from fg.claims");
    }

    #[test]
    fn a_replayed_copy_loses_the_verdict_and_counts_replays() {
        let mut h = FieldTable::default();
        h.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from("why")));
        h.insert(QUEUE_HEADER.into(), AMQPValue::LongString(LongString::from("fg.claims")));
        h.insert("x-claims".into(), AMQPValue::LongUInt(1));
        let once = replay_headers(Some(&h));
        assert!(!once.contains_key(REASON_HEADER) && !once.contains_key(QUEUE_HEADER));
        assert_eq!(once.inner().get("x-claims"), Some(&AMQPValue::LongUInt(1)));
        assert_eq!(once.inner().get(REPLAYS_HEADER), Some(&AMQPValue::LongUInt(1)));
        assert_eq!(replay_headers(Some(&once)).inner().get(REPLAYS_HEADER), Some(&AMQPValue::LongUInt(2)));
    }

    #[test]
    fn records_of_claims_messages_and_of_anything_else() {
        let (r, claims) = records_of(br#"{"kind":"claims","claims":[{"id":"a"},{"id":"b"}]}"#);
        assert!(claims);
        assert_eq!(r, [r#"{"id":"a"}"#, r#"{"id":"b"}"#]);
        let (r, claims) = records_of(b"this is not json");
        assert!(!claims);
        assert_eq!(r, ["this is not json"]);
        assert_eq!(records_of(&vec![b'x'; 5000]).0[0].len(), SHOW_BYTES);
    }
}
