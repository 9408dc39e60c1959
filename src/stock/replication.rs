//! Writes that must be on a replica before anything relies on them
//! (`replicated` mode, see [`Durability`]).
//!
//! Why: replication is asynchronous. A write only the master has is undone
//! when the master dies and its replica is promoted: a close that was
//! answered 200 is forgotten (claims are granted again), a stock transfer
//! moved between shards on different masters can be lost on one side. So
//! in `replicated` mode such a write is followed by `WAIT 1 <wait>` in the
//! SAME pipeline: one pipeline goes to one node on one connection, in
//! order, and WAIT waits for the replication offset of that connection's
//! last write, which is at least the pipeline's (read the comment of
//! `StockStore::claim_batch`: a WAIT sent on its own could land on another
//! node and prove nothing). Fewer than one replica acknowledging is
//! [`StockError::NotAcknowledged`], which callers answer 503 (retryable).
//! In `fast` mode the pipeline runs as it is, nothing added.

use redis::Value;

use super::{Durability, Result, StockError, StockStore};

impl StockStore {
    /// Runs `pipe` as ONE pipeline on the node owning its keys' slot and,
    /// in `replicated` mode, with `WAIT 1 <wait>` appended: `Ok` only when
    /// a replica acknowledged every write of it. Returns the replies of
    /// `pipe`'s own commands (the WAIT's removed).
    ///
    /// The caller's part: every key of `pipe` in one slot (same hash tag),
    /// a plain pipeline (not `atomic()`), and commands that may run twice:
    /// a redirected, retried or NOSCRIPT-reloaded pipeline runs whole
    /// again. EVALSHAs of `scripts` (build them with
    /// `redis::cmd("EVALSHA").arg(script.get_hash())...`) are loaded on
    /// NOSCRIPT (a restarted node, a promoted replica) and the pipeline is
    /// sent once more. `what` names the write in the error and the log.
    pub async fn acked(
        &self,
        key: &str,
        what: &str,
        pipe: &redis::Pipeline,
        scripts: &[&redis::Script],
    ) -> Result<Vec<Value>> {
        let (replies, acked) = self.with_wait(key, pipe, scripts).await?;
        match (acked, self.durability) {
            (Some(acked), Durability::Replicated { wait }) if acked < 1 => {
                tracing::warn!(what, acked, ?wait, "no replica acknowledged a write in time: answering 503");
                Err(StockError::NotAcknowledged { what: what.to_owned(), acked, wait })
            }
            _ => Ok(replies),
        }
    }

    /// `pipe` as ONE pipeline (the caller's part as for [`acked`](Self::acked)),
    /// in `replicated` mode with `WAIT 1 <wait>` appended; returns the
    /// replies of `pipe`'s own commands and how many replicas acknowledged
    /// (None in `fast` mode). For callers with their own error for a
    /// missing acknowledgement (the transfer steps of `rebalance`).
    pub(crate) async fn with_wait(
        &self,
        key: &str,
        pipe: &redis::Pipeline,
        scripts: &[&redis::Script],
    ) -> Result<(Vec<Value>, Option<i64>)> {
        let mut conn = self.conn.get();
        let wait = match self.durability {
            Durability::Fast => return Ok((self.run_loading(key, &mut conn, pipe, scripts).await?, None)),
            Durability::Replicated { wait } => wait,
        };
        let mut pipe = pipe.clone();
        pipe.cmd("WAIT").arg(1).arg(wait.as_millis() as u64);
        let mut replies = self.run_loading(key, &mut conn, &pipe, scripts).await?;
        match replies.pop() {
            Some(Value::Int(n)) => Ok((replies, Some(n))),
            other => Err(StockError::Protocol(format!("WAIT answered {other:?}"))),
        }
    }

    /// `pipe` on `conn`, loading `scripts` and retrying once on NOSCRIPT.
    async fn run_loading(
        &self,
        key: &str,
        conn: &mut redis::cluster_async::ClusterConnection,
        pipe: &redis::Pipeline,
        scripts: &[&redis::Script],
    ) -> Result<Vec<Value>> {
        let mut loaded = false;
        loop {
            match self.bounded(Some(key), pipe.query_async(conn)).await {
                Err(StockError::Redis(e)) if !loaded && !scripts.is_empty() && e.code() == Some("NOSCRIPT") => {
                    for s in scripts {
                        self.bounded(Some(key), s.load_async(conn)).await?;
                    }
                    loaded = true;
                }
                r => return r,
            }
        }
    }
}
