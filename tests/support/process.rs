//! A child process that cannot outlive its test: killed (SIGKILL) and
//! reaped when the guard is dropped, also when the test panics. Without it
//! a failing fault test leaves a `flashgrab serve` (or a redis-server)
//! running, holding its port and, through inherited file descriptors, the
//! `flock` of the test run.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd`; panics naming `what` if it does not start.
    pub fn spawn(cmd: &mut Command, what: &str) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        Self { child, what: what.to_owned() }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `kill SIG` (e.g. "-STOP", "-CONT", "-TERM") to the process.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// kill -9 now (the fault itself), and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit by itself; kills it and
    /// panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!("{} did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too; errors (already reaped)
        // are fine: the point is that nothing is left running.
        let _ = self.child.kill();
        if let Err(e) = self.child.wait() {
            eprintln!("reaping {} (pid {}): {e}", self.what, self.child.id());
        }
    }
}

/// `kill SIG PID`, asserting it was delivered.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}
