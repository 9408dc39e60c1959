//! Circuit breakers in front of the Redis Cluster, one per master.
//!
//! One breaker. Closed: calls go through; `threshold` consecutive outage
//! errors (I/O, timeouts, cluster down) open it. Open: every call fails at
//! once for the pause, so a dead node costs a claim microseconds instead of
//! a full timeout, and it is not hammered while it comes back. Half-open:
//! after the pause exactly one call (the probe) goes through; its success
//! closes the breaker, its failure (or its being dropped unfinished) opens
//! it again for twice the last pause, up to [`MAX_PAUSE_FACTOR`] times
//! `open_for`: a long outage is probed less and less often, and a probe
//! costs a request its timeout. So it closes by itself once the node
//! answers again, with no operator and no background task.
//!
//! Why one per master ([`Breakers`]): a shard range down (a master and its
//! replicas frozen or dead) must stop only its own shards. With a single
//! breaker for the cluster, the timeouts of that range opened it and every
//! claim of the healthy masters was refused with them. Which breaker a call
//! goes through is decided by the slot of its key: slot -> master comes
//! from the cluster's slot map (`CLUSTER SLOTS`), held here as a table and
//! refreshed by the store in the background (at connect, when a breaker
//! opens, and every few seconds while one is not closed), so the hot path
//! costs one table lookup, never a round trip. A call without a key (`CLUSTER
//! INFO`, `CLUSTER SLOTS`, a `PING` of one node, `PUBLISH`) goes through no
//! breaker: such calls are rare, each is bounded by the timeout, and one
//! breaker shared by them would couple the masters again. A stale table is
//! harmless for correctness (after a failover the old master's breaker
//! keeps guarding the slots it had until the refresh, and its probe is
//! routed by the cluster client to the new master): it only groups slots.
//!
//! When a probe closes a breaker, the other open breakers end their pause
//! at once (their next call is their probe): after an outage of the whole
//! cluster, or of the network, the masters come back together, and the
//! first one that answers says so for all. In a single-range outage the
//! others are closed anyway.
//!
//! Lock-free per breaker (atomics read on every call); the slot table is
//! behind a read-mostly lock, written only by a refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::SlotMap;
use super::keys::SLOTS;

/// A breaker whose probes keep failing pauses at most this many times
/// `open_for`.
pub const MAX_PAUSE_FACTOR: u32 = 4;

/// The state as exported to metrics: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open")]
pub struct Open;

#[derive(Debug)]
pub struct Breaker {
    /// What it guards ("127.0.0.1:7000"), for the logs and metrics.
    name: String,
    threshold: u32,
    open_for: Duration,
    /// Reference point of `open_until_ms`.
    epoch: Instant,
    /// Consecutive outage errors seen while closed.
    failures: AtomicU32,
    /// 0 while closed; else ms since `epoch` until which calls fail fast.
    open_until_ms: AtomicU64,
    /// The pause after the last failed probe, ms (grows while probes fail).
    pause_ms: AtomicU64,
    /// A half-open probe is in flight.
    probing: AtomicBool,
    /// Times the breaker opened from closed.
    opened: AtomicU64,
    /// Calls refused while open.
    rejected: AtomicU64,
}

/// Permission for one call; report how it went with [`Ticket::success`] or
/// [`Ticket::failure`]. A probe ticket dropped without a report counts as a
/// failure (the call was cancelled: nothing says Redis is back).
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self::named("redis", threshold, open_for)
    }

    pub fn named(name: &str, threshold: u32, open_for: Duration) -> Self {
        Self {
            name: name.to_owned(),
            threshold: threshold.max(1),
            open_for,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            pause_ms: AtomicU64::new(open_for.as_millis() as u64),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "open until" is never 0, the closed marker.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// May a call go to Redis now?
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Open> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Ticket { breaker: self.clone(), probe: false, reported: false });
        }
        if self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel) {
            return Ok(Ticket { breaker: self.clone(), probe: true, reported: false });
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Open)
    }

    fn open_for_ms(&self, pause_ms: u64) {
        let until = self.now_ms() + pause_ms;
        self.open_until_ms.store(until, Ordering::Release);
    }

    /// Returns true when this success closed the breaker (a probe).
    fn succeeded(&self, probe: bool) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if probe {
            self.open_until_ms.store(0, Ordering::Release);
            self.pause_ms.store(self.open_for.as_millis() as u64, Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            tracing::info!(node = %self.name, "redis answers again: circuit breaker closed");
        }
        probe
    }

    fn failed(&self, probe: bool) {
        if probe {
            let base = self.open_for.as_millis() as u64;
            let pause = self.pause_ms.load(Ordering::Relaxed);
            let next = (pause * 2).min(base * u64::from(MAX_PAUSE_FACTOR)).max(base);
            self.pause_ms.store(next, Ordering::Relaxed);
            self.open_for_ms(next);
            self.probing.store(false, Ordering::Release);
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold
            && self.open_until_ms.compare_exchange(0, u64::MAX, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            let base = self.open_for.as_millis() as u64;
            self.pause_ms.store(base, Ordering::Relaxed);
            self.open_for_ms(base);
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %self.name, failures = n, open_for = ?self.open_for, "redis unreachable: circuit breaker open");
        }
    }

    /// Ends the pause now if open: the next call is the probe.
    fn end_pause(&self) {
        let now = self.now_ms();
        let _ = self.open_until_ms.fetch_update(Ordering::AcqRel, Ordering::Acquire, |until| {
            (until != 0 && until != u64::MAX && until > now).then_some(now)
        });
    }

    pub fn state(&self) -> BreakerState {
        match self.open_until_ms.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if self.probing.load(Ordering::Acquire) || self.now_ms() >= until => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl Ticket {
    /// The call succeeded. Returns true when it was the probe that closed
    /// the breaker (see [`Breakers::recovered`]).
    pub fn success(mut self) -> bool {
        self.reported = true;
        self.breaker.succeeded(self.probe)
    }

    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.failed(self.probe);
    }

    /// The call ended in an error that says nothing about reachability (a
    /// script error, a bad reply): a probe that got an answer at all proves
    /// Redis is back.
    pub fn answered(self) -> bool {
        self.success()
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.failed(true);
        }
    }
}

/// One breaker per master, found by the slot of a call's key (see the
/// module note).
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    table: RwLock<Arc<Table>>,
    /// Opened and rejected counts of breakers whose master left the slot
    /// map, so that the totals never go down.
    retired: [AtomicU64; 2],
}

#[derive(Debug)]
struct Table {
    /// Index into `breakers` for every slot.
    owner: Vec<u16>,
    /// Index 0 guards the slots no master owns (or every slot before the
    /// first slot map): named "unassigned".
    breakers: Vec<Arc<Breaker>>,
}

impl Breakers {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        let unassigned = Arc::new(Breaker::named("unassigned", threshold, open_for));
        let table = Table { owner: vec![0; usize::from(SLOTS)], breakers: vec![unassigned] };
        Self { threshold, open_for, table: RwLock::new(Arc::new(table)), retired: Default::default() }
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The breaker of the master owning `slot`.
    pub fn for_slot(&self, slot: u16) -> Arc<Breaker> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let i = t.owner.get(usize::from(slot)).copied().unwrap_or(0);
        t.breakers[usize::from(i)].clone()
    }

    /// Regroups the slots by master as `map` says. A master already known
    /// keeps its breaker (and its state); a new one gets a closed breaker.
    pub fn update(&self, map: &SlotMap) {
        let old = self.table();
        let mut by_name: HashMap<&str, &Arc<Breaker>> = old.breakers.iter().map(|b| (b.name(), b)).collect();
        let mut breakers = vec![old.breakers[0].clone()];
        by_name.remove("unassigned");
        let mut index: HashMap<String, u16> = HashMap::new();
        let mut owner = vec![0u16; usize::from(SLOTS)];
        for slot in 0..SLOTS {
            let Some(master) = map.master_of(slot) else { continue };
            let i = match index.get(master) {
                Some(i) => *i,
                None => {
                    let b = by_name
                        .remove(master)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Breaker::named(master, self.threshold, self.open_for)));
                    breakers.push(b);
                    let i = (breakers.len() - 1) as u16;
                    index.insert(master.to_owned(), i);
                    i
                }
            };
            owner[usize::from(slot)] = i;
        }
        for gone in by_name.values() {
            self.retired[0].fetch_add(gone.opened(), Ordering::Relaxed);
            self.retired[1].fetch_add(gone.rejected(), Ordering::Relaxed);
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Table { owner, breakers });
    }

    /// A probe closed `who`: the others end their pause now.
    pub fn recovered(&self, who: &Breaker) {
        for b in &self.table().breakers {
            if !std::ptr::eq(b.as_ref(), who) {
                b.end_pause();
            }
        }
    }

    /// The worst state over the masters (open, then half-open, then closed).
    pub fn state(&self) -> BreakerState {
        let states = self.states();
        if states.iter().any(|(_, s)| *s == BreakerState::Open) {
            BreakerState::Open
        } else if states.iter().any(|(_, s)| *s == BreakerState::HalfOpen) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        }
    }

    /// Every breaker with its state, by master address.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        self.table().breakers.iter().map(|b| (b.name().to_owned(), b.state())).collect()
    }

    /// Whether any breaker is not closed.
    pub fn any_open(&self) -> bool {
        self.table().breakers.iter().any(|b| b.state() != BreakerState::Closed)
    }

    /// Times a breaker opened, over all masters.
    pub fn opened(&self) -> u64 {
        self.retired[0].load(Ordering::Relaxed) + self.table().breakers.iter().map(|b| b.opened()).sum::<u64>()
    }

    /// Calls refused by an open breaker, over all masters.
    pub fn rejected(&self) -> u64 {
        self.retired[1].load(Ordering::Relaxed) + self.table().breakers.iter().map(|b| b.rejected()).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Arc<Breaker>) {
        b.admit().unwrap().failure();
    }

    fn breaker(threshold: u32, open_ms: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(threshold, Duration::from_millis(open_ms)))
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 60_000);
        fail(&b);
        fail(&b);
        b.admit().unwrap().success();
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit().unwrap_err(), Open);
        assert_eq!((b.opened(), b.rejected()), (1, 1));
    }

    #[test]
    fn one_probe_after_the_pause_then_closes_or_reopens_for_longer() {
        let b = breaker(1, 30);
        fail(&b);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().expect("the probe goes through");
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        // The pause doubled: still open after the first pause.
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), BreakerState::Open, "a failed probe doubles the pause");
        std::thread::sleep(Duration::from_millis(30));
        assert!(b.admit().unwrap().success(), "the probe's success closes it");
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
        assert_eq!(b.opened(), 1, "a failed probe is not a new opening");
    }

    #[test]
    fn the_pause_grows_to_a_bound() {
        let b = breaker(1, 10);
        fail(&b);
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(45));
            b.admit().expect("a probe within the bounded pause").failure();
        }
        assert_eq!(b.pause_ms.load(Ordering::Relaxed), 10 * u64::from(MAX_PAUSE_FACTOR));
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure() {
        let b = breaker(1, 20);
        fail(&b);
        std::thread::sleep(Duration::from_millis(30));
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit().is_ok(), "a later probe is allowed");
    }

    fn three_masters() -> SlotMap {
        SlotMap::from_ranges(vec![(0, 5460, "a:1".into()), (5461, 10922, "b:1".into()), (10923, 16383, "c:1".into())])
    }

    #[test]
    fn one_master_down_opens_only_its_breaker() {
        let bs = Breakers::new(2, Duration::from_secs(60));
        bs.update(&three_masters());
        let a = bs.for_slot(100);
        fail(&a);
        fail(&a);
        assert!(bs.for_slot(5000).admit().is_err(), "every slot of that master fails fast");
        assert!(bs.for_slot(6000).admit().is_ok(), "another master's slots are not refused");
        assert!(bs.for_slot(16383).admit().is_ok());
        assert_eq!(bs.state(), BreakerState::Open);
        assert_eq!((bs.opened(), bs.rejected()), (1, 1));
        let states: HashMap<String, BreakerState> = bs.states().into_iter().collect();
        assert_eq!(states["a:1"], BreakerState::Open);
        assert_eq!(states["b:1"], BreakerState::Closed);
    }

    #[test]
    fn a_new_slot_map_keeps_the_state_of_known_masters() {
        let bs = Breakers::new(1, Duration::from_secs(60));
        bs.update(&three_masters());
        fail(&bs.for_slot(0));
        // c's slots move to a new master d (a failover); a stays open.
        bs.update(&SlotMap::from_ranges(vec![
            (0, 5460, "a:1".into()),
            (5461, 10922, "b:1".into()),
            (10923, 16383, "d:1".into()),
        ]));
        assert!(bs.for_slot(0).admit().is_err());
        assert_eq!(bs.for_slot(12000).name(), "d:1");
        assert_eq!(bs.opened(), 1);
        // Before any slot map, and for slots nobody owns: "unassigned".
        let fresh = Breakers::new(1, Duration::from_secs(60));
        assert_eq!(fresh.for_slot(7).name(), "unassigned");
    }

    #[test]
    fn a_closing_probe_ends_the_pause_of_the_others() {
        let bs = Breakers::new(1, Duration::from_millis(20));
        bs.update(&three_masters());
        let (a, b) = (bs.for_slot(0), bs.for_slot(6000));
        fail(&a);
        fail(&b);
        std::thread::sleep(Duration::from_millis(30));
        // b's probe fails: its pause doubles...
        b.admit().unwrap().failure();
        // ...then a's probe succeeds: b may probe at once.
        let probe = a.admit().unwrap();
        assert!(probe.success());
        bs.recovered(&a);
        assert!(b.admit().is_ok(), "b's pause ended when a came back");
    }
}
