//! Every client connection of every shared master killed over and over
//! while a drop sells out: script calls resent by the client run twice and
//! must change nothing the second time.

use super::*;

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
    wait_until(Duration::from_secs(30), "the first connection reset", || async { killed.load(Ordering::Relaxed) > 0 })
        .await;
    assert_stock_left(&app, &c, &burst, "the first connection reset").await;
    burst.pace(FAST);
    burst.wait_sold_out(30).await;
    stop.store(true, Ordering::Relaxed);
    resets.await.unwrap();
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
}
