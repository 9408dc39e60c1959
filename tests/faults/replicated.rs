//! `replicated` mode when a replica acknowledges nothing: nothing the
//! replica lacks may be answered 201, closed with a 200, or leave Redis
//! through the relay. The failover test lets a STALE replica win the
//! election (frozen with SIGSTOP, its link cut with `CLIENT KILL TYPE
//! replica`, then the master killed -9): afterwards MySQL must hold no row
//! Redis forgot, or the forgotten units are sold again (more rows than
//! `total_stock`) and their users claim again (more than `per_user_limit`).
//!
//! Both tests freeze and kill shared nodes: run them under
//! `flock -x /tmp/fg-stack.lock`. [`Restore`] gives the cluster back its
//! layout even when a test panics.

use std::collections::HashMap;

use super::*;

/// A direct connection to one Redis node.
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// One field of `INFO <section>` on the node at `port`.
async fn info_field(port: u16, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO").arg(section).query_async(&mut node(port).await).await.unwrap();
    info.lines().find_map(|l| l.trim().strip_prefix(&format!("{field}:")).map(str::to_owned)).unwrap_or_default()
}

/// [`wait_until`] for at most `secs` seconds.
async fn until<F: Future<Output = bool>>(secs: u64, what: &str, cond: impl FnMut() -> F) {
    wait_until(Duration::from_secs(secs), what, cond).await
}

/// The master owning the slot of the campaign's (single) shard, and the
/// port of its replica.
async fn shard_master_and_replica(app: &TestApp, campaign: &str) -> (u16, u16, u16) {
    let c = app.stock_campaign(campaign).await;
    assert_eq!(c.shards(), 1, "the tests place the whole stock on one shard");
    let bucket = c.shard_buckets[0];
    let slot = app.stock.keys().bucket_slot(bucket);
    let map = app.stock.slot_map().await.unwrap();
    let addr = map.master_of(slot).expect("the shard's slot has a master").to_owned();
    let master: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let nodes = cluster_nodes().await;
    let rows: Vec<Vec<&str>> =
        nodes.lines().map(|l| l.split_whitespace().collect()).filter(|f: &Vec<&str>| f.len() >= 8).collect();
    let port = |a: &str| a.split('@').next().unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let id = rows.iter().find(|f| port(f[1]) == master).map(|f| f[0]).expect("the master is in CLUSTER NODES");
    let replica = rows
        .iter()
        .find(|f| f[3] == id && f[2].contains("slave") && !f[2].contains("fail"))
        .map(|f| port(f[1]))
        .unwrap_or_else(|| panic!("master {master} has no healthy replica:\n{nodes}"));
    (master, replica, bucket)
}

/// Freezes the replica and cuts its link: from now on the master's writes
/// reach no replica and every `WAIT 1` times out.
async fn isolate(master: u16, replica_pid: u32) {
    signal(replica_pid, "-STOP");
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query_async(&mut node(master).await).await.unwrap();
    assert!(killed >= 1, "CLIENT KILL TYPE replica on {master} killed no link");
    until(10, "saw the master without replicas", || async {
        info_field(master, "replication", "connected_slaves").await == "0"
    })
    .await;
}

/// Puts the shared cluster back as it was, also when the test panics:
/// thaws the replica, starts the master again if it was killed (it comes
/// back as a replica) and, if it is a replica now, fails over to it.
struct Restore {
    master: u16,
    replica_pid: u32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.replica_pid.to_string()]).status();
        let script = format!("{}/scripts/stack", env!("CARGO_MANIFEST_DIR"));
        let run = |args: &[&str]| Command::new(&script).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = run(&["start-node", &self.master.to_string()]);
        // "not a replica" when the master kept its role: nothing to do then.
        let _ = run(&["failover", &self.master.to_string()]);
        // The thawed replica resyncs on its own; wait until all is healthy.
        for _ in 0..300 {
            if run(&["status"]).map(|s| s.success()).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The consumer group of the relay has been handed every entry of the
/// bucket's stream on `port` (the relay read all of it: shipped or held).
async fn relay_read_everything(port: u16, prefix: &str, key: &str) -> bool {
    let mut c = node(port).await;
    let stream: redis::Value = redis::cmd("XINFO").arg("STREAM").arg(key).query_async(&mut c).await.unwrap();
    let groups: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg(key).query_async(&mut c).await.unwrap();
    let field = |v: &redis::Value, name: &str| -> Option<String> {
        let redis::Value::Array(kv) = v else { return None };
        kv.chunks(2).find_map(|p| match p {
            [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == name.as_bytes() => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        })
    };
    let last = field(&stream, "last-generated-id");
    let redis::Value::Array(groups) = groups else { return false };
    let group = format!("{prefix}-relay");
    groups.iter().any(|g| field(g, "name").as_deref() == Some(&group) && field(g, "last-delivered-id") == last)
}

/// The replica of `master` is connected and streaming.
async fn replica_online(master: u16) -> bool {
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut node(master).await).await.unwrap();
    info.lines().any(|l| l.starts_with("slave0:") && l.contains("state=online"))
}

/// Retries a request that answers 503 until the replica is back (bounded).
async fn until_not_503<F: Future<Output = (StatusCode, serde_json::Value)>>(
    what: &str,
    mut call: impl FnMut() -> F,
) -> (StatusCode, serde_json::Value) {
    for _ in 0..100 {
        let got = call().await;
        if got.0 != StatusCode::SERVICE_UNAVAILABLE {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: still 503 after 10 s with the replica back");
}

/// `replicated` mode when the replica acknowledges nothing: a claim is
/// answered 503 "maybe granted" (with `Retry-After`), a close 503; the
/// relay holds the grants back. Once the replica is back, the same claim
/// (same `Idempotency-Key`) is replayed 200, the close answers 200, and the
/// held grants are persisted exactly once. (Fails if the WAIT of
/// `claim_batch` or of the close regresses to `fast`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_mode_answers_503_while_no_replica_acknowledges() {
    let _guard = STACK.lock().await;
    let app = TestApp::builder()
        .pipeline()
        .configure(|s| s.durability = flashgrab::stock::Durability::Replicated { wait: Duration::from_millis(50) })
        .start()
        .await;
    let prefix = app.prefix.clone();
    let mut body = campaign_body(10);
    body["shards"] = json!(1);
    body["per_user_limit"] = json!(2);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let first = app.claim_on(0, &id, "u0", Some("k0")).await;
    assert_eq!(first.0, StatusCode::CREATED, "a healthy replica acknowledges: {}", first.1);
    app.wait_persisted(&id, 1, 30).await;

    let (master, replica, bucket) = shard_master_and_replica(&app, &id).await;
    let restore = Restore { master, replica_pid: redis_pid(replica).await };
    isolate(master, restore.replica_pid).await;

    let r = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/claim")))
        .bearer_auth(app.token("u1"))
        .header("Idempotency-Key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "a grant no replica acknowledged is not a 201");
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"], "unavailable", "{b}");
    let again = app.claim_on(0, &id, "u0", Some("k0-second")).await;
    assert_eq!(again.0, StatusCode::SERVICE_UNAVAILABLE, "{}", again.1);

    // The relay has read the two grants and holds them: no row for them.
    let key = app.stock.keys().outbox(bucket);
    until(10, "read the grants", || relay_read_everything(master, &prefix, &key)).await;
    until(10, "counted entries held back", || async {
        flashgrab::metrics::PipelineMetrics::get(&app.state.metrics.unreplicated) > 0
    })
    .await;
    assert_eq!(app.state.db.campaign_coupons(&id).await.unwrap().len(), 1, "only the acknowledged grant left Redis");

    // The replica comes back and catches up: the 503'd grant was kept.
    signal(restore.replica_pid, "-CONT");
    until(30, "saw the replica back", || replica_online(master)).await;
    let replay = until_not_503("the replay", || app.claim_on(0, &id, "u1", Some("k1"))).await;
    assert_eq!(replay.0, StatusCode::OK, "the 503'd grant survived and is replayed: {}", replay.1);

    // A close no replica acknowledges is a 503 too; retried, a 200.
    isolate(master, restore.replica_pid).await;
    let close = app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await;
    assert_eq!(close.status(), StatusCode::SERVICE_UNAVAILABLE, "a close no replica acknowledged is not a 200");
    signal(restore.replica_pid, "-CONT");
    until(30, "saw the replica back", || replica_online(master)).await;
    let close = until_not_503("the close", || async {
        let r = app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await;
        parts(r).await
    })
    .await;
    assert_eq!(close.0, StatusCode::OK, "{}", close.1);
    assert_error(&app.claim(&id, "u2").await, 410, "ended");

    app.wait_persisted(&id, 3, 30).await;
    let report = app.reconcile(&id, false).await;
    assert!(report.matched(), "{report}");
    drop(restore);
    stack(&["status"]);
}

/// Phase C of the failover test: every user claims until it holds
/// `limit` coupons, new users after them, until the campaign is sold out.
/// Returns the coupon ids answered 201, with their user.
async fn claim_until_sold_out(app: &TestApp, base: &str, id: &str, users: &[String]) -> Vec<(String, String)> {
    let mut granted = Vec::new();
    let more = (0..).map(|i| format!("late-{i}"));
    for user in users.iter().cloned().chain(more) {
        for _ in 0..2 {
            let got = claim_until_answered_at(app, base, id, &user).await;
            match got.0 {
                StatusCode::CREATED => granted.push((got.1["id"].as_str().unwrap().to_owned(), user.clone())),
                StatusCode::CONFLICT => break,
                StatusCode::GONE => return granted,
                other => panic!("{user}: {other} {}", got.1),
            }
        }
    }
    unreachable!("the users are endless and the stock is not")
}

/// A stale replica is promoted. Its master granted claims it never got
/// (answered 503, the relay held them back); the master is killed -9, the
/// replica wins the election with none of them, the old master comes back
/// and resyncs (dropping them). The same users and new ones then claim
/// until the campaign is sold out: MySQL holds at most `total_stock` rows,
/// at most `per_user_limit` per user, and every 201 has its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_failover_to_a_stale_replica_sells_nothing_twice() {
    const STOCK: usize = 40;
    let _guard = STACK.lock().await;
    // In process: admin calls, stats, reconcile; serving, relaying and
    // persisting is the child.
    let app = spawn_app().await;
    let prefix = app.prefix.clone();
    let mut body = campaign_body(STOCK as u64);
    body["shards"] = json!(1);
    body["per_user_limit"] = json!(2);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env = [
        ("FLASHGRAB_DURABILITY", "replicated"),
        ("FLASHGRAB_REPLICA_WAIT_MS", "50"),
        ("FLASHGRAB_IP_RATE", "0"),
        ("FLASHGRAB_USER_RATE", "0"),
    ];
    let mut child = spawn_binary(&["serve"], &app, port, &env);
    wait_healthy(&app.client, &base).await;
    readyz_until(&app.client, &base, 30, "became ready", |s, _| s == StatusCode::OK).await;

    // A: acknowledged grants, one per user.
    let regulars: Vec<String> = (0..5).map(|i| format!("u{i}")).collect();
    let mut granted: Vec<(String, String)> = Vec::new();
    for u in &regulars {
        let got = claim_at(&app, &base, &id, u).await;
        assert_eq!(got.0, StatusCode::CREATED, "{u}: {}", got.1);
        granted.push((got.1["id"].as_str().unwrap().to_owned(), u.clone()));
    }

    // B: the replica is frozen and cut off; the master keeps granting.
    let (master, replica, bucket) = shard_master_and_replica(&app, &id).await;
    let restore = Restore { master, replica_pid: redis_pid(replica).await };
    isolate(master, restore.replica_pid).await;
    let newcomers: Vec<String> = (0..15).map(|i| format!("n{i}")).collect();
    let claims = regulars.iter().chain(&newcomers).map(|u| claim_at(&app, &base, &id, u));
    for (u, got) in regulars.iter().chain(&newcomers).zip(futures_util::future::join_all(claims).await) {
        assert_eq!(got.0, StatusCode::SERVICE_UNAVAILABLE, "{u}: no replica has it, so no 201: {}", got.1);
    }
    let coupons = app.stock.keys().shard(bucket, &id, 0).coupons;
    let on_master: u64 = redis::cmd("HLEN").arg(&coupons).query_async(&mut node(master).await).await.unwrap();
    assert_eq!(on_master, 25, "the master granted the 503'd claims (maybe granted)");
    // The relay has been handed every one of them; it must ship none.
    let key = app.stock.keys().outbox(bucket);
    until(10, "read the unacknowledged grants", || relay_read_everything(master, &prefix, &key)).await;

    // C: the master dies; the stale replica is the only candidate.
    stack(&["kill-node", &master.to_string()]);
    signal(restore.replica_pid, "-CONT");
    until(60, "promoted the stale replica", || async { info_field(replica, "replication", "role").await == "master" })
        .await;
    let on_replica: u64 = redis::cmd("HLEN").arg(&coupons).query_async(&mut node(replica).await).await.unwrap();
    assert_eq!(on_replica, 5, "the promoted replica is stale: it has only the acknowledged grants");
    // The old master comes back as its replica and drops what it alone had.
    stack(&["start-node", &master.to_string()]);

    // D: everyone again, until sold out.
    let users: Vec<String> = regulars.iter().chain(&newcomers).cloned().collect();
    granted.extend(claim_until_sold_out(&app, &base, &id, &users).await);

    let c = app.stock_campaign(&id).await;
    let in_redis: HashSet<String> = app.stock.campaign_records(&c).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(in_redis.len(), STOCK, "sold out on the promoted replica");
    for (coupon, user) in &granted {
        assert!(in_redis.contains(coupon), "{user}'s 201 {coupon} is not in Redis");
    }
    // At rest: everything Redis holds is in MySQL (and, with the relay
    // gate, nothing else).
    let rows = support::wait::wait_for(Duration::from_secs(60), "Redis's grants all in MySQL", || async {
        let rows = app.state.db.campaign_coupons(&id).await.unwrap();
        let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        if in_redis.iter().all(|c| ids.contains(c.as_str())) { Ok(rows) } else { Err(format!("{} rows", rows.len())) }
    })
    .await;
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *per_user.entry(r.user_id.as_str()).or_default() += 1;
    }
    let over: Vec<_> = per_user.iter().filter(|(_, n)| **n > 2).collect();
    assert!(rows.len() <= STOCK, "{} rows for {STOCK} units: units Redis forgot were sold again", rows.len());
    assert!(over.is_empty(), "users over per_user_limit 2 in MySQL: {over:?}");
    let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "duplicate rows");
    for (coupon, user) in &granted {
        assert!(ids.contains(coupon.as_str()), "{user}'s 201 {coupon} has no row");
    }
    let report = app.reconcile(&id, false).await;
    assert!(report.matched(), "{report}");

    child.kill9();
    drop(restore);
    stack(&["status"]);
}
