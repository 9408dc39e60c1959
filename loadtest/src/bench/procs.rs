//! The machine around a measurement, read from /proc: whether a compile
//! runs (a compile next to a measurement on 2 cores disturbs it), the CPU
//! time of the processes that share the claim path, the instances this
//! driver starts, and the machine facts a result names.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use super::result::Machine;

/// `(pid, comm, state, ppid)` of a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(String, char, u32, [u64; 4])> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    // Fields 14-17 of proc(5): utime stime cutime cstime (rest[0] is field 3).
    let t = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((comm, state, ppid, [t(11), t(12), t(13), t(14)]))
}

fn stat_of(pid: u32) -> Option<(String, char, u32, [u64; 4])> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Our own ancestors (a `cargo run` of this driver is not a compile).
fn ancestors() -> Vec<u32> {
    let mut out = Vec::new();
    let mut pid = std::process::id();
    while let Some((_, _, ppid, _)) = stat_of(pid) {
        if ppid <= 1 || out.contains(&ppid) {
            break;
        }
        out.push(ppid);
        pid = ppid;
    }
    out
}

/// A rustc or cargo running, sleeping or in disk wait (state T, stopped
/// with SIGSTOP, does not count: `pkill -STOP -x rustc` holds other builds
/// for the length of a measurement).
pub fn compiling() -> bool {
    let mine = ancestors();
    pids().filter(|p| !mine.contains(p)).any(|p| {
        stat_of(p)
            .is_some_and(|(comm, state, _, _)| matches!(comm.as_str(), "rustc" | "cargo") && "DRS".contains(state))
    })
}

/// Waits until no compile runs, polling every 10 s, up to `max_s`.
pub fn wait_quiet(max_s: u64, log: impl Fn(&str)) {
    let mut waited = 0;
    while compiling() {
        if waited >= max_s {
            log(&format!("warning: rustc/cargo still running after {max_s}s: measuring anyway"));
            return;
        }
        if waited % 60 == 0 {
            log("  waiting for other compiles to finish (rustc/cargo running)...");
        }
        std::thread::sleep(Duration::from_secs(10));
        waited += 10;
    }
}

/// Watches for a compile (1 s polling) around the measured part of a run.
pub struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let (s, n) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if compiling() {
                    n.store(true, Ordering::Relaxed);
                }
                // Short sleeps, so stop() returns at once.
                for _ in 0..10 {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Self { stop, seen, thread: Some(thread) }
    }

    /// True when a compile ran during the watch.
    pub fn stop(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.load(Ordering::Relaxed)
    }
}

/// Summed utime+stime clock ticks of `pids` (gone ones count 0).
pub fn ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| stat_of(p)).map(|(_, _, _, t)| t[0] + t[1]).sum()
}

/// CPU ticks of our own waited-for children (cutime + cstime): wrk's CPU is
/// the difference around its run.
pub fn children_ticks() -> u64 {
    stat_of(std::process::id()).map_or(0, |(_, _, _, t)| t[2] + t[3])
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Processes whose command name is `comm`.
pub fn pids_named(comm: &str) -> Vec<u32> {
    pids().filter(|&p| stat_of(p).is_some_and(|(c, _, _, _)| c == comm)).collect()
}

/// The redis-server listening on `port` (by its command line `...:port`).
pub fn redis_server_pid(port: u16) -> Option<u32> {
    let suffix = format!(":{port}");
    pids().find(|p| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else { return false };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let mut args = cmdline.split(['\0', ' ']).filter(|a| !a.is_empty());
        args.next().is_some_and(|a| a.ends_with("redis-server")) && args.any(|a| a.ends_with(&suffix))
    })
}

/// `VmHWM` / `VmRSS` of a process, kB.
pub fn vm_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// A process this driver started (an instance, the floor): stopped with
/// SIGTERM, then SIGKILL after 10 s, when dropped.
pub struct Started {
    pub name: String,
    child: Option<Child>,
}

impl Started {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Still running (not exited).
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            for _ in 0..50 {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

/// `v=7.0.15` in `Redis server v=7.0.15 sha=...`; `10.11.19-MariaDB` in
/// mysql's banner; `4.1.0` in `wrk 4.1.0 [epoll] ...`.
pub fn version_in(banner: &str, key: &str) -> String {
    let words: Vec<&str> = banner.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    if let Some(v) = words.iter().find_map(|w| w.strip_prefix(key).filter(|v| !v.is_empty())) {
        return v.to_owned();
    }
    words
        .windows(2)
        .find(|w| w[0] == key)
        .map(|w| w[1].to_owned())
        .or_else(|| words.iter().find(|w| w.starts_with(|c: char| c.is_ascii_digit())).map(|w| (*w).to_owned()))
        .unwrap_or_default()
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned()),
        memory_gib: (mem_kb / 1_048_576.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        redis: version_in(&first_line("redis-server", &["--version"]), "v="),
        mariadb: version_in(&first_line("mysql", &["--version"]), "Distrib"),
        wrk: version_in(&first_line("wrk", &["-v"]), "wrk"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_and_parens_in_the_name() {
        let line = "4242 (tokio (rt) x) S 17 4242 17 0 -1 4194560 1 0 0 0 250 31 7 3 20 0 4 0 1 2 3";
        let (comm, state, ppid, t) = parse_stat(line).unwrap();
        assert_eq!(comm, "tokio (rt) x");
        assert_eq!(state, 'S');
        assert_eq!(ppid, 17);
        assert_eq!(t, [250, 31, 7, 3]);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn versions_from_banners() {
        assert_eq!(version_in("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0", "v="), "7.0.15");
        assert_eq!(
            version_in("mysql  Ver 15.1 Distrib 10.11.19-MariaDB, for debian-linux-gnu", "Distrib"),
            "10.11.19-MariaDB"
        );
        assert_eq!(version_in("wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer", "wrk"), "4.1.0");
        assert_eq!(
            version_in("wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer", "wrk"),
            "debian/4.1.0-3+b2"
        );
        assert_eq!(version_in("", "wrk"), "");
    }

    #[test]
    fn own_process_is_seen_and_not_a_compile() {
        let me = stat_of(std::process::id()).unwrap();
        assert_ne!(me.0, "rustc");
        assert!(ticks(&[std::process::id()]) < u64::MAX);
        assert!(machine().cores >= 1);
    }
}
