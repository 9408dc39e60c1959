//! The test app: one test's world, built by [`TestApp::builder`] and given
//! back when the last clone of it is dropped.
//!
//! Each test gets its own instance(s) of the service on port 0, its own
//! MySQL database and its own Redis key prefix (which also names its queues
//! and exchanges), against the real local stack (`scripts/stack up`): Redis
//! Cluster on 7000-7005, RabbitMQ, MariaDB. Override the endpoints with
//! FLASHGRAB_TEST_REDIS_NODES, FLASHGRAB_TEST_AMQP_URL and
//! FLASHGRAB_TEST_MYSQL_URL (server URL, no db).
//!
//! Cleanup is the guarantee of `Drop`, not a call each test must remember:
//! the queues and exchanges of the prefix and the database are deleted
//! when the last clone goes, also when the test panics. Drop runs while a
//! failed test unwinds, maybe on a runtime that is shutting down, so it
//! never panics and uses none of the app's connections: the cleanup runs on
//! a thread of its own with its own runtime and connections, bounded in
//! time, and what fails is logged (scripts/test sweeps what is left).
//! Redis keys are left (as before: the prefix keeps them apart).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flashgrab::auth::JwtKeys;
use flashgrab::config::Settings;
use flashgrab::domain::{Campaign, CampaignId};
use flashgrab::http::AppState;
use flashgrab::startup::Application;
use flashgrab::stock::StockStore;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use super::wait::wait_for;

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
        ("FLASHGRAB_AMQP_URL", amqp_url()),
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

/// A fresh prefix (also naming the test's queues) and database name; the
/// names scripts/test sweeps when a run was killed.
pub fn fresh_names() -> (String, String) {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    (format!("t{}", &id[14..]), format!("fg_test_{id}"))
}

/// One test's world: a prefix, a database, and the instances serving them.
/// Clones share it; the last one dropped deletes it (see the module note).
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
    /// State of every instance, in the order of `addrs`.
    pub states: Vec<AppState>,
    /// The settings the instances were started with.
    pub settings: Arc<Settings>,
    _owned: Arc<Owned>,
}

/// One instance with a fresh prefix and database, without the claim
/// pipeline.
pub async fn spawn_app() -> TestApp {
    TestApp::builder().start().await
}

/// `n` instances sharing one prefix and database (like N instances behind
/// a load balancer), without the claim pipeline (API tests only).
pub async fn spawn_apps(n: usize) -> TestApp {
    TestApp::builder().instances(n).start().await
}

/// One instance with the outbox relay and the persist worker running.
pub async fn spawn_pipeline_app() -> TestApp {
    TestApp::builder().pipeline().start().await
}

type Configure = Box<dyn Fn(&mut Settings)>;
type BaseSettings = Box<dyn FnOnce(&str, &str) -> Settings>;

/// How a [`TestApp`] is started: see [`TestApp::builder`].
pub struct Builder {
    instances: usize,
    relay: bool,
    persist: bool,
    base: Option<BaseSettings>,
    configure: Vec<Configure>,
    alongside: Option<TestApp>,
    names: Option<(String, String)>,
    idle_connections: usize,
}

impl TestApp {
    /// One instance, fresh prefix and database, neither the outbox relay
    /// nor the persist worker running; change any of it before `start`.
    pub fn builder() -> Builder {
        Builder {
            instances: 1,
            relay: false,
            persist: false,
            base: None,
            configure: Vec::new(),
            alongside: None,
            names: None,
            idle_connections: 64,
        }
    }
}

impl Builder {
    /// `n` instances sharing the prefix and the database.
    pub fn instances(mut self, n: usize) -> Self {
        assert!(n >= 1, "a test app has at least one instance");
        self.instances = n;
        self
    }

    /// The outbox relay and the persist worker run in the instances.
    pub fn pipeline(self) -> Self {
        self.relay(true).persist(true)
    }

    pub fn relay(mut self, on: bool) -> Self {
        self.relay = on;
        self
    }

    pub fn persist(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// Settings changed by `f` after the rest (limits, Redis nodes,
    /// timeouts, the pipeline flags).
    pub fn configure(mut self, f: impl Fn(&mut Settings) + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Settings of the test's own (another stack): `base(prefix, db)`
    /// instead of [`settings`].
    pub fn base_settings(mut self, base: impl FnOnce(&str, &str) -> Settings + 'static) -> Self {
        self.base = Some(Box::new(base));
        self
    }

    /// Idle connections the app's HTTP client keeps per instance (64).
    pub fn idle_connections(mut self, n: usize) -> Self {
        self.idle_connections = n;
        self
    }

    /// The prefix and the database named so (made before the app, e.g. to
    /// bind a queue before anything is published); owned as fresh ones.
    pub fn named(mut self, prefix: &str, db_name: &str) -> Self {
        self.names = Some((prefix.to_owned(), db_name.to_owned()));
        self
    }

    /// More instances of `other`'s world: its prefix, its database, its
    /// settings base; deleted when the last app of either is dropped.
    pub fn alongside(mut self, other: &TestApp) -> Self {
        self.alongside = Some(other.clone());
        self
    }

    pub async fn start(self) -> TestApp {
        let (prefix, db_name, owned) = match &self.alongside {
            Some(o) => (o.prefix.clone(), o.db_name.clone(), Some(o._owned.clone())),
            None => {
                let (p, d) = self.names.clone().unwrap_or_else(fresh_names);
                (p, d, None)
            }
        };
        let mut s = match (self.base, &self.alongside) {
            (Some(base), _) => base(&prefix, &db_name),
            (None, Some(o)) => (*o.settings).clone(),
            (None, None) => settings(&prefix, &db_name),
        };
        s.run_relay = self.relay;
        s.run_persist = self.persist;
        for f in &self.configure {
            f(&mut s);
        }
        let s = Arc::new(s);
        // Owned before the first instance starts: its database exists once
        // it started, and must go even if a later instance fails to start.
        let owned = owned.unwrap_or_else(|| Arc::new(Owned { settings: s.clone(), db_name: db_name.clone() }));
        let mut addrs = Vec::new();
        let mut states = Vec::new();
        for _ in 0..self.instances {
            let app = Application::build(&s).await.expect("the test instance starts (is `scripts/stack up` done?)");
            addrs.push(app.local_addr());
            states.push(app.state().clone());
            tokio::spawn(app.run_until(std::future::pending()));
        }
        let state = states[0].clone();
        TestApp {
            addrs,
            client: Client::builder().pool_max_idle_per_host(self.idle_connections).build().unwrap(),
            jwt: JwtKeys::new(SECRET.as_bytes()),
            prefix,
            db_name,
            stock: state.stock.clone(),
            state,
            states,
            settings: s,
            _owned: owned,
        }
    }
}

/// What a test app owns outside this process: deleted on drop.
struct Owned {
    settings: Arc<Settings>,
    db_name: String,
}

/// Upper bound of the whole cleanup (a stopped broker or database must not
/// hang the test that stopped it).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

impl Drop for Owned {
    fn drop(&mut self) {
        let (s, db_name) = (self.settings.clone(), self.db_name.clone());
        let work = move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("test cleanup of {}: no runtime: {e}", s.key_prefix),
            };
            // The timeout is made inside the runtime (its timer).
            if rt.block_on(async { tokio::time::timeout(CLEANUP_TIMEOUT, delete_world(&s, &db_name)).await }).is_err() {
                eprintln!("test cleanup of {}: gave up after {CLEANUP_TIMEOUT:?}", s.key_prefix);
            }
        };
        match std::thread::Builder::new().name("test-cleanup".into()).spawn(work) {
            Ok(t) => {
                if t.join().is_err() {
                    eprintln!("test cleanup of {}: the cleanup thread panicked", self.settings.key_prefix);
                }
            }
            Err(e) => eprintln!("test cleanup of {}: no thread: {e}", self.settings.key_prefix),
        }
    }
}

/// Deletes the prefix's queues and exchanges and the database (best
/// effort, each failure logged).
async fn delete_world(s: &Settings, db_name: &str) {
    match s.amqp().connect().await {
        Ok(conn) => {
            let t = flashgrab::queue::topology::Topology::new(&s.key_prefix);
            // A refused delete closes its channel: one channel per delete.
            for q in [&t.claims_queue, &t.dead_letter_queue] {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
            }
            for x in [&t.claims_exchange, &t.dead_letter_exchange, &t.events_exchange] {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
                }
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        Err(e) => eprintln!("test cleanup of {}: rabbitmq: {e}", s.key_prefix),
    }
    let db = match flashgrab::db::Db::connect_to(&s.mysql(), 1, Duration::from_secs(5)).await {
        Ok(db) => db,
        Err(e) => return eprintln!("test cleanup of {}: mysql: {e}", s.key_prefix),
    };
    // A transaction of an instance stalled with its runtime must not hold
    // the drop forever (the metadata lock would): give up after 5 s.
    let _ = sqlx::query("SET SESSION lock_wait_timeout = 5").execute(db.pool()).await;
    if let Err(e) =
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db_name}`"))).execute(db.pool()).await
    {
        eprintln!("test cleanup of {}: DROP DATABASE {db_name}: {e}", s.key_prefix);
    }
    db.pool().close().await;
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

    /// The stored campaign (terms and shard placement).
    pub async fn stock_campaign(&self, id: &str) -> Arc<Campaign> {
        self.state.campaigns.find(&CampaignId::parse(id).unwrap()).await.unwrap().expect("campaign exists")
    }

    /// Polls `stats.persisted` until it reaches `want` (bounded: panics
    /// after `secs` seconds with the last stats).
    pub async fn wait_persisted(&self, campaign: &str, want: u64, secs: u64) -> Value {
        wait_for(Duration::from_secs(secs), &format!("persisted reaching {want}"), || async {
            let st = self.stats(campaign).await;
            if st["persisted"].as_u64() == Some(want) { Ok(st) } else { Err(st.to_string()) }
        })
        .await
    }

    /// Runs reconcile for a campaign through the library.
    pub async fn reconcile(&self, campaign: &str, repair: bool) -> flashgrab::service::reconcile::ReconcileReport {
        let c = self.stock_campaign(campaign).await;
        flashgrab::service::reconcile::reconcile(&self.stock, &self.state.db, &c, repair).await.unwrap()
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
