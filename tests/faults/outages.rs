//! A backend down while a contested drop sells out: RabbitMQ stopped (the
//! outbox grows, the relay reconnects), MariaDB stopped (messages wait in
//! the queue, the worker retries). MariaDB is the shared 3306 server: the
//! guards start it again even if a test fails half-way.

use super::*;

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
}
