//! Test harness: each test gets its own instance(s) of the service on port 0,
//! its own MySQL database and its own Redis key prefix, against the real
//! local stack (`scripts/stack up`): Redis Cluster on 7000-7005, RabbitMQ,
//! MariaDB. Override the endpoints with FLASHGRAB_TEST_REDIS_NODES,
//! FLASHGRAB_TEST_AMQP_URL and FLASHGRAB_TEST_MYSQL_URL (server URL, no db).

use std::collections::HashMap;
use std::net::SocketAddr;

use flashgrab::auth::JwtKeys;
use flashgrab::config::Settings;
use flashgrab::domain::{Campaign, CampaignId};
use flashgrab::http::AppState;
use flashgrab::startup::Application;
use flashgrab::stock::StockStore;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token-0123456789";
pub const SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

pub fn redis_nodes() -> String {
    env_or("FLASHGRAB_TEST_REDIS_NODES", "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002")
}

pub fn amqp_url() -> String {
    env_or("FLASHGRAB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

fn mysql_server() -> String {
    env_or("FLASHGRAB_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306").trim_end_matches('/').to_owned()
}

/// Settings for a test instance: `prefix` keeps its Redis keys apart, `db`
/// its database.
pub fn settings(prefix: &str, db: &str) -> Settings {
    let vars: HashMap<&str, String> = HashMap::from([
        ("FLASHGRAB_LISTEN", "127.0.0.1:0".to_owned()),
        ("FLASHGRAB_REDIS_NODES", redis_nodes()),
        ("FLASHGRAB_AMQP_URL", env_or("FLASHGRAB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
        ("FLASHGRAB_MYSQL_URL", format!("{}/{db}", mysql_server())),
        ("FLASHGRAB_ADMIN_TOKEN", ADMIN.to_owned()),
        ("FLASHGRAB_USER_JWT_SECRET", SECRET.to_owned()),
        ("FLASHGRAB_KEY_PREFIX", prefix.to_owned()),
        ("FLASHGRAB_REDIS_TIMEOUT_MS", "3000".to_owned()),
        ("FLASHGRAB_MYSQL_MAX_CONNECTIONS", "4".to_owned()),
        ("FLASHGRAB_RELAY_RECLAIM_MS", "2000".to_owned()),
        // Every test client is 127.0.0.1 and some tests flood as one user
        // on purpose: the rate limits are tested by their own tests.
        ("FLASHGRAB_IP_RATE", "0".to_owned()),
        ("FLASHGRAB_USER_RATE", "0".to_owned()),
    ]);
    Settings::load(None, |k| vars.get(k).cloned(), false).expect("test settings are valid")
}

/// One test's world: a prefix, a database, and the instances serving them.
#[derive(Clone)]
pub struct TestApp {
    pub addrs: Vec<SocketAddr>,
    pub client: Client,
    pub jwt: JwtKeys,
    pub prefix: String,
    pub db_name: String,
    pub stock: StockStore,
    /// State of the first instance (for reaching the services directly).
    pub state: AppState,
}

/// Starts one instance with a fresh prefix and database.
pub async fn spawn_app() -> TestApp {
    spawn_apps(1).await
}

/// Starts `n` instances sharing one prefix and database (like N instances
/// behind a load balancer), without the claim pipeline (API tests only).
pub async fn spawn_apps(n: usize) -> TestApp {
    spawn_with(n, false, false).await
}

/// One instance with the outbox relay and the persist worker running.
pub async fn spawn_pipeline_app() -> TestApp {
    spawn_with(1, true, true).await
}

/// A fresh prefix (also naming the test's queues) and database name.
pub fn fresh_names() -> (String, String) {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    (format!("t{}", &id[14..]), format!("fg_test_{id}"))
}

pub async fn spawn_with(n: usize, relay: bool, persist: bool) -> TestApp {
    let (prefix, db_name) = fresh_names();
    spawn_named(n, &prefix, &db_name, relay, persist).await
}

pub async fn spawn_named(n: usize, prefix: &str, db_name: &str, relay: bool, persist: bool) -> TestApp {
    spawn_configured(n, prefix, db_name, |s| {
        s.run_relay = relay;
        s.run_persist = persist;
    })
    .await
}

/// `n` instances with the test settings as changed by `configure`.
pub async fn spawn_configured(n: usize, prefix: &str, db_name: &str, configure: impl Fn(&mut Settings)) -> TestApp {
    let (prefix, db_name) = (prefix.to_owned(), db_name.to_owned());
    let mut s = settings(&prefix, &db_name);
    configure(&mut s);
    let mut addrs = Vec::new();
    let mut state = None;
    for _ in 0..n {
        let app = Application::build(&s).await.expect("the test instance starts (is `scripts/stack up` done?)");
        addrs.push(app.local_addr());
        state.get_or_insert_with(|| app.state().clone());
        tokio::spawn(app.run_until(std::future::pending()));
    }
    TestApp {
        addrs,
        client: Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        jwt: JwtKeys::new(SECRET.as_bytes()),
        prefix,
        db_name,
        stock: state.as_ref().unwrap().stock.clone(),
        state: state.unwrap(),
    }
}

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

/// Times relative to now, RFC 3339.
pub fn at(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(offset_secs * 1000)).to_rfc3339()
}

/// A valid campaign body: live now for an hour.
pub fn campaign_body(stock: u64) -> Value {
    json!({
        "name": "test drop", "total_stock": stock, "starts_at": at(-1), "ends_at": at(3600),
        "coupon": {"discount": {"type": "fixed", "amount_cents": 500}, "valid_for_days": 7}
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs[0])
    }

    pub fn url_on(&self, instance: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[instance % self.addrs.len()])
    }

    pub fn token(&self, user: &str) -> String {
        self.jwt.sign(user, chrono::Utc::now().timestamp() + 3600)
    }

    pub async fn post_admin(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).bearer_auth(ADMIN).json(body).send().await.unwrap()
    }

    pub async fn get_admin(&self, path: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(ADMIN).send().await.unwrap()
    }

    /// Creates a campaign, asserting 201; returns its JSON.
    pub async fn create_campaign(&self, body: Value) -> Value {
        let r = self.post_admin("/v1/campaigns", &body).await;
        let status = r.status();
        let j: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{j}");
        j
    }

    pub async fn stats(&self, campaign: &str) -> Value {
        let r = self.get_admin(&format!("/v1/campaigns/{campaign}/stats")).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// POST claim as `user` on instance `instance`; returns status and body.
    pub async fn claim_on(
        &self,
        instance: usize,
        campaign: &str,
        user: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(self.url_on(instance, &format!("/v1/campaigns/{campaign}/claim")))
            .bearer_auth(self.token(user));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn claim(&self, campaign: &str, user: &str) -> (StatusCode, Value) {
        self.claim_on(0, campaign, user, None).await
    }

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

    /// The stored campaign (terms and shard placement).
    pub async fn stock_campaign(&self, id: &str) -> std::sync::Arc<Campaign> {
        self.state.campaigns.find(&CampaignId::parse(id).unwrap()).await.unwrap().expect("campaign exists")
    }

    /// The MySQL URL of this test's database.
    pub fn mysql_url(&self) -> String {
        format!("{}/{}", mysql_server(), self.db_name)
    }

    /// Polls `stats.persisted` until it reaches `want` (bounded: panics
    /// after `secs` seconds with the last stats).
    pub async fn wait_persisted(&self, campaign: &str, want: u64, secs: u64) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let st = self.stats(campaign).await;
            if st["persisted"].as_u64() == Some(want) {
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "persisted never reached {want}: {st}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Runs reconcile for a campaign through the library.
    pub async fn reconcile(&self, campaign: &str, repair: bool) -> flashgrab::service::reconcile::ReconcileReport {
        let c = self.stock_campaign(campaign).await;
        flashgrab::service::reconcile::reconcile(&self.stock, &self.state.db, &c, repair).await.unwrap()
    }

    /// Deletes this test's queues and database (best effort; scripts/test
    /// sweeps what a failed test leaves).
    pub async fn cleanup(&self) {
        if let Ok(conn) = lapin::Connection::connect(
            &env_or("FLASHGRAB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            lapin::ConnectionProperties::default(),
        )
        .await
            && let Ok(ch) = conn.create_channel().await
        {
            let t = flashgrab::queue::topology::Topology::new(&self.prefix);
            for q in [&t.claims_queue, &t.dead_letter_queue] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            for x in [&t.claims_exchange, &t.dead_letter_exchange, &t.events_exchange] {
                let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{}`", self.db_name)))
            .execute(self.state.db.pool())
            .await;
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while self.outbox_len().await > 0 {
            assert!(std::time::Instant::now() < deadline, "the outbox never drained");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sum of the outbox stream lengths over every bucket of this prefix.
    pub async fn outbox_len(&self) -> u64 {
        let mut conn = self.stock.connection();
        let mut total = 0;
        for b in 0..self.stock.keys().buckets() {
            let n: u64 = redis::cmd("XLEN").arg(self.stock.keys().outbox(b)).query_async(&mut conn).await.unwrap();
            total += n;
        }
        total
    }
}

/// Asserts `(status, body)` is the documented error.
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(got.1["message"].is_string(), "{}", got.1);
}

/// Reads a response into (status, json body).
pub async fn parts(r: Response) -> (StatusCode, Value) {
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}
