//! The cluster connection, rebuilt from the seed nodes when Redis trouble
//! lasts.
//!
//! The cluster client follows MOVED and refreshes its slot map on its own,
//! but a failover test caught one instance that never recovered: a master
//! was killed, its replica promoted, the cluster healthy again, and every
//! call of that instance still timed out (a stale slot map that nothing
//! refreshed while the circuit breaker let almost no call through). So
//! when outage errors have gone on for [`TROUBLE_BEFORE_REBUILD`], the
//! store builds a fresh connection (a fresh slot map from the seeds) in the
//! background and swaps it in, at most once per [`REBUILD_EVERY`]. Calls in
//! flight keep their clone of the old connection and finish on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// Outage errors for this long (not necessarily without a success in
/// between: the live masters keep answering) start a rebuild.
pub const TROUBLE_BEFORE_REBUILD: Duration = Duration::from_secs(3);
/// At most one rebuild per this interval.
pub const REBUILD_EVERY: Duration = Duration::from_secs(5);
/// A trouble period ends after this long without an outage error.
const QUIET_ENDS_TROUBLE: Duration = Duration::from_secs(10);

pub struct Reconnecting {
    client: ClusterClient,
    conn: RwLock<ClusterConnection>,
    connect_timeout: Duration,
    /// Reference point of the millisecond clocks below.
    epoch: Instant,
    /// First outage error of the current trouble period (ms + 1; 0 = none).
    trouble_since: AtomicU64,
    last_error: AtomicU64,
    last_rebuild: AtomicU64,
    rebuilding: AtomicBool,
    rebuilds: AtomicU64,
}

impl Reconnecting {
    pub fn new(client: ClusterClient, conn: ClusterConnection, connect_timeout: Duration) -> Self {
        Self {
            client,
            conn: RwLock::new(conn),
            connect_timeout,
            epoch: Instant::now(),
            trouble_since: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
            last_rebuild: AtomicU64::new(0),
            rebuilding: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// A handle on the current connection (cheap: multiplexed).
    pub fn get(&self) -> ClusterConnection {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections rebuilt so far.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A call answered: ends a trouble period that has been quiet long enough.
    pub fn success(&self) {
        let since = self.trouble_since.load(Ordering::Relaxed);
        if since != 0 {
            let quiet = self.now_ms().saturating_sub(self.last_error.load(Ordering::Relaxed));
            if quiet > QUIET_ENDS_TROUBLE.as_millis() as u64 {
                self.trouble_since.store(0, Ordering::Relaxed);
            }
        }
    }

    /// An outage error (or a call the open breaker refused): may start a
    /// rebuild in the background.
    pub fn trouble(self: &Arc<Self>) {
        let now = self.now_ms();
        self.last_error.store(now, Ordering::Relaxed);
        let since = match self.trouble_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => now,
            Err(since) => since,
        };
        let last = self.last_rebuild.load(Ordering::Relaxed);
        let due = now - since >= TROUBLE_BEFORE_REBUILD.as_millis() as u64
            && (last == 0 || now - last >= REBUILD_EVERY.as_millis() as u64);
        if !due || self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_rebuild.store(now, Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(me.connect_timeout, me.client.get_async_connection()).await {
                Ok(Ok(conn)) => {
                    *me.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
                    me.rebuilds.fetch_add(1, Ordering::Relaxed);
                    me.trouble_since.store(0, Ordering::Relaxed);
                    tracing::warn!("redis trouble lasted: rebuilt the cluster connection from the seed nodes");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not rebuild the redis cluster connection"),
                Err(_) => tracing::warn!("rebuilding the redis cluster connection timed out"),
            }
            me.rebuilding.store(false, Ordering::Release);
        });
    }
}
