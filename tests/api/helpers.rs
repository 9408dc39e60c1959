//! What only the API tests need beyond `support`: the events exchange, the
//! holdings index, the user's listing. Re-exports the test app and
//! `wait_until` so a test file needs one `use crate::helpers::*`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

pub use crate::support::app::*;
pub use crate::support::wait::wait_until;

/// A queue of this test's own bound to the app's events exchange (before
/// anything is published), and a consumer of it (no acks).
pub async fn listen_to_events(app: &TestApp) -> (lapin::Connection, lapin::Consumer) {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = flashgrab::queue::topology::Topology::new(&app.prefix);
    topology.declare(&ch).await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        topology.events_exchange.as_str().into(),
        "".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "test".into(),
            lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    (conn, consumer)
}

impl TestApp {
    pub async fn my_coupons(&self, user: &str, query: &str) -> Value {
        let r = self
            .client
            .get(self.url(&format!("/v1/me/coupons{query}")))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// The MySQL URL of this test's database.
    pub fn mysql_url(&self) -> String {
        self.settings.mysql_url.clone()
    }

    /// The user's holdings index (`<prefix>:held:<user>`): coupon id ->
    /// campaign id.
    pub async fn held(&self, user: &str) -> HashMap<String, String> {
        let mut conn = self.stock.connection();
        redis::cmd("HGETALL").arg(self.stock.keys().held(user)).query_async(&mut conn).await.unwrap()
    }

    /// Polls until every outbox stream of this prefix is empty: the relay
    /// shipped (and indexed) every grant so far. Panics after `secs`.
    pub async fn wait_relayed(&self, secs: u64) {
        wait_until(Duration::from_secs(secs), "the outbox drained", || async { self.outbox_len().await == 0 }).await;
    }
}
