//! The outbox streams in Redis: every command sent to them, with one policy.
//!
//! `lua/claim.lua` appends (`XADD`) in the same script that grants; all the
//! rest is here: creating the relay's consumer group, the relay's reads in
//! both durability modes, its ack (`lua/ack.lua`: `XACK` + `XDEL` of exactly
//! the confirmed entries), and the two reads a stopping instance makes to
//! see its grants relayed. One policy for all of them: each call is bounded
//! by the timeout this value was made with and goes to the store's current
//! connection; no circuit breaker (the relay retries a failing bucket on its
//! own backoff, which is what a breaker would do, per bucket). What the
//! relay does with the entries (the replica gate's state, publishing,
//! metrics) is the relay's.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};

use crate::stock::StockStore;

/// Entries read per stream per read.
pub const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl StreamError {
    /// The group is missing (a node restarted empty, a stream deleted).
    pub fn is_nogroup(&self) -> bool {
        matches!(self, StreamError::Redis(r) if r.code() == Some("NOGROUP"))
    }

    fn protocol(what: String) -> Self {
        StreamError::Redis(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "unexpected reply", what)))
    }
}

pub type Result<T> = std::result::Result<T, StreamError>;

/// One outbox entry: its stream id and raw record (`None`: deleted while
/// pending, only to be cleared from the group).
pub struct Entry {
    pub id: String,
    pub raw: Option<String>,
}

impl Entry {
    /// Milliseconds part of the entry's id ("1700000000000-3"), when it was
    /// appended.
    pub fn appended_ms(&self) -> u64 {
        id_ms(&self.id)
    }
}

/// What a read of one bucket found.
pub struct Read {
    pub entries: Vec<Entry>,
    /// The stream's length, when the read measured it (`reclaim`).
    pub len: u64,
    /// Entries taken over from another consumer (`XAUTOCLAIM`).
    pub reclaimed: usize,
}

/// A gated read (`replicated` mode): the entries and whether a replica
/// acknowledged them.
pub struct GatedRead {
    pub read: Read,
    pub acked: bool,
}

/// The relay's consumer: its group (shared by every instance) and name.
pub struct Consumer {
    pub group: String,
    pub name: String,
    /// Entries pending with another consumer for this long are taken over.
    pub reclaim_idle: Duration,
}

/// The outbox streams of one key layout, through one store.
pub struct OutboxStreams {
    stock: StockStore,
    timeout: Duration,
    ack: redis::Script,
}

impl OutboxStreams {
    pub fn new(stock: StockStore, timeout: Duration) -> Self {
        Self { stock, timeout, ack: redis::Script::new(include_str!("../../lua/ack.lua")) }
    }

    /// The store's current connection: it rebuilds its connection when
    /// trouble lasts (`stock::reconnect`), and a reader holding an old one
    /// timed out on every read after connections were killed (found by
    /// the connection-reset fault tests).
    pub fn connection(&self) -> ClusterConnection {
        self.stock.connection()
    }

    pub fn buckets(&self) -> u16 {
        self.stock.keys().buckets()
    }

    async fn bounded<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StreamError::Timeout(self.timeout))?
            .map_err(Into::into)
    }

    /// Creates the consumer group of one bucket's stream (and the stream),
    /// if missing.
    pub async fn ensure_group(&self, conn: &mut ClusterConnection, bucket: u16, c: &Consumer) -> Result<()> {
        let created = self
            .bounded(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.stock.keys().outbox(bucket))
                    .arg(&c.group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(conn),
            )
            .await;
        match created {
            Err(StreamError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            r => r,
        }
    }

    /// The read of `fast` mode: `XLEN` and `XAUTOCLAIM` (when `reclaim`),
    /// then `XREADGROUP >`, one round trip each.
    pub async fn read(&self, conn: &mut ClusterConnection, bucket: u16, c: &Consumer, reclaim: bool) -> Result<Read> {
        let key = self.stock.keys().outbox(bucket);
        let mut read = Read { entries: Vec::new(), len: 0, reclaimed: 0 };
        if reclaim {
            read.len = self.bounded(redis::cmd("XLEN").arg(&key).query_async(conn)).await?;
            let claimed: StreamAutoClaimReply = self
                .bounded(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(&c.group)
                        .arg(&c.name)
                        .arg(c.reclaim_idle.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(conn),
                )
                .await?;
            read.take_over(claimed);
        }
        if read.entries.len() < BATCH {
            let new: Option<StreamReadReply> = self
                .bounded(
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&c.group)
                        .arg(&c.name)
                        .arg("COUNT")
                        .arg(BATCH - read.entries.len())
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(conn),
                )
                .await?;
            if let Some(new) = new {
                read.entries.extend(new.keys.into_iter().flat_map(|k| k.ids).map(entry_of));
            }
        }
        Ok(read)
    }

    /// The gated read of `replicated` mode, ONE pipeline to the bucket's
    /// slot: [`XLEN`, `XAUTOCLAIM` when `reclaim`] `XREADGROUP ... 0` (this
    /// consumer's own pending entries), `XREADGROUP >`, a tiny write on the
    /// same slot (`HSET {tag}:relaywait t <ms>`), `WAIT 1 <wait>`. One
    /// pipeline is one node and one connection, in order; WAIT counts the
    /// replicas that acknowledged the connection's last write, the HSET,
    /// which comes after every entry returned (a history read propagates
    /// nothing, so without the write the WAIT would prove nothing for it).
    /// A retried or redirected pipeline runs whole on the new node, so what
    /// it returns is what that node's replica acknowledged.
    pub async fn read_gated(
        &self,
        conn: &mut ClusterConnection,
        bucket: u16,
        c: &Consumer,
        reclaim: bool,
        wait: Duration,
    ) -> Result<GatedRead> {
        let key = self.stock.keys().outbox(bucket);
        let read_from = |from: &str| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(&c.group).arg(&c.name).arg("COUNT").arg(BATCH).arg("STREAMS").arg(&key).arg(from);
            cmd
        };
        let mut pipe = redis::pipe();
        if reclaim {
            pipe.cmd("XLEN").arg(&key);
            pipe.cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(&c.group)
                .arg(&c.name)
                .arg(c.reclaim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(BATCH);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        pipe.add_command(read_from("0")).add_command(read_from(">"));
        pipe.cmd("HSET").arg(relay_wait_key(&key)).arg("t").arg(now_ms).ignore();
        pipe.cmd("WAIT").arg(1).arg(wait.as_millis() as u64);
        let mut replies: Vec<Value> = self.bounded(pipe.query_async(conn)).await?;
        let acked = match replies.pop() {
            Some(Value::Int(n)) => n,
            other => return Err(StreamError::protocol(format!("WAIT answered {other:?}"))),
        };
        let mut replies = replies.into_iter();
        let mut read = Read { entries: Vec::new(), len: 0, reclaimed: 0 };
        if reclaim {
            read.len =
                redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).map_err(redis::RedisError::from)?;
            let claimed: StreamAutoClaimReply =
                redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).map_err(redis::RedisError::from)?;
            read.take_over(claimed);
        }
        for reply in replies {
            read.entries.extend(stream_entries(reply)?);
        }
        // Own pending and XAUTOCLAIM can return the same entry (ours, idle).
        let mut seen = HashSet::new();
        read.entries.retain(|e| seen.insert(e.id.clone()));
        Ok(GatedRead { read, acked: acked >= 1 })
    }

    /// Acks and deletes exactly `entries` of one bucket (`lua/ack.lua`).
    pub async fn ack(&self, conn: &mut ClusterConnection, bucket: u16, c: &Consumer, entries: &[Entry]) -> Result<()> {
        let mut inv = self.ack.key(self.stock.keys().outbox(bucket));
        inv.arg(&c.group);
        for e in entries {
            inv.arg(&e.id);
        }
        self.bounded(inv.invoke_async::<i64>(conn)).await.map(|_| ())
    }

    /// The newest entry id of each of `buckets`' outbox streams (`None`:
    /// empty): what a shutting down instance must see relayed before it
    /// stops its relay (everything granted through it is at or before these
    /// ids). One result per bucket: an unreachable master fails only its
    /// own buckets.
    pub async fn heads(&self, buckets: &[u16]) -> Vec<(u16, Result<Option<String>>)> {
        let reads = buckets.iter().map(|&b| async move {
            let key = self.stock.keys().outbox(b);
            let mut conn = self.connection();
            let last: Result<StreamRangeReply> = self
                .bounded(redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut conn))
                .await;
            (b, last.map(|l| l.ids.into_iter().next().map(|e| e.id)))
        });
        join_all(reads).await
    }

    /// For each of `heads`, whether its stream still has an entry at or
    /// before its id (the relay deletes an entry once the broker confirmed
    /// it). One result per bucket.
    pub async fn unrelayed(&self, heads: &[(u16, String)]) -> Vec<(u16, Result<bool>)> {
        let reads = heads.iter().map(|(b, id)| async move {
            let key = self.stock.keys().outbox(*b);
            let mut conn = self.connection();
            let first: Result<StreamRangeReply> = self
                .bounded(redis::cmd("XRANGE").arg(&key).arg("-").arg(id).arg("COUNT").arg(1).query_async(&mut conn))
                .await;
            (*b, first.map(|f| !f.ids.is_empty()))
        });
        join_all(reads).await
    }
}

impl Read {
    fn take_over(&mut self, claimed: StreamAutoClaimReply) {
        self.reclaimed += claimed.claimed.len();
        self.entries.extend(claimed.claimed.into_iter().map(entry_of));
        // Entries deleted while pending: just clear them from the group.
        self.entries.extend(claimed.deleted_ids.into_iter().map(|id| Entry { id, raw: None }));
    }
}

fn entry_of(s: StreamId) -> Entry {
    let raw = match s.map.get("r") {
        Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
        Some(Value::SimpleString(t)) => Some(t.clone()),
        _ => None,
    };
    Entry { id: s.id, raw }
}

/// The key the gated read writes before its WAIT, on the slot of the
/// stream: same hash tag as the outbox stream.
fn relay_wait_key(outbox: &str) -> String {
    format!("{}:relaywait", outbox.strip_suffix(":outbox").unwrap_or(outbox))
}

/// The entries of an `XREADGROUP` reply on one stream: nil (none), or
/// `[[stream, [[id, fields], ...]]]` (a map in RESP3). A history read
/// (`0`) answers an entry deleted while pending with nil fields: it comes
/// back without a record and is only cleared from the group.
fn stream_entries(v: Value) -> Result<Vec<Entry>> {
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
        other => return Err(StreamError::protocol(format!("XREADGROUP answered {other:?}"))),
    };
    let mut out = Vec::new();
    for ids in streams {
        let Value::Array(ids) = ids else { continue };
        for e in ids {
            let Value::Array(mut parts) = e else {
                return Err(StreamError::protocol(format!("stream entry {e:?}")));
            };
            if parts.len() != 2 {
                return Err(StreamError::protocol(format!("stream entry {parts:?}")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_carry_their_time() {
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
