//! Graceful shutdown: SIGTERM to `flashgrab serve` mid-burst.

use super::*;

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
    // In process: admin calls, stats and reconcile only (no relay, no worker).
    let app = spawn_app().await;
    let campaign = big_campaign(&app).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary(&["serve"], &app, port, &[("FLASHGRAB_IP_RATE", "0")]);
    wait_healthy(&app.client, &base).await;

    let burst = Burst::start(app.client.clone(), base.clone(), campaign.clone(), app.jwt.clone(), 16);
    wait_until(Duration::from_secs(10), "claims were being persisted", || async {
        app.stats(&campaign).await["persisted"].as_u64().unwrap() > 0
    })
    .await;
    let mut lock = {
        use sqlx::Connection;
        sqlx::MySqlConnection::connect(&app.settings.mysql_url).await.unwrap()
    };
    sqlx::query("LOCK TABLES coupons WRITE").execute(&mut lock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(child.id(), "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UNLOCK TABLES").execute(&mut lock).await.unwrap();
    // Bounded: a shutdown that hangs fails the test instead of the suite.
    let status = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(120))).await.unwrap();
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
}
