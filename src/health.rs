//! Readiness: can this instance reach the three backends right now?
//!
//! Each check is bounded by a timeout so `/readyz` answers quickly even when a
//! backend hangs. RabbitMQ is checked on a connection kept for this purpose
//! and re-opened when it dropped (opening one per probe would cost a full
//! AMQP handshake each time).

use std::time::Duration;

use lapin::Connection;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::db::Db;
use crate::stock::StockStore;
use crate::telemetry::LogEvery;

/// Result of one probe, per component: `"ok"` or `"down"`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Readiness {
    pub redis: &'static str,
    pub rabbitmq: &'static str,
    pub mysql: &'static str,
}

impl Readiness {
    pub fn ok(&self) -> bool {
        self.redis == "ok" && self.rabbitmq == "ok" && self.mysql == "ok"
    }
}

/// Keeps an AMQP connection for health probes.
pub struct AmqpProbe {
    amqp: crate::backend::AmqpTarget,
    conn: Mutex<Option<Connection>>,
    timeout: Duration,
    /// The broker's unavailability is logged once a second, not per probe.
    log: LogEvery,
}

impl AmqpProbe {
    pub fn new(amqp: impl Into<crate::backend::AmqpTarget>, timeout: Duration) -> Self {
        Self { amqp: amqp.into(), conn: Mutex::new(None), timeout, log: LogEvery::new() }
    }

    /// True when a connection to the broker is open (opening one if needed).
    pub async fn check(&self) -> bool {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.status().connected()) {
            return true;
        }
        let connect = self.amqp.connect();
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(c)) => {
                *guard = Some(c);
                true
            }
            Ok(Err(e)) => {
                if let Some(skipped) = self.log.allow() {
                    tracing::warn!(error = %e, skipped, "rabbitmq is not reachable");
                }
                *guard = None;
                false
            }
            Err(_) => {
                if let Some(skipped) = self.log.allow() {
                    tracing::warn!(skipped, "rabbitmq did not answer in time");
                }
                *guard = None;
                false
            }
        }
    }
}

/// Probes every backend concurrently.
pub async fn readiness(stock: &StockStore, amqp: &AmqpProbe, db: &Db) -> Readiness {
    // A probe polled every few hundred ms during an outage logs its cause
    // once a second, not once per poll (see `telemetry::LogEvery`; a static
    // per message, like tracing's own call-site state).
    static REDIS_LOG: LogEvery = LogEvery::new();
    static MYSQL_LOG: LogEvery = LogEvery::new();
    let (r, a, m) = tokio::join!(stock.ping(), amqp.check(), db.ping());
    if let Err(e) = &r
        && let Some(skipped) = REDIS_LOG.allow()
    {
        tracing::warn!(error = %e, skipped, "redis cluster is not ready");
    }
    if let Err(e) = &m
        && let Some(skipped) = MYSQL_LOG.allow()
    {
        tracing::warn!(error = %e, skipped, "mysql is not ready");
    }
    let word = |ok: bool| if ok { "ok" } else { "down" };
    Readiness { redis: word(r.is_ok()), rabbitmq: word(a), mysql: word(m.is_ok()) }
}
