//! Tests that disrupt the shared local stack (they restart Redis nodes).
//! They live in their own test binary so that they never run alongside the
//! API tests (cargo runs test binaries one after another), and they take a
//! lock among themselves.

mod dlq;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod isolation;
mod pressure;
#[path = "../support/private_cluster.rs"]
mod private_cluster;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use helpers::*;
use pressure::{DROP, FAST, Pressure, SLOW, assert_invariants_at_rest, drop_campaign, wait_claimed};

mod replicated;

mod repair;
mod retries;

/// Serialises the disruptive tests of this binary.
static STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scripts/stack <args>` with no file descriptor inherited beyond stdio: a
/// Redis node it starts is a daemon that would otherwise keep whatever this
/// test process inherited, such as the fd of a `flock /tmp/fg-stack.lock
/// cargo test` around the run, and hold that lock for as long as it lives.
fn stack_command(args: &[&str]) -> std::process::Command {
    let script = format!("{}/scripts/stack", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(r#"for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$0" "$@""#)
        .arg(script)
        .args(args);
    cmd
}

fn stack(args: &[&str]) {
    let out = stack_command(args).output().expect("scripts/stack runs");
    assert!(
        out.status.success(),
        "scripts/stack {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Claims, retrying 503s for up to ~20 s (a restarted node or a failover
/// takes a few seconds to settle; the service must say "retry", never lie).
async fn claim_until_answered(app: &TestApp, id: &str, user: &str) -> (StatusCode, serde_json::Value) {
    claim_until_answered_at(app, &app.url(""), id, user).await
}

/// Every master is restarted in turn (its script cache is empty when it comes
/// back, and it may even have been failed over to its replica). Claims keep
/// being granted, and no unit is created or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_survive_redis_master_restarts() {
    let _guard = STACK.lock().await;
    let app = spawn_app().await;
    let mut body = campaign_body(100);
    body["shards"] = json!(6);
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let mut granted = 0u64;
    for i in 0..10 {
        assert_eq!(app.claim(&id, &format!("pre-{i}")).await.0, StatusCode::CREATED);
        granted += 1;
    }
    let masters = app.stock.slot_map().await.unwrap().masters();
    assert_eq!(masters.len(), 3);
    for (round, master) in masters.iter().enumerate() {
        let port = master.rsplit(':').next().unwrap();
        stack(&["restart-node", port]);
        for i in 0..10 {
            let got = claim_until_answered(&app, &id, &format!("after-{round}-{i}")).await;
            assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
            granted += 1;
        }
    }
    stack(&["up"]);
    let st = app.stats(&id).await;
    assert_eq!(st["claimed"], granted, "{st}");
    assert_eq!(st["remaining"].as_u64().unwrap() + granted, 100, "{st}");
}

// ---------------------------------------------------------------------------
// Invariant 3 under faults: every claim answered 201 becomes exactly one row.
// ---------------------------------------------------------------------------

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Keeps claiming with fresh users, `width` requests in flight, until
/// stopped; collects the coupon ids answered 201. Connection errors (a
/// killed server) and 503s are expected and simply retried with a new user.
struct Burst {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Burst {
    fn start(
        client: reqwest::Client,
        base: String,
        campaign: String,
        jwt: flashgrab::auth::JwtKeys,
        width: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..width)
            .map(|w| {
                let (client, base, campaign, jwt, stop) =
                    (client.clone(), base.clone(), campaign.clone(), jwt.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut granted = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let token = jwt.sign(&format!("b{w}-{n}"), chrono::Utc::now().timestamp() + 600);
                        let r = client
                            .post(format!("{base}/v1/campaigns/{campaign}/claim"))
                            .bearer_auth(token)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == StatusCode::CREATED => {
                                let body: serde_json::Value = r.json().await.unwrap();
                                granted.push(body["id"].as_str().unwrap().to_owned());
                            }
                            Ok(r) if r.status().as_u16() == 410 => break,
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    granted
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the real binary (`flashgrab <args>`) for a test's prefix and db.
#[allow(dead_code)]
fn spawn_binary(args: &[&str], prefix: &str, db_name: &str, port: u16) -> Child {
    spawn_binary_with(args, prefix, db_name, port, &[])
}

/// [`spawn_binary`] with extra environment variables.
fn spawn_binary_with(args: &[&str], prefix: &str, db_name: &str, port: u16, env: &[(&str, &str)]) -> Child {
    let s = settings(prefix, db_name);
    Command::new(env!("CARGO_BIN_EXE_flashgrab"))
        .args(args)
        .envs(env.iter().copied())
        .env("FLASHGRAB_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHGRAB_REDIS_NODES", s.redis_nodes.join(","))
        .env("FLASHGRAB_AMQP_URL", &s.amqp_url)
        .env("FLASHGRAB_MYSQL_URL", &s.mysql_url)
        .env("FLASHGRAB_KEY_PREFIX", prefix)
        .env("FLASHGRAB_ADMIN_TOKEN", ADMIN)
        .env("FLASHGRAB_USER_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the flashgrab binary starts")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became healthy");
}

fn kill9(child: &mut Child) {
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).stderr(Stdio::null()).status();
    let _ = child.wait();
}

/// The end state every fault test must reach: no unit created or lost
/// (`remaining + claimed == total_stock` in the stats, and shard by shard
/// in Redis counting journaled transfers), nobody holds more than the limit
/// (holders entries in Redis, without a coupon named twice; rows per user
/// in MySQL), the rows in MySQL are exactly the claims Redis granted, every
/// 201 is among them, no duplicates, and reconcile reports a match.
/// [`pressure::assert_invariants_at_rest`] adds the checks of a history.
async fn assert_exactly_once(app: &TestApp, campaign: &str, answered_201: &[String]) {
    let st = app.stats(campaign).await;
    let claimed = st["claimed"].as_u64().unwrap();
    assert!(claimed >= answered_201.len() as u64, "{st}");
    // Shard by shard first: its failures say which mechanism broke.
    let c = app.stock_campaign(campaign).await;
    let in_redis = pressure::assert_redis_at_rest(app, &c).await.records;
    assert_eq!(st["remaining"].as_u64().unwrap() + claimed, st["total_stock"].as_u64().unwrap(), "conservation: {st}");
    assert_eq!(in_redis.len() as u64, claimed, "the stats count every claim record: {st}");
    app.wait_persisted(campaign, claimed, 90).await;
    let rows: Vec<String> = app.state.db.campaign_coupons(campaign).await.unwrap().into_iter().map(|r| r.id).collect();
    let unique: HashSet<&String> = rows.iter().collect();
    assert_eq!(unique.len(), rows.len(), "duplicate rows");
    assert_eq!(rows.len() as u64, claimed, "one row per grant");
    for id in answered_201 {
        assert!(unique.contains(id), "coupon {id} was answered 201 but has no row");
    }
    let report = app.reconcile(campaign, false).await;
    assert!(report.matched(), "{report}");
    pressure::assert_mysql_limit(app, &c).await;
}

/// Environment of a child `flashgrab` in the fault tests: no rate limits
/// (every worker is 127.0.0.1 and users come back), and a dead relay's
/// entries are taken over after 2 s instead of 15.
const CHILD_ENV: [(&str, &str); 3] =
    [("FLASHGRAB_IP_RATE", "0"), ("FLASHGRAB_USER_RATE", "0"), ("FLASHGRAB_RELAY_RECLAIM_MS", "2000")];

/// Asserts that the drop is not sold out yet when the fault is in place.
async fn assert_stock_left(app: &TestApp, c: &flashgrab::domain::Campaign, burst: &Pressure, fault: &str) {
    let mut claimed = None;
    for _ in 0..50 {
        claimed = pressure::claimed_in_redis(app, c).await;
        if claimed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let claimed = claimed.expect("Redis answers");
    assert!(
        claimed < c.total_stock && !burst.saw_sold_out(),
        "{fault} came after the sell-out ({claimed} granted): the test proves nothing, slow the burst down"
    );
}

async fn big_campaign(app: &TestApp) -> String {
    let mut body = campaign_body(1_000_000);
    body["shards"] = json!(6);
    app.create_campaign(body).await["id"].as_str().unwrap().to_owned()
}

/// kill -9 of `serve` in the middle of the sell-out of a contested drop
/// (half the units granted, the rest being claimed and borrowed between
/// shards): requests in flight are cut off, transfers may be left
/// journaled, the outbox holds unrelayed grants. The restarted instance
/// sells the rest; at rest nothing is created, lost or granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_burst_loses_no_claim() {
    let _guard = STACK.lock().await;
    let (prefix, db_name) = fresh_names();
    // An in-process instance without the pipeline: used for admin calls,
    // stats and reconcile; the serving, relaying, persisting one is a child.
    let app = spawn_named(1, &prefix, &db_name, false, false).await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = KillOnDrop(spawn_binary_with(&["serve"], &prefix, &db_name, port, &CHILD_ENV));
    wait_healthy(&app.client, &base).await;

    let burst = Pressure::start(&app, &base, &campaign, DROP, Duration::from_millis(100));
    wait_claimed(&app, &c, DROP.stock / 2, 30).await;
    kill9(&mut child.0);
    assert_stock_left(&app, &c, &burst, "the kill").await;
    child = KillOnDrop(spawn_binary_with(&["serve"], &prefix, &db_name, port, &CHILD_ENV));
    wait_healthy(&app.client, &base).await;
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    drop(child);
    app.cleanup().await;
}

/// kill -9 of the persist worker while rows are flowing; the drop sells
/// out while no worker runs, then a new one persists everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_persist_worker_mid_batch_loses_no_claim() {
    let _guard = STACK.lock().await;
    let (prefix, db_name) = fresh_names();
    // Serving and relaying in process; persisting in a child we kill.
    let app = spawn_named(1, &prefix, &db_name, true, false).await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let mut worker = KillOnDrop(spawn_binary_with(&["persist"], &prefix, &db_name, 0, &CHILD_ENV));

    let burst = Pressure::start(&app, &app.url(""), &campaign, DROP, SLOW);
    // Kill it while it is writing: once rows are flowing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.stats(&campaign).await["persisted"].as_u64().unwrap() < 3 {
        assert!(std::time::Instant::now() < deadline, "the worker never persisted anything");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill9(&mut worker.0);
    assert_stock_left(&app, &c, &burst, "the kill").await;
    burst.pace(FAST);
    burst.wait_sold_out(20).await;
    worker = KillOnDrop(spawn_binary_with(&["persist"], &prefix, &db_name, 0, &CHILD_ENV));
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    drop(worker);
    app.cleanup().await;
}

fn rabbitmqctl(arg: &str) {
    let ok = Command::new("rabbitmqctl").arg(arg).stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "rabbitmqctl {arg} failed");
}

/// Restarts the broker app even if the test fails half-way.
struct RabbitGuard;
impl Drop for RabbitGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").stdout(Stdio::null()).status();
    }
}

/// The broker stops while a contested drop is selling and stays down until
/// it sold out: claims keep being granted, the outbox grows, the relay
/// reconnects and drains once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_mid_burst_loses_no_claim() {
    let _guard = STACK.lock().await;
    let app = spawn_pipeline_app().await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let burst = Pressure::start(&app, &app.url(""), &campaign, DROP, SLOW);
    wait_claimed(&app, &c, 3, 30).await;

    let rabbit = RabbitGuard;
    rabbitmqctl("stop_app");
    assert_stock_left(&app, &c, &burst, "the broker stop").await;
    burst.pace(FAST);
    // Claims are granted while the broker is down, to the last unit.
    burst.wait_sold_out(20).await;
    rabbitmqctl("start_app");
    drop(rabbit);
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    app.cleanup().await;
}

/// Starts MariaDB again even if the test fails half-way.
struct MariaGuard;
impl Drop for MariaGuard {
    fn drop(&mut self) {
        start_mariadb();
    }
}

fn mariadb_answers() -> bool {
    Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-e", "select 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The pid of the MariaDB server on 127.0.0.1:3306, from its own pid file
/// (`@@pid_file`). Other mariadbd processes may run beside it (the TLS
/// variant of `scripts/stack`): the test stops and waits for this one only.
fn mariadbd_pid() -> Option<u32> {
    let out = Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-N", "-e", "select @@pid_file"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let file = String::from_utf8(out.stdout).ok()?;
    std::fs::read_to_string(file.trim()).ok()?.trim().parse().ok()
}

/// Starts MariaDB and waits until it answers. The start is asked again
/// every second: a server still shutting down makes `start-stop-daemon`
/// answer "already running" and start nothing. Matched by the server's pid
/// file, so another mariadbd running (e.g. the TLS variant on its own port)
/// is not taken for this one.
fn start_mariadb() {
    for i in 0..600 {
        if mariadb_answers() {
            return;
        }
        if i % 10 == 0 {
            let _ = Command::new("start-stop-daemon")
                .args(["--start", "--oknodo", "--quiet", "--background", "--pidfile", "/run/mysqld/mysqld.pid"])
                .args(["--exec", "/usr/sbin/mariadbd"])
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "MariaDB did not come back: start it with start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
    );
}

/// Shuts MariaDB down and waits (bounded) until its process is gone.
fn stop_mariadb() {
    let pid = mariadbd_pid().expect("the pid of the MariaDB server on 3306 (from @@pid_file)");
    let stopped = Command::new("mariadb-admin").args(["-uroot", "-h127.0.0.1", "shutdown"]).status().unwrap();
    assert!(stopped.success(), "mariadb-admin shutdown");
    for _ in 0..300 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("mariadbd (pid {pid}) still running 30 s after mariadb-admin shutdown");
}

/// MySQL goes down while a contested drop is selling and stays down until
/// it sold out: claims go on from Redis (the campaign is cached), messages
/// wait in the queue, the worker retries until MySQL is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outage_mid_burst_loses_no_claim() {
    let _guard = STACK.lock().await;
    let app = spawn_pipeline_app().await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let burst = Pressure::start(&app, &app.url(""), &campaign, DROP, SLOW);
    wait_claimed(&app, &c, 3, 30).await;

    let maria = MariaGuard;
    stop_mariadb();
    assert_stock_left(&app, &c, &burst, "the MySQL outage").await;
    burst.pace(FAST);
    burst.wait_sold_out(20).await;
    drop(maria);
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    app.cleanup().await;
}

/// Drops every client connection of every master (`CLIENT KILL TYPE
/// normal`), over and over, while a contested drop sells out: script calls
/// whose reply was lost are resent by the client and run again. A second
/// run must change nothing (the same coupon id is not granted again, the
/// stock is not taken twice, a user does not get a second coupon for one
/// claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_on_every_master_mid_sell_out_grant_nothing_twice() {
    let _guard = STACK.lock().await;
    let app = spawn_pipeline_app().await;
    // A lost reply is a narrow window: five times the drop (still 3 per
    // user, fewer users than claims, 50 units per shard) gives it enough
    // grants to hit it in most runs.
    let terms = pressure::Terms { stock: 300, users: 120, ..DROP };
    let campaign = drop_campaign(&app, terms).await;
    let c = app.stock_campaign(&campaign).await;
    let burst = Pressure::start(&app, &app.url(""), &campaign, terms, SLOW);
    wait_claimed(&app, &c, 3, 30).await;

    let masters = app.stock.slot_map().await.unwrap().masters();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let resets = {
        let (stop, killed) = (stop.clone(), killed.clone());
        tokio::spawn(async move {
            let mut conns = Vec::new();
            for m in &masters {
                let client = redis::Client::open(format!("redis://{m}")).unwrap();
                conns.push(client.get_multiplexed_async_connection().await.unwrap());
            }
            while !stop.load(Ordering::Relaxed) {
                for conn in &mut conns {
                    // Our own connection is skipped (SKIPME yes by default).
                    let n: u64 =
                        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query_async(conn).await.unwrap();
                    killed.fetch_add(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    while killed.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_stock_left(&app, &c, &burst, "the first connection reset").await;
    burst.pace(FAST);
    burst.wait_sold_out(30).await;
    stop.store(true, Ordering::Relaxed);
    resets.await.unwrap();
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    app.cleanup().await;
}

/// Sum of EVALSHA calls over every node of the cluster.
async fn evalsha_calls() -> u64 {
    let mut total = 0;
    for port in 7000..7006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue };
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
        total += info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Once an instance saw the campaign sold out, a flood of claims is answered
/// 410 from memory without a single script call (counted with INFO
/// commandstats on every node; this binary runs alone, serialised). A retry
/// carrying an Idempotency-Key still reaches Redis and gets its coupon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sell_out_claims_are_answered_from_memory() {
    let _guard = STACK.lock().await;
    let app = spawn_app().await;
    let mut body = campaign_body(5);
    body["shards"] = json!(3);
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let first = app.claim_on(0, &id, "keeper", Some("k-1")).await;
    assert_eq!(first.0, StatusCode::CREATED);
    for i in 0..4 {
        assert_eq!(app.claim(&id, &format!("early-{i}")).await.0, StatusCode::CREATED);
    }
    assert_error(&app.claim(&id, "first-to-see-it").await, 410, "sold_out");

    let before = evalsha_calls().await;
    for i in 0..200 {
        assert_error(&app.claim(&id, &format!("flood-{i}")).await, 410, "sold_out");
    }
    assert_eq!(evalsha_calls().await, before, "the flood never reached Redis");

    let replay = app.claim_on(0, &id, "keeper", Some("k-1")).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.1);
    assert_eq!(replay.1["id"], first.1["id"]);
}

// ---------------------------------------------------------------------------
// Redis failover and the `replicated` durability mode.
// ---------------------------------------------------------------------------

/// `CLUSTER NODES` from the first node that answers.
async fn cluster_nodes() -> String {
    for port in 7000..7006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue };
        if let Ok(nodes) = redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut conn).await {
            return nodes;
        }
    }
    panic!("no Redis node answers CLUSTER NODES");
}

/// A master holding slots and the port of its healthy replica.
fn master_and_replica(nodes: &str) -> (u16, u16) {
    let rows: Vec<Vec<&str>> =
        nodes.lines().map(|l| l.split_whitespace().collect::<Vec<&str>>()).filter(|f| f.len() >= 8).collect();
    let port = |addr: &str| addr.split(['@']).next().unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    for m in rows.iter().filter(|f| f[2].contains("master") && !f[2].contains("fail") && f.len() > 8) {
        if let Some(r) = rows.iter().find(|f| f[3] == m[0] && f[2].contains("slave") && !f[2].contains("fail")) {
            return (port(m[1]), port(r[1]));
        }
    }
    panic!("no master with a healthy replica in:\n{nodes}");
}

/// Whether the node on `port` is a master now.
async fn master_and_replica_roles(port: u16) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await.unwrap();
    info.lines().any(|l| l.trim() == "role:master")
}

/// The process id of the Redis node on `port`.
async fn redis_pid(port: u16) -> u32 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("process_id:")).unwrap().trim().parse().unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// Gives the stack back its shape even if the failover test fails half-way:
/// thaws the frozen replica and starts the killed master again (it comes
/// back as a replica; the test then fails over to it).
struct FailoverGuard {
    master: u16,
    replica_pid: u32,
}
impl Drop for FailoverGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.replica_pid.to_string()]).status();
        let _ = stack_command(&["start-node", &self.master.to_string()]).status();
    }
}

async fn readyz(client: &reqwest::Client, base: &str) -> (StatusCode, serde_json::Value) {
    match client.get(format!("{base}/readyz")).timeout(Duration::from_secs(10)).send().await {
        Ok(r) => {
            let status = r.status();
            (status, r.json().await.unwrap_or_default())
        }
        Err(e) => panic!("/readyz did not answer: {e}"),
    }
}

/// Polls `/readyz` (every 50 ms, at most `secs`) until `want` says yes.
async fn readyz_until(
    client: &reqwest::Client,
    base: &str,
    secs: u64,
    what: &str,
    want: impl Fn(StatusCode, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, body) = readyz(client, base).await;
        if want(status, &body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz never {what}: last {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn claim_at(app: &TestApp, base: &str, campaign: &str, user: &str) -> (StatusCode, serde_json::Value) {
    let token = app.jwt.sign(user, chrono::Utc::now().timestamp() + 600);
    let r = app
        .client
        .post(format!("{base}/v1/campaigns/{campaign}/claim"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or_default())
}

/// `replicated` mode through a crash of a master in the middle of the
/// sell-out of a contested drop. Its replica is frozen (SIGSTOP) for a
/// moment first: it acknowledges nothing, so the master's grants meanwhile
/// find no replica in their WAIT and are answered 503 ("maybe granted"),
/// then the master is killed -9 and the replica promoted. The drop sells
/// out through the failover (its shards answer 503 until the promotion, and
/// until the old master is back as a replica: fail closed), with transfers
/// from and to the promoted node. Every 201 must still be in Redis
/// afterwards and persisted exactly once, nobody above the limit, no unit
/// created or lost. Meanwhile `/readyz` says the cluster is down, then ok
/// once the replica took over and the client refreshed its slot map (and
/// reloaded the scripts on the promoted node).
///
/// Known gap: a frozen replica still receives the stream into its socket
/// buffer, so the same run in `fast` mode loses nothing either; this test
/// shows that `replicated` keeps its promise, not that `fast` breaks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_claims_survive_a_master_failover() {
    let _guard = STACK.lock().await;
    let (prefix, db_name) = fresh_names();
    let app = spawn_named(1, &prefix, &db_name, false, false).await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = CHILD_ENV.to_vec();
    env.extend([("FLASHGRAB_DURABILITY", "replicated"), ("FLASHGRAB_REPLICA_WAIT_MS", "50")]);
    let child = KillOnDrop(spawn_binary_with(&["serve"], &prefix, &db_name, port, &env));
    wait_healthy(&app.client, &base).await;
    readyz_until(&app.client, &base, 30, "became ready", |s, _| s == StatusCode::OK).await;

    let (master, replica) = master_and_replica(&cluster_nodes().await);
    let replica_pid = redis_pid(replica).await;
    let restore = FailoverGuard { master, replica_pid };
    let burst = Pressure::start(&app, &base, &campaign, DROP, SLOW);
    wait_claimed(&app, &c, 3, 30).await;

    signal(replica_pid, "-STOP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_stock_left(&app, &c, &burst, "the master crash").await;
    stack(&["kill-node", &master.to_string()]);
    signal(replica_pid, "-CONT");
    burst.pace(FAST);
    let down = readyz_until(&app.client, &base, 30, "reported redis down", |s, b| {
        s == StatusCode::SERVICE_UNAVAILABLE && b["redis"] == "down"
    })
    .await;
    assert_eq!(down["mysql"], "ok", "{down}");
    readyz_until(&app.client, &base, 60, "became ready after the failover", |s, _| s == StatusCode::OK).await;
    let promoted = master_and_replica_roles(replica).await;
    assert!(promoted, "/readyz said ok but the replica {replica} was not promoted (master {master} is dead)");

    // The promoted replica has no replica of its own until the old master
    // is back: its shards answer 503 in replicated mode (fail closed).
    stack(&["start-node", &master.to_string()]);
    let history = burst.settle(60).await;
    assert!(history.unavailable > 0, "the failover was seen (503s): {}", history.summary());

    assert_invariants_at_rest(&app, &campaign, &history).await;

    drop(child);
    // Give the shard its original master back (coordinated, loses nothing).
    drop(restore);
    stack(&["failover", &master.to_string()]);
    stack(&["status"]);
    app.cleanup().await;
}

/// A child process killed (-9) when the test ends, even by a panic.
struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill9(&mut self.0);
    }
}

/// Claims at `base` (this test's instance or a child process), retrying
/// 503s for up to ~20 s.
async fn claim_until_answered_at(app: &TestApp, base: &str, id: &str, user: &str) -> (StatusCode, serde_json::Value) {
    for _ in 0..200 {
        let got = claim_at(app, base, id, user).await;
        if got.0 != StatusCode::SERVICE_UNAVAILABLE {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user}: still 503 after 20 s");
}

// ---------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------

/// SIGTERM to `flashgrab serve` in the middle of a burst: it stops
/// accepting, answers the requests it was handling, relays what is in the
/// outbox and lets the persist worker commit and ack it, then exits 0. With
/// no other process running afterwards, every claim Redis granted was
/// answered 201 (nothing in flight was cut off) and has its row in MySQL
/// (nothing was left in the outbox or the queue).
///
/// So that the pipeline really is behind when the signal comes, the test's
/// `coupons` table is write-locked for a moment around it: the worker's
/// inserts wait and messages pile up in the queue beyond its prefetch; a
/// worker that stopped once its batches in hand were written would leave
/// them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_answers_in_flight_requests_and_flushes_the_pipeline() {
    let _guard = STACK.lock().await;
    let (prefix, db_name) = fresh_names();
    // In process: admin calls, stats and reconcile only (no relay, no worker).
    let app = spawn_named(1, &prefix, &db_name, false, false).await;
    let campaign = big_campaign(&app).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary_with(&["serve"], &prefix, &db_name, port, &[("FLASHGRAB_IP_RATE", "0")]);
    wait_healthy(&app.client, &base).await;

    let burst = Burst::start(app.client.clone(), base.clone(), campaign.clone(), app.jwt.clone(), 16);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let st = app.stats(&campaign).await;
    assert!(st["persisted"].as_u64().unwrap() > 0, "claims were being persisted: {st}");
    let mut lock = {
        use sqlx::Connection;
        sqlx::MySqlConnection::connect(&settings(&prefix, &db_name).mysql_url).await.unwrap()
    };
    sqlx::query("LOCK TABLES coupons WRITE").execute(&mut lock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(child.id(), "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UNLOCK TABLES").execute(&mut lock).await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        // Bounded: a shutdown that hangs fails the test instead of the suite.
        for _ in 0..1200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("flashgrab serve did not exit within 120 s of SIGTERM");
    })
    .await
    .unwrap();
    assert!(status.success(), "flashgrab serve exited with {status}");
    let granted = burst.finish().await;
    assert!(granted.len() > 50, "the burst granted claims ({})", granted.len());

    // Nothing runs the pipeline any more: what is in MySQL now is final.
    let claimed = app.stats(&campaign).await["claimed"].as_u64().unwrap();
    assert_eq!(claimed, granted.len() as u64, "every grant in Redis was answered 201 (no request cut off)");
    let rows: Vec<String> = app.state.db.campaign_coupons(&campaign).await.unwrap().into_iter().map(|r| r.id).collect();
    let unique: HashSet<&String> = rows.iter().collect();
    assert_eq!(unique.len(), rows.len(), "duplicate rows");
    let missing: Vec<&String> = granted.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "{} claims answered 201 have no row after the shutdown: {missing:?}", missing.len());
    assert_eq!(rows.len() as u64, claimed, "one row per grant");
    let report = app.reconcile(&campaign, false).await;
    assert!(report.matched(), "{report}");
    app.cleanup().await;
}
