//! A Redis Cluster of its own for one test: redis-server processes on free
//! ports in a temp dir, killed (after a SIGCONT, in case the test froze
//! them) and removed when dropped, also on panic. Dropping never panics
//! (it runs while a failed test unwinds): what cannot be undone is logged.
//!
//! Why: some tests must count commands (INFO commandstats), freeze or
//! stall nodes, or kill every client connection; done on the shared
//! cluster (scripts/stack, 7000-7005) that would disturb every other test
//! and measure their traffic too. Used by the front and faults crates.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::process::ChildGuard;

pub struct PrivateCluster {
    pub ports: Vec<u16>,
    children: Vec<ChildGuard>,
    dir: std::path::PathBuf,
}

/// `redis-cli -p PORT ARGS...`, its standard output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port and its cluster bus port (+10000) both free.
fn port_pair_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
}

impl PrivateCluster {
    /// Three masters, no replicas, node timeout 2 s.
    pub async fn start() -> Self {
        Self::start_with(3, 0, 2000).await
    }

    /// `masters` masters with `replicas` replicas each; returns once every
    /// node reports `cluster_state:ok` and every replica's link is up.
    pub async fn start_with(masters: usize, replicas: usize, node_timeout_ms: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("fg-private-cluster-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        // Tests of one binary run at once: each takes its candidates from
        // one counter so two clusters never race for the same port.
        static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
        let _ = NEXT_PORT.compare_exchange(
            0,
            20_000 + (std::process::id() % 20_000) as u16,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let mut ports = Vec::new();
        while ports.len() < masters * (1 + replicas) {
            let candidate = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
            assert!(candidate < 55_000, "no free port pair left");
            if port_pair_free(candidate) {
                ports.push(candidate);
            }
        }
        let timeout = node_timeout_ms.to_string();
        let children = ports
            .iter()
            .map(|p| {
                ChildGuard::spawn(
                    Command::new("redis-server")
                        .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
                        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", &timeout])
                        .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
                        .args(["--save", "", "--appendonly", "no"])
                        .arg("--dir")
                        .arg(&dir)
                        .stdout(Stdio::null()),
                    "redis-server (scripts/stack up installs it)",
                )
            })
            .collect();
        let me = Self { ports, children, dir };
        for p in &me.ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while redis_cli(*p, &["ping"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "redis {p} does not answer");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let addrs: Vec<String> = me.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !me.ports.iter().all(|p| {
            redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok")
                && (!redis_cli(*p, &["role"]).starts_with("slave")
                    || redis_cli(*p, &["info", "replication"]).contains("master_link_status:up"))
        }) {
            assert!(Instant::now() < deadline, "private cluster never got ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        me
    }

    /// Seed URLs for the service's settings.
    pub fn nodes(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// Indexes (into `ports`) of the nodes that are replicas now.
    pub fn replicas(&self) -> Vec<usize> {
        (0..self.ports.len()).filter(|i| redis_cli(self.ports[*i], &["role"]).starts_with("slave")).collect()
    }

    /// Script calls (EVALSHA and EVAL) over the whole cluster.
    pub fn script_calls(&self) -> u64 {
        self.ports
            .iter()
            .map(|p| {
                redis_cli(*p, &["info", "commandstats"])
                    .lines()
                    .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                    .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }

    /// `kill SIG` to the nodes `which` (indexes into `ports`).
    pub fn signal(&self, which: &[usize], sig: &str) {
        for i in which {
            self.children[*i].signal(sig);
        }
    }

    /// `kill SIG` to every node.
    pub fn signal_all(&self, sig: &str) {
        self.signal(&(0..self.children.len()).collect::<Vec<_>>(), sig);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for c in &self.children {
            if let Err(e) = Command::new("kill").args(["-CONT", &c.id().to_string()]).status() {
                eprintln!("private cluster: kill -CONT {}: {e}", c.id());
            }
        }
        // Each guard kills and reaps its node.
        self.children.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("private cluster: removing {}: {e}", self.dir.display());
        }
    }
}
