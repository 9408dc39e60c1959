//! Isolation of failures (DESIGN.md, "Failure model, made precise"): one
//! shard range down stops only the claims and the persistence of its own
//! shards, and an optional consumer of the events exchange never holds
//! back the persistence of claims.
//!
//! `one_frozen_master_stops_only_its_own_shards` freezes (SIGSTOP) a master
//! and its replica of the SHARED cluster: run it alone, under
//! `flock -x /tmp/fg-stack.lock`. A guard thaws them even if it panics.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::Mutex;
use std::time::Instant;

use flashgrab::domain::campaign::home_shard;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::*;

/// How long the shard range stays frozen: well past the cluster node
/// timeout (3 s locally), so the survivors mark it failed.
const OUTAGE: Duration = Duration::from_secs(8);
/// After the nodes are back, every endpoint must serve again within this.
const RECOVERY: Duration = Duration::from_secs(10);

/// Thaws the frozen nodes when dropped, so a failing test never leaves the
/// shared cluster frozen.
struct Thaw(Vec<u32>);
impl Drop for Thaw {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
    }
}

/// `flashgrab serve` as a child, its log (JSON lines) in `log`.
fn spawn_logged(app: &TestApp, port: u16, log: &std::path::Path) -> ChildGuard {
    let mut cmd = flashgrab_command(&["serve"], app, port);
    cmd.env("FLASHGRAB_IP_RATE", "0")
        .env("FLASHGRAB_USER_RATE", "0")
        .env("FLASHGRAB_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    ChildGuard::spawn(&mut cmd, "flashgrab serve")
}

/// Every node of the shared cluster must serve its slots while another
/// range is down. `scripts/stack` writes it into every node's config and
/// `up` sets it on running nodes; a node restarted by an older copy of the
/// script lost it: set it here (live only).
async fn allow_partial_coverage() {
    for port in 7000..7006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let v: Vec<String> =
            redis::cmd("CONFIG").arg("GET").arg("cluster-require-full-coverage").query_async(&mut conn).await.unwrap();
        if v.get(1).map(String::as_str) != Some("no") {
            eprintln!("node {port}: cluster-require-full-coverage was {v:?}; setting it to no (run scripts/stack up)");
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-require-full-coverage")
                .arg("no")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// Rows of a campaign in MySQL, straight from the database (no Redis).
async fn rows(app: &TestApp, campaign: &str) -> u64 {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons WHERE campaign_id = ?")
        .bind(campaign)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    n as u64
}

/// One answer of the burst: when (since the test's clock), whether the
/// user's shard was on the frozen master, the status, how long it took.
type Answer = (Duration, bool, u16, Duration);

/// Claimers on one side of the outage: users whose home shard is (or is
/// not) on the frozen master.
struct Side {
    base: String,
    campaign: String,
    shards: u32,
    frozen: Arc<Vec<u32>>,
    clock: Instant,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Side {
    fn start(&self, app: &TestApp, frozen_side: bool, width: usize) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
        (0..width)
            .map(|w| {
                let (client, jwt) = (app.client.clone(), app.jwt.clone());
                let (base, campaign, shards) = (self.base.clone(), self.campaign.clone(), self.shards);
                let (frozen, clock, stop, answers) =
                    (self.frozen.clone(), self.clock, self.stop.clone(), self.answers.clone());
                tokio::spawn(async move {
                    let mut granted = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let user = format!("{}{w}-{n}", if frozen_side { "f" } else { "h" });
                        if frozen.contains(&home_shard(&user, shards)) != frozen_side {
                            continue;
                        }
                        let token = jwt.sign(&user, chrono::Utc::now().timestamp() + 600);
                        let sent = Instant::now();
                        let r = client
                            .post(format!("{base}/v1/campaigns/{campaign}/claim"))
                            .bearer_auth(token)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        let status = match r {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                if status == 201 {
                                    let body: serde_json::Value = r.json().await.unwrap();
                                    granted.push(body["id"].as_str().unwrap().to_owned());
                                }
                                status
                            }
                            Err(_) => 0,
                        };
                        answers.lock().unwrap().push((sent.duration_since(clock), frozen_side, status, sent.elapsed()));
                        if status != 201 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    granted
                })
            })
            .collect()
    }
}

async fn get_status(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut req = client.get(url).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Log lines per (message, wall-clock second) of a JSON log.
fn lines_per_message_and_second(log: &std::path::Path) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    let file = std::fs::File::open(log).unwrap();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let msg = v["fields"]["message"].as_str().unwrap_or_default().to_owned();
        let second = v["timestamp"].as_str().unwrap_or_default().chars().take(19).collect::<String>();
        *counts.entry((msg, second)).or_insert(0) += 1;
    }
    counts
}

/// A master and its replica frozen (SIGSTOP) for longer than the node
/// timeout while claims run on a campaign spread over every master:
/// - claims whose shard is on a healthy master keep answering 201, and
///   keep being persisted (rows grow in MySQL during the outage);
/// - once the nodes are back, every endpoint serves again within a few
///   seconds: a claim on every shard 201, stats 200, /readyz 200;
/// - nothing was lost or doubled (rows = grants, every 201 has its row);
/// - retries back off: no message is logged more than about once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frozen_master_stops_only_its_own_shards() {
    let _guard = STACK.lock().await;
    allow_partial_coverage().await;
    // In process: admin calls and the database only (its Redis calls would
    // share the outage); the child serves, relays and persists.
    let app = spawn_app().await;
    let prefix = app.prefix.clone();
    let mut body = campaign_body(1_000_000);
    body["shards"] = json!(12);
    let campaign = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let c = app.stock_campaign(&campaign).await;
    let map = app.stock.slot_map().await.unwrap();
    let master_of_shard: Vec<String> =
        c.shard_buckets.iter().map(|b| map.master_of(app.stock.keys().bucket_slot(*b)).unwrap().to_owned()).collect();

    let (master, replica) = master_and_replica(&cluster_nodes().await);
    let frozen_addr = format!("127.0.0.1:{master}");
    let frozen: Vec<u32> = (0..c.shards()).filter(|s| master_of_shard[*s as usize] == frozen_addr).collect();
    assert!(!frozen.is_empty() && frozen.len() < c.shards() as usize, "shards on every master: {master_of_shard:?}");
    let pids = vec![redis_pid(master).await, redis_pid(replica).await];

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("fg-isolation-{prefix}.log"));
    let mut child = spawn_logged(&app, port, &log);
    wait_healthy(&app.client, &base).await;
    readyz_until(&app.client, &base, 30, "became ready", |s, _| s == StatusCode::OK).await;

    let clock = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let shards = c.shards();
    let side = Side {
        base: base.clone(),
        campaign: campaign.clone(),
        shards,
        frozen: Arc::new(frozen.clone()),
        clock,
        stop: stop.clone(),
        answers: answers.clone(),
    };
    let mut tasks = side.start(&app, false, 8);
    tasks.extend(side.start(&app, true, 4));
    wait_until(Duration::from_secs(20), "claims persisted before the outage", || async {
        rows(&app, &campaign).await >= 50
    })
    .await;

    // The outage.
    let thaw = Thaw(pids.clone());
    for pid in &pids {
        signal(*pid, "-STOP");
    }
    let frozen_at = clock.elapsed();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let rows_mid = rows(&app, &campaign).await;
    let stats_during = get_status(&app.client, &format!("{base}/v1/campaigns/{campaign}/stats"), Some(ADMIN)).await;
    tokio::time::sleep(OUTAGE - Duration::from_millis(3500)).await;
    let rows_late = rows(&app, &campaign).await;
    let thawed_at = clock.elapsed();
    drop(thaw);

    // Back: every endpoint serves again within RECOVERY.
    let back = Instant::now();
    let mut pending: Vec<u32> = (0..shards).collect();
    let mut n = 0u64;
    let (mut stats_ok, mut ready_ok) = (false, false);
    while !(pending.is_empty() && stats_ok && ready_ok) && back.elapsed() < RECOVERY {
        let mut still = Vec::new();
        for s in pending {
            let user = loop {
                n += 1;
                let u = format!("back-{n}");
                if home_shard(&u, shards) == s {
                    break u;
                }
            };
            if claim_at(&app, &base, &campaign, &user).await.0 != StatusCode::CREATED {
                still.push(s);
            }
        }
        pending = still;
        stats_ok = stats_ok
            || get_status(&app.client, &format!("{base}/v1/campaigns/{campaign}/stats"), Some(ADMIN)).await == 200;
        ready_ok = ready_ok || get_status(&app.client, &format!("{base}/readyz"), None).await == 200;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = back.elapsed();
    let recovered = pending.is_empty() && stats_ok && ready_ok;
    stop.store(true, Ordering::Relaxed);
    let mut granted = Vec::new();
    for t in tasks {
        granted.extend(t.await.unwrap());
    }

    // During the outage (past the first second: claims already in flight
    // to the frozen node's batch may take their timeout), every claim on a
    // healthy shard was granted.
    let answers = answers.lock().unwrap().clone();
    let window = |a: &&Answer| a.0 > frozen_at + Duration::from_secs(1) && a.0 < thawed_at;
    let healthy: Vec<&Answer> = answers.iter().filter(window).filter(|a| !a.1).collect();
    let refused: HashMap<u16, usize> = healthy.iter().filter(|a| a.2 != 201).fold(HashMap::new(), |mut m, a| {
        *m.entry(a.2).or_insert(0) += 1;
        m
    });
    let on_frozen: HashMap<u16, usize> =
        answers.iter().filter(window).filter(|a| a.1).fold(HashMap::new(), |mut m, a| {
            *m.entry(a.2).or_insert(0) += 1;
            m
        });
    // Once its breaker is open (a few timeouts after the freeze), a claim on
    // a frozen shard is refused at once instead of waiting for the timeout.
    let mut late_frozen: Vec<Duration> = answers
        .iter()
        .filter(|a| a.1 && a.0 > frozen_at + Duration::from_secs(3) && a.0 < thawed_at)
        .map(|a| a.3)
        .collect();
    late_frozen.sort();
    let frozen_p50 = late_frozen.get(late_frozen.len() / 2).copied().unwrap_or_default();
    eprintln!(
        "outage: healthy answers {} (refused {refused:?}), frozen-side answers {on_frozen:?}, rows {rows_mid} -> {rows_late}, \
         stats during {stats_during}, frozen-side p50 {frozen_p50:?} of {}, recovered in {recovered_in:?}",
        healthy.len(),
        late_frozen.len()
    );
    assert!(
        recovered,
        "not serving {RECOVERY:?} after the nodes came back: shards without a 201 {pending:?}, \
         stats ok {stats_ok}, readyz ok {ready_ok}"
    );
    assert!(healthy.len() > 100, "claims on healthy shards went on during the outage ({})", healthy.len());
    assert!(refused.is_empty(), "claims on healthy shards refused during the outage: {refused:?} of {}", healthy.len());
    assert!(
        frozen_p50 < Duration::from_millis(100),
        "claims on the frozen shards are refused at once by their breaker: p50 {frozen_p50:?}"
    );
    assert!(rows_late > rows_mid + 50, "claims kept being persisted during the outage: rows {rows_mid} -> {rows_late}");

    assert_exactly_once(&app, &campaign, &granted).await;
    child.signal("-TERM");
    let _ = child.wait_exit(Duration::from_secs(60));

    // Backoff and log throttling: no message more than ~once a second.
    let counts = lines_per_message_and_second(&log);
    let noisy: Vec<_> = counts.iter().filter(|(_, n)| **n > 2).collect();
    assert!(noisy.is_empty(), "messages logged more than twice in one second: {noisy:?}");
    let _ = std::fs::remove_file(&log);

    // The shared cluster is whole again.
    let script = format!("{}/scripts/stack", env!("CARGO_MANIFEST_DIR"));
    wait_until(Duration::from_secs(30), "scripts/stack status passing after the thaw", || async {
        Command::new(&script).arg("status").stdout(Stdio::null()).status().unwrap().success()
    })
    .await;
    // The frozen replica may have been promoted when both woke up (the
    // survivors had marked its master failed): give the shard its master
    // back (coordinated, loses nothing).
    if !master_and_replica_roles(master).await {
        stack(&["failover", &master.to_string()]);
    }
}

// ---------------------------------------------------------------------------
// Optional consumers of the events exchange.
// ---------------------------------------------------------------------------

fn amqp_url() -> String {
    settings("x", "x").amqp_url
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A consumer's queue on `<prefix>.events` that refuses every publish
/// (`x-overflow = reject-publish`, full at one message, pre-filled), and an
/// observer queue on `<prefix>.claims` that keeps a copy of every claims
/// message the relay sends.
async fn bind_full_events_queue_and_observer(prefix: &str) -> (lapin::Connection, lapin::Channel, String, String) {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let t = flashgrab::queue::topology::Topology::new(prefix);
    t.declare(&ch).await.unwrap();
    let events_q = format!("{prefix}.events.full");
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-max-length"), AMQPValue::LongInt(1));
    args.insert(ShortString::from("x-overflow"), long("reject-publish"));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(events_q.as_str().into(), opts, args).await.unwrap();
    ch.queue_bind(
        events_q.as_str().into(),
        t.events_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Fill it: from now on every publish to it is nacked.
    ch.basic_publish(
        "".into(),
        events_q.as_str().into(),
        BasicPublishOptions::default(),
        b"filler",
        Default::default(),
    )
    .await
    .unwrap();
    let observer = format!("{prefix}.claims.observer");
    ch.queue_declare(observer.as_str().into(), opts, FieldTable::default()).await.unwrap();
    ch.queue_bind(
        observer.as_str().into(),
        t.claims_exchange.as_str().into(),
        flashgrab::queue::topology::CLAIM_ROUTING_KEY.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (conn, ch, events_q, observer)
}

/// How many times each coupon id was sent in a claims message (drains the
/// observer queue).
async fn copies_sent(ch: &lapin::Channel, observer: &str) -> HashMap<String, usize> {
    let mut copies = HashMap::new();
    while let Some(m) = ch.basic_get(observer.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        let v: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
        for r in v["claims"].as_array().unwrap() {
            *copies.entry(r["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    copies
}

/// A consumer's queue bound to `<prefix>.events` nacks every publish (it is
/// full and rejects): claims are still persisted exactly once, the outbox
/// empties, and the claims exchange does not get the same claims again and
/// again. Redeem events (their own outbox, the redemptions table) wait for
/// the consumer and are sent once it takes messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_events_queue_does_not_hold_back_claims() {
    let _guard = STACK.lock().await;
    let (prefix, db_name) = fresh_names();
    let (conn, ch, events_q, observer) = bind_full_events_queue_and_observer(&prefix).await;
    let app = TestApp::builder().named(&prefix, &db_name).pipeline().start().await;
    let campaign = big_campaign(&app).await;

    let burst = Burst::start(app.client.clone(), app.url(""), campaign.clone(), app.jwt.clone(), 8);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let granted = burst.finish().await;
    assert!(granted.len() > 50, "the burst granted claims ({})", granted.len());
    assert_exactly_once(&app, &campaign, &granted).await;

    support::wait::wait_for(Duration::from_secs(20), "the outbox emptied", || async {
        match app.outbox_len().await {
            0 => Ok(()),
            n => Err(format!("{n} entries left")),
        }
    })
    .await;
    // Settled: nothing is sent again after the outbox emptied.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let copies = copies_sent(&ch, &observer).await;
    let claimed = app.stats(&campaign).await["claimed"].as_u64().unwrap();
    assert_eq!(copies.len() as u64, claimed, "every claim was sent");
    let max = copies.values().copied().max().unwrap_or(0);
    assert!(max <= 2, "a claim was sent {max} times to the claims exchange");
    let m = support::metrics::scrape(&app, 0).await;
    assert!(support::metrics::metric(&m, "flashgrab_events_failed_total") > 0.0, "the refused events are counted: {m}");

    // A redeem: its event waits in the redemptions table while the queue
    // refuses it (retried with backoff, not in a tight loop), and is sent
    // once the queue takes messages again.
    let row = app.state.db.campaign_coupons(&campaign).await.unwrap().into_iter().next().unwrap();
    let token = app.token(&row.user_id);
    let order = json!({ "order_id": "o-1", "order_total_cents": 10_000 });
    let r = app.client.post(app.url(&format!("/v1/coupons/{}/redeem", row.id))).bearer_auth(token).json(&order).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    let unpublished = || async { app.state.db.unpublished_redemptions(10).await.unwrap().len() };
    let errors_before = app.state.metrics.errors.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(unpublished().await, 1, "the consumer's queue refuses the event");
    let retries = app.state.metrics.errors.load(Ordering::Relaxed) - errors_before;
    assert!((1..=10).contains(&retries), "the event publisher retries with backoff ({retries} errors in 3 s)");
    ch.queue_purge(events_q.as_str().into(), Default::default()).await.unwrap();
    wait_until(Duration::from_secs(15), "the redeem event sent after the queue drained", || async {
        unpublished().await == 0
    })
    .await;

    for q in [&events_q, &observer] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}
