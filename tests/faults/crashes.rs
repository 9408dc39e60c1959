//! kill -9 of a process of the pipeline mid-burst: `serve` (requests cut
//! off, transfers journaled, grants not relayed) and the persist worker
//! (mid-batch). The restarted process finishes the work; nothing is lost.

use super::*;

/// kill -9 of `serve` in the middle of the sell-out of a contested drop
/// (half the units granted, the rest being claimed and borrowed between
/// shards): requests in flight are cut off, transfers may be left
/// journaled, the outbox holds unrelayed grants. The restarted instance
/// sells the rest; at rest nothing is created, lost or granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_burst_loses_no_claim() {
    let _guard = STACK.lock().await;
    // An in-process instance without the pipeline: used for admin calls,
    // stats and reconcile; the serving, relaying, persisting one is a child.
    let app = spawn_app().await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary(&["serve"], &app, port, &CHILD_ENV);
    wait_healthy(&app.client, &base).await;

    let burst = Pressure::start(&app, &base, &campaign, DROP, Duration::from_millis(100));
    wait_claimed(&app, &c, DROP.stock / 2, 30).await;
    child.kill9();
    assert_stock_left(&app, &c, &burst, "the kill").await;
    child = spawn_binary(&["serve"], &app, port, &CHILD_ENV);
    wait_healthy(&app.client, &base).await;
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    drop(child);
}

/// kill -9 of the persist worker while rows are flowing; the drop sells
/// out while no worker runs, then a new one persists everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_persist_worker_mid_batch_loses_no_claim() {
    let _guard = STACK.lock().await;
    // Serving and relaying in process; persisting in a child we kill.
    let app = TestApp::builder().relay(true).start().await;
    let campaign = drop_campaign(&app, DROP).await;
    let c = app.stock_campaign(&campaign).await;
    let mut worker = spawn_binary(&["persist"], &app, 0, &CHILD_ENV);

    let burst = Pressure::start(&app, &app.url(""), &campaign, DROP, SLOW);
    // Kill it while it is writing: once rows are flowing.
    wait_until(Duration::from_secs(30), "the worker persisted rows", || async {
        app.stats(&campaign).await["persisted"].as_u64().unwrap() >= 3
    })
    .await;
    worker.kill9();
    assert_stock_left(&app, &c, &burst, "the kill").await;
    burst.pace(FAST);
    burst.wait_sold_out(20).await;
    worker = spawn_binary(&["persist"], &app, 0, &CHILD_ENV);
    let history = burst.settle(30).await;

    assert_invariants_at_rest(&app, &campaign, &history).await;
    drop(worker);
}
