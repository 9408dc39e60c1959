//! A real failover that loses writes in `fast` mode, then `reconcile
//! --repair` (DESIGN.md: "`fast` mode: the same failover may lose
//! acknowledged grants; reconcile reports it and --repair restores Redis
//! from MySQL so nothing is granted twice afterwards").
//!
//! Making the failover lose writes on purpose: the master's replica is
//! frozen (SIGSTOP) and a large junk value is written to the master first,
//! more than the kernel buffers between the two hold; the grants that
//! follow wait in the master's output buffer for the replica. The relay
//! ships them to MySQL meanwhile. Then the master is killed -9 and the
//! replica thawed: it is promoted without those grants.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use super::*;

/// Writes a `mb` MB value on the node at `port` itself (a key it owns, in
/// 1 MB appends) and returns the key.
async fn junk_on(port: u16, mb: usize) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for i in 0.. {
        let key = format!("fg-junk-{i}");
        let r: redis::RedisResult<i64> = redis::cmd("APPEND").arg(&key).arg(&chunk).query_async(&mut conn).await;
        match r {
            Ok(_) => {
                for _ in 1..mb {
                    let _: i64 = redis::cmd("APPEND").arg(&key).arg(&chunk).query_async(&mut conn).await.unwrap();
                }
                return key;
            }
            Err(e) if e.code() == Some("MOVED") => continue,
            Err(e) => panic!("APPEND junk on {port}: {e}"),
        }
    }
    unreachable!()
}

/// Deletes the junk key when the test ends, even by a panic.
struct Junk(String);
impl Drop for Junk {
    fn drop(&mut self) {
        for port in ["7000", "7001", "7002", "7003", "7004", "7005"] {
            let out = std::process::Command::new("redis-cli").args(["-c", "-p", port, "DEL", &self.0]).output();
            if out.is_ok_and(|o| o.status.success() && !o.stdout.starts_with(b"Could not")) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failover_that_lost_grants_is_repaired_and_nothing_is_granted_twice() {
    let _guard = STACK.lock().await;
    let app = spawn_pipeline_app().await;
    let base = app.url("");
    const STOCK: u64 = 600;
    const USERS: usize = 60;
    let mut body = campaign_body(STOCK);
    body["shards"] = json!(6);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();

    let (master, replica) = master_and_replica(&cluster_nodes().await);
    let replica_pid = redis_pid(replica).await;
    let restore = FailoverGuard { master, replica_pid };

    signal(replica_pid, "-STOP");
    let _junk = Junk(junk_on(master, 48).await);
    let mut granted: Vec<(String, String)> = Vec::new();
    for u in 0..USERS {
        let user = format!("f{u}");
        // A 503 ("maybe granted") is retried: the retry is answered 201, or
        // 409 with the coupon the first try was granted.
        let got = claim_until_answered(&app, &id, &user).await;
        let coupon = match got.0 {
            StatusCode::CREATED => got.1["id"].as_str(),
            StatusCode::CONFLICT => got.1["coupon_id"].as_str(),
            other => panic!("{user}: {other} {}", got.1),
        };
        granted.push((user, coupon.unwrap().to_owned()));
    }
    // The relay shipped them, the worker wrote them: MySQL has every grant.
    app.wait_persisted(&id, USERS as u64, 30).await;
    stack(&["kill-node", &master.to_string()]);
    signal(replica_pid, "-CONT");
    readyz_until(&app.client, &base, 60, "became ready after the failover", |s, _| s == StatusCode::OK).await;
    assert!(master_and_replica_roles(replica).await, "the replica {replica} was not promoted");

    // Redis forgot the grants of the dead master's shards; MySQL has them.
    let report = app.reconcile(&id, false).await;
    assert!(!report.forgotten.is_empty(), "the failover lost no grant (the test did not work): {report}");
    assert!(report.extra.is_empty() && report.missing.is_empty(), "{report}");
    assert!(!report.matched(), "{report}");
    let lost = report.forgotten.len();
    eprintln!("{lost} grants lost by the failover");

    let repaired = app.reconcile(&id, true).await;
    assert_eq!(repaired.restored as usize, lost, "{repaired}");
    assert!(repaired.matched(), "{repaired}");

    // The second wave, by the same users: every one already holds a coupon.
    for (user, coupon) in &granted {
        let got = claim_until_answered(&app, &id, user).await;
        assert_eq!(got.0, StatusCode::CONFLICT, "{user} claimed again after the repair: {}", got.1);
        assert_eq!(got.1["coupon_id"], coupon.as_str(), "{}", got.1);
    }
    // Newcomers still get the rest of the stock.
    for u in 0..10 {
        let got = claim_until_answered(&app, &id, &format!("new{u}")).await;
        assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    }
    let st = app.stats(&id).await;
    assert_eq!(st["claimed"].as_u64(), Some(USERS as u64 + 10), "{st}");
    assert_eq!(st["remaining"].as_u64().unwrap() + st["claimed"].as_u64().unwrap(), STOCK, "{st}");
    app.wait_persisted(&id, USERS as u64 + 10, 30).await;
    let rows: HashSet<String> = app.state.db.campaign_coupons(&id).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(rows.len(), USERS + 10);
    let last = app.reconcile(&id, false).await;
    assert!(last.matched(), "{last}");

    // Give the stack back its shape.
    drop(restore);
    stack(&["failover", &master.to_string()]);
    stack(&["status"]);
}
