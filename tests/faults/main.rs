//! Tests that disrupt the shared local stack (they restart, freeze or kill
//! Redis nodes, stop RabbitMQ and MariaDB). They live in their own test
//! binary so that they never run alongside the API tests (cargo runs test
//! binaries one after another), and they take a lock among themselves
//! ([`STACK`]). One file per fault; this one holds what they share: the
//! child `flashgrab` processes, the exactly-once check at rest, the shared
//! cluster's layout and its guards.

#[path = "../support/mod.rs"]
mod support;

mod crashes;
mod dlq;
mod failover;
mod isolation;
mod outages;
mod pressure;
mod repair;
mod replicated;
mod resets;
mod restarts;
mod retries;
mod shutdown;
mod sold_out;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use pressure::{DROP, FAST, Pressure, SLOW, assert_invariants_at_rest, drop_campaign, wait_claimed};
use support::app::*;
use support::process::{ChildGuard, signal};
use support::wait::wait_until;

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

// ---------------------------------------------------------------------------
// Invariant 3 under faults: every claim answered 201 becomes exactly one row.
// ---------------------------------------------------------------------------

use std::collections::HashSet;
use std::process::{Command, Stdio};
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

/// Starts the real binary (`flashgrab <args>`) for the prefix and the
/// database of `app`, on `port`, with `env` on top; killed when dropped.
fn spawn_binary(args: &[&str], app: &TestApp, port: u16, env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = flashgrab_command(args, app, port);
    cmd.envs(env.iter().copied()).env("RUST_LOG", "warn").stdout(Stdio::null());
    ChildGuard::spawn(&mut cmd, &format!("flashgrab {}", args.join(" ")))
}

/// `flashgrab <args>` on `port` with the backends, the prefix and the
/// database of `app` (the rest is the binary's defaults).
fn flashgrab_command(args: &[&str], app: &TestApp, port: u16) -> Command {
    let s = &app.settings;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashgrab"));
    cmd.args(args)
        .env("FLASHGRAB_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHGRAB_REDIS_NODES", s.redis_nodes.join(","))
        .env("FLASHGRAB_AMQP_URL", &s.amqp_url)
        .env("FLASHGRAB_MYSQL_URL", &s.mysql_url)
        .env("FLASHGRAB_KEY_PREFIX", &app.prefix)
        .env("FLASHGRAB_ADMIN_TOKEN", ADMIN)
        .env("FLASHGRAB_USER_JWT_SECRET", SECRET);
    cmd
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    wait_until(Duration::from_secs(15), &format!("{base} became healthy"), || async {
        client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
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

/// Polls `/readyz` (at most `secs`) until `want` says yes.
async fn readyz_until(
    client: &reqwest::Client,
    base: &str,
    secs: u64,
    what: &str,
    want: impl Fn(StatusCode, &serde_json::Value) -> bool,
) -> serde_json::Value {
    support::wait::wait_for(Duration::from_secs(secs), &format!("/readyz {what}"), || async {
        let (status, body) = readyz(client, base).await;
        if want(status, &body) { Ok(body) } else { Err(format!("{status} {body}")) }
    })
    .await
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
