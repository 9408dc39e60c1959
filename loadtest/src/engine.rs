//! The request loop: `concurrency` workers over keep-alive connections.
//!
//! Work comes in two kinds:
//!
//! - **Arrivals**: a virtual user taps "grab". Arrival `i` is user
//!   `i mod users`. Closed loop (no rate): a worker takes the next arrival
//!   number from a shared counter as soon as its previous answer arrived, and
//!   latency is measured from the send. Open loop (`rate`): arrival `i` is due
//!   at `start + i / rate`; worker `w` serves arrivals `w, w + C, w + 2C, ...`
//!   each at its due time (the wrk2 model). A worker still waiting for an
//!   earlier answer at the due time measures from the due time, so a
//!   server that falls behind is charged for the queueing it causes (no
//!   coordinated omission); a worker that was free measures from its send,
//!   because tokio's timer wakes it up to a millisecond after the due time
//!   (a 1 ms tick) and that delay is the generator's, not the server's. If
//!   the workers cannot keep up, the achieved rate is lower than asked; the
//!   summary shows both.
//! - **Follow-ups** a worker schedules for itself: a retry of a user who got
//!   "not now" (429, 503, timeout, ...), the redemption of a coupon a
//!   checkout-pace later, a replay of that redemption. They wait in the
//!   worker's own heap (no shared queue) and are sent when due, before any
//!   arrival that is due later. Their latency is measured like an arrival's.
//!
//! Users behave by a share drawn from a hash of their number (so a run is
//! reproducible): a share of them double-tap (two claims at once on the
//! first tap), a share retry (up to `max_retries`, after `Retry-After` or an
//! exponential pause), a share replay their redemption.
//!
//! Bounded: at most `arrivals` arrivals, none after `duration`, no follow-up
//! after `duration + grace` (those are counted as abandoned), and every
//! request has the client's timeout. Workers record into their own
//! histograms; shared state is a few relaxed atomics, one flag byte per
//! user and the per-second series (`series::Recorder`: arrivals by due
//! second, answers and their latency by the second they arrived).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Http, SendError};
use crate::outcome::{Op, Outcome, Reply, classify};
use crate::report::Hists;
use crate::series;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Uri};

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Arrivals (user taps) at most; follow-ups come on top.
    pub arrivals: u64,
    pub concurrency: usize,
    /// Arrivals per second for the open loop; `None` for the closed loop.
    pub rate: Option<f64>,
    /// Open loop by a profile (`--arrivals`): arrival `i` is due at
    /// `profile.due(i)` rather than `i / rate`.
    pub profile: Option<Arc<crate::arrivals::Profile>>,
    /// No arrival after this.
    pub duration: Duration,
    /// Follow-ups are still sent this long after `duration`.
    pub grace: Duration,
}

/// How the virtual users behave.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Share of users whose first tap sends two claims at once.
    pub double_tap: f64,
    /// Share of users who try again after a "not now" answer.
    pub retry_share: f64,
    pub max_retries: u8,
    /// Redeem every granted coupon (the `redeem` scenario).
    pub redeem: Option<RedeemPlan>,
}

#[derive(Debug, Clone)]
pub struct RedeemPlan {
    /// Pause between the 201 and the redemption (the user at checkout).
    pub checkout: Duration,
    /// Share of users who send their redemption twice (same order id).
    pub replay_share: f64,
    pub order_total_cents: i64,
}

/// Where the requests go and as whom.
pub struct Target {
    /// Base URL of each instance.
    pub bases: Vec<String>,
    /// The claim URI on each instance; worker `w` claims on `claim_uris[w % n]`
    /// and redeems on the next instance (a coupon must be redeemable anywhere).
    pub claim_uris: Vec<Uri>,
    /// `Bearer <jwt>` of each user, minted before the run (index = user).
    pub auth: Vec<HeaderValue>,
}

/// A 201 as the client saw it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Index of the user who asked.
    pub user: u32,
    pub coupon_id: Option<String>,
    /// `user_id` of the returned coupon.
    pub owner: Option<String>,
}

/// A redeem 200 as the client saw it.
#[derive(Debug, Clone)]
pub struct Redemption {
    /// The coupon the request named.
    pub coupon_id: String,
    /// What the answer said.
    pub answered_coupon: Option<String>,
    pub order_id: Option<String>,
    pub discount_cents: Option<i64>,
    /// A second redemption with the same order id.
    pub replay: bool,
}

/// Bits of the per-user flag byte: what the client learned about a user.
pub mod flag {
    /// At least one request was sent for the user.
    pub const REACHED: u8 = 1;
    /// A 201 was seen.
    pub const GRANTED: u8 = 2;
    /// A 409 `already_claimed` / `limit_reached`: the store says the user holds one.
    pub const HELD: u8 = 4;
    /// An answer that may hide a grant (503, 5xx, timeout, transport).
    pub const AMBIGUOUS: u8 = 8;
    /// A 429: refused without trying.
    pub const LIMITED: u8 = 16;
    /// The user double-tapped.
    pub const DOUBLE_TAPPED: u8 = 32;
}

pub struct RunResult {
    pub elapsed: Duration,
    pub counts: [[u64; Outcome::COUNT]; Op::COUNT],
    pub hists: Hists,
    pub grants: Vec<Grant>,
    pub redemptions: Vec<Redemption>,
    /// One byte of [`flag`] bits per user.
    pub users: Vec<u8>,
    /// Per second of the run: arrivals, answers and their latency (see
    /// `series`).
    pub seconds: Vec<series::Raw>,
    /// Arrivals sent.
    pub arrivals: u64,
    /// When the last 201 arrived (time to sell out when the drop sold out).
    pub last_grant: Option<Duration>,
    /// When the first 410 `sold_out` arrived.
    pub first_sold_out: Option<Duration>,
    /// Follow-ups dropped because the run was over.
    pub abandoned: u64,
    /// A few transport/unexpected-status details, for diagnosis.
    pub samples: Vec<String>,
    /// With several targets, the claim histograms of each (worker `w` claims
    /// on target `w % n`; its redemptions go to the next one and are not in
    /// the split). Empty with one target.
    pub per_target: Vec<Hists>,
}

impl RunResult {
    pub fn count(&self, op: Op, o: Outcome) -> u64 {
        self.counts[op.index()][o.index()]
    }

    /// Requests of one operation.
    pub fn sent_of(&self, op: Op) -> u64 {
        self.counts[op.index()].iter().sum()
    }

    /// Requests of every kind.
    pub fn sent(&self) -> u64 {
        Op::ALL.iter().map(|op| self.sent_of(*op)).sum()
    }
}

/// A number in [0, 1) fixed by the user and the trait (splitmix64).
pub fn share_of(user: u32, salt: u64) -> f64 {
    let mut z = u64::from(user).wrapping_add(salt).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

const SALT_TAP: u64 = 1;
const SALT_RETRY: u64 = 2;
const SALT_REPLAY: u64 = 3;

/// Pause before retry number `attempt` (0-based): the server's `Retry-After`
/// (capped at 2 s, so a run stays short) or 100 ms doubling.
pub fn backoff(attempt: u8, retry_after: Option<u64>) -> Duration {
    match retry_after {
        Some(s) => Duration::from_secs(s.min(2)),
        None => Duration::from_millis(100u64 << attempt.min(4)),
    }
}

struct Shared {
    http: Http,
    target: Target,
    plan: Plan,
    behaviour: Behaviour,
    start: Instant,
    deadline: Instant,
    follow_deadline: Instant,
    next: AtomicU64,
    arrived: AtomicU64,
    counts: [[AtomicU64; Outcome::COUNT]; Op::COUNT],
    users: Vec<AtomicU8>,
    series: series::Recorder,
    /// Microseconds from the start to the last 201 answer.
    last_grant_us: AtomicU64,
    /// Microseconds from the start to the first 410 `sold_out` (MAX: none).
    first_sold_out_us: AtomicU64,
}

enum Action {
    Claim { user: u32, attempt: u8 },
    Redeem { user: u32, coupon: String, attempt: u8, replay: bool },
}

/// A follow-up in a worker's heap, earliest first.
struct Pending {
    due: Instant,
    seq: u64,
    action: Action,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Default)]
struct WorkerOut {
    hists: Hists,
    grants: Vec<Grant>,
    redemptions: Vec<Redemption>,
    samples: Vec<String>,
    abandoned: u64,
}

/// Details kept per worker: enough to see what went wrong, not a log.
const SAMPLES_PER_WORKER: usize = 3;

pub async fn run(http: Http, target: Target, plan: Plan, behaviour: Behaviour, users: u32) -> RunResult {
    let start = Instant::now();
    let seconds = (plan.duration + plan.grace).as_secs() as usize + 2;
    let shared = Arc::new(Shared {
        http,
        deadline: start + plan.duration,
        follow_deadline: start + plan.duration + plan.grace,
        start,
        target,
        plan,
        behaviour,
        next: AtomicU64::new(0),
        arrived: AtomicU64::new(0),
        counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        users: (0..users).map(|_| AtomicU8::new(0)).collect(),
        series: series::Recorder::new(seconds),
        last_grant_us: AtomicU64::new(0),
        first_sold_out_us: AtomicU64::new(u64::MAX),
    });
    let progress = tokio::spawn(progress(shared.clone()));
    let workers: Vec<_> = (0..shared.plan.concurrency).map(|w| tokio::spawn(worker(w, shared.clone()))).collect();
    let mut out = WorkerOut::default();
    let targets = shared.target.claim_uris.len();
    let mut per_target: Vec<Hists> =
        if targets > 1 { (0..targets).map(|_| Hists::default()).collect() } else { Vec::new() };
    for (w, handle) in workers.into_iter().enumerate() {
        match handle.await {
            Ok(o) => {
                if let Some(t) = per_target.get_mut(w % targets) {
                    t.merge(o.hists.clone());
                }
                out.hists.merge(o.hists);
                out.grants.extend(o.grants);
                out.redemptions.extend(o.redemptions);
                out.samples.extend(o.samples);
                out.abandoned += o.abandoned;
            }
            Err(e) => out.samples.push(format!("worker failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let used = elapsed.as_secs() as usize + 1;
    RunResult {
        elapsed,
        counts: std::array::from_fn(|op| std::array::from_fn(|o| shared.counts[op][o].load(Ordering::Relaxed))),
        hists: out.hists,
        grants: out.grants,
        redemptions: out.redemptions,
        users: shared.users.iter().map(|f| f.load(Ordering::Relaxed)).collect(),
        seconds: shared.series.snapshot(used),
        arrivals: shared.arrived.load(Ordering::Relaxed),
        last_grant: match shared.last_grant_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        },
        first_sold_out: match shared.first_sold_out_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        },
        abandoned: out.abandoned,
        samples: out.samples,
        per_target,
    }
}

/// The next arrival this worker would serve and when it is due, without
/// taking it; `None` when the worker has no more arrivals.
fn peek_arrival(w: usize, k: u64, s: &Shared) -> Option<(u64, Instant)> {
    match s.plan.rate {
        None => {
            let now = Instant::now();
            (now < s.deadline && s.next.load(Ordering::Relaxed) < s.plan.arrivals).then_some((0, now))
        }
        Some(rate) => {
            let i = w as u64 + k * s.plan.concurrency as u64;
            let at = match &s.plan.profile {
                Some(p) => p.due(i)?,
                None => i as f64 / rate,
            };
            let due = s.start + Duration::from_secs_f64(at);
            (i < s.plan.arrivals && due < s.deadline).then_some((i, due))
        }
    }
}

async fn worker(w: usize, s: Arc<Shared>) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut pending = BinaryHeap::new();
    let mut seq = 0u64;
    let mut k = 0u64;
    let mut arrivals_done = false;
    let open = s.plan.rate.is_some();
    loop {
        let arrival = if arrivals_done { None } else { peek_arrival(w, k, &s) };
        arrivals_done = arrival.is_none();
        let follow_due = pending.peek().map(|p: &Pending| p.due);
        let (action, due) = match (arrival, follow_due) {
            (None, None) => break,
            (Some((_, a)), Some(f)) if f <= a => {
                let p = pending.pop().expect("peeked");
                (p.action, p.due)
            }
            (None, Some(_)) => {
                let p = pending.pop().expect("peeked");
                (p.action, p.due)
            }
            (Some((i, due)), _) => {
                let i = if open {
                    k += 1;
                    i
                } else {
                    let i = s.next.fetch_add(1, Ordering::Relaxed);
                    if i >= s.plan.arrivals {
                        arrivals_done = true;
                        continue;
                    }
                    i
                };
                s.arrived.fetch_add(1, Ordering::Relaxed);
                s.series.arrival(due.saturating_duration_since(s.start));
                (Action::Claim { user: (i % s.users.len() as u64) as u32, attempt: 0 }, due)
            }
        };
        if due >= s.follow_deadline {
            // The heap is ordered: everything left is later still.
            out.abandoned += 1 + pending.len() as u64;
            pending.clear();
            continue;
        }
        // Tokio's timer fires on a 1 ms tick at or after the deadline, so a
        // sleep always ends up to a millisecond late, even for a deadline
        // that is now. Hence: no sleep when due (a closed loop's next request
        // went out a tick late every time), and in an open loop the latency
        // counts from the scheduled time only when this worker was still busy
        // with an earlier request then (the server's delay, which must
        // count); a worker that was free and woke late counts from its send.
        let free_before_due = Instant::now() < due;
        if free_before_due {
            tokio::time::sleep_until(due.into()).await;
        }
        let from = if open && !free_before_due { due } else { Instant::now() };
        for (delay, next) in execute(w, &s, action, from, &mut out).await {
            seq += 1;
            pending.push(Pending { due: Instant::now() + delay, seq, action: next });
        }
    }
    out
}

/// Sends one action (two requests for a double tap) and returns the
/// follow-ups it calls for, with their delays.
async fn execute(w: usize, s: &Shared, action: Action, from: Instant, out: &mut WorkerOut) -> Vec<(Duration, Action)> {
    let mut next = Vec::new();
    let b = &s.behaviour;
    match action {
        Action::Claim { user, attempt } => {
            let uri = &s.target.claim_uris[w % s.target.claim_uris.len()];
            let mut flags = flag::REACHED;
            let tap2 = attempt == 0 && b.double_tap > 0.0 && share_of(user, SALT_TAP) < b.double_tap;
            let answers = if tap2 {
                flags |= flag::DOUBLE_TAPPED;
                let (x, y) = tokio::join!(
                    send(s, Op::Claim, claim_request(s, uri, user)),
                    send(s, Op::Claim, claim_request(s, uri, user))
                );
                vec![x, y]
            } else {
                vec![send(s, Op::Claim, claim_request(s, uri, user)).await]
            };
            let mut retry = None;
            for (outcome, reply, retry_after, detail) in answers {
                record(s, Op::Claim, outcome, from, detail, out);
                flags |= match outcome {
                    Outcome::Granted => flag::GRANTED,
                    Outcome::AlreadyClaimed | Outcome::LimitReached => flag::HELD,
                    Outcome::RateLimited => flag::LIMITED,
                    o if o.ambiguous() => flag::AMBIGUOUS,
                    _ => 0,
                };
                if outcome == Outcome::Granted {
                    if let (Some(r), Some(coupon)) = (&b.redeem, &reply.id) {
                        let coupon = coupon.clone();
                        next.push((r.checkout, Action::Redeem { user, coupon, attempt: 0, replay: false }));
                    }
                    out.grants.push(Grant { user, coupon_id: reply.id, owner: reply.user_id });
                } else if outcome.retryable() && attempt < b.max_retries && share_of(user, SALT_RETRY) < b.retry_share {
                    retry = Some(backoff(attempt, retry_after));
                }
            }
            s.users[user as usize].fetch_or(flags, Ordering::Relaxed);
            if let Some(delay) = retry {
                next.push((delay, Action::Claim { user, attempt: attempt + 1 }));
            }
        }
        Action::Redeem { user, coupon, attempt, replay } => {
            let base = &s.target.bases[(w + 1) % s.target.bases.len()];
            let plan = b.redeem.as_ref().expect("redeems are scheduled only with a redeem plan");
            let req = redeem_request(s, base, user, &coupon, plan.order_total_cents);
            let (outcome, reply, retry_after, detail) = send(s, Op::Redeem, req).await;
            record(s, Op::Redeem, outcome, from, detail, out);
            if outcome == Outcome::Redeemed {
                out.redemptions.push(Redemption {
                    coupon_id: coupon.clone(),
                    answered_coupon: reply.coupon_id,
                    order_id: reply.order_id,
                    discount_cents: reply.discount_cents,
                    replay,
                });
                if !replay && share_of(user, SALT_REPLAY) < plan.replay_share {
                    next.push((Duration::from_millis(50), Action::Redeem { user, coupon, attempt: 0, replay: true }));
                }
            } else if outcome.retryable() && attempt < b.max_retries && share_of(user, SALT_RETRY) < b.retry_share {
                next.push((
                    backoff(attempt, retry_after),
                    Action::Redeem { user, coupon, attempt: attempt + 1, replay },
                ));
            }
        }
    }
    next
}

fn claim_request(s: &Shared, uri: &Uri, user: u32) -> Request<Full<Bytes>> {
    Request::post(uri.clone())
        .header(AUTHORIZATION, s.target.auth[user as usize].clone())
        .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
        .body(Full::new(Bytes::new()))
        .expect("a request from a parsed URI and valid headers")
}

/// The order id of a coupon's redemption: fixed per coupon, so a replay or
/// a retry is the same order (idempotent by contract).
pub fn order_id(coupon: &str) -> String {
    format!("lt-{coupon}")
}

fn redeem_request(s: &Shared, base: &str, user: u32, coupon: &str, total: i64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"order_id": order_id(coupon), "order_total_cents": total}).to_string();
    Request::post(format!("{base}/v1/coupons/{coupon}/redeem"))
        .header(AUTHORIZATION, s.target.auth[user as usize].clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| {
            // A coupon id that is not a valid path segment: send something the
            // server answers 404 to rather than panicking.
            Request::post(format!("{base}/v1/coupons/invalid/redeem")).body(Full::new(Bytes::new())).expect("static")
        })
}

type Answered = (Outcome, Reply, Option<u64>, Option<String>);

async fn send(s: &Shared, op: Op, req: Request<Full<Bytes>>) -> Answered {
    match s.http.exchange(req).await {
        Ok(a) => {
            let (o, reply) = classify(op, a.status.as_u16(), &a.body);
            let detail = matches!(o, Outcome::ClientError | Outcome::ServerError)
                .then(|| format!("{} {}: {}", op.key(), a.status, String::from_utf8_lossy(&a.body)));
            (o, reply, a.retry_after, detail)
        }
        Err(SendError::Timeout) => (Outcome::Timeout, Reply::default(), None, None),
        Err(SendError::Transport(t)) => {
            (Outcome::Transport, Reply::default(), None, Some(format!("{}: {t}", op.key())))
        }
    }
}

fn record(s: &Shared, op: Op, outcome: Outcome, from: Instant, detail: Option<String>, out: &mut WorkerOut) {
    let micros = from.elapsed().as_micros() as u64;
    s.counts[op.index()][outcome.index()].fetch_add(1, Ordering::Relaxed);
    out.hists.record(op, outcome, micros);
    let since = s.start.elapsed();
    match outcome {
        Outcome::Granted => {
            s.last_grant_us.fetch_max(since.as_micros() as u64, Ordering::Relaxed);
        }
        Outcome::SoldOut => {
            s.first_sold_out_us.fetch_min(since.as_micros() as u64, Ordering::Relaxed);
        }
        _ => {}
    }
    s.series.answer(since, op, outcome, micros);
    if let Some(d) = detail
        && out.samples.len() < SAMPLES_PER_WORKER
    {
        out.samples.push(d);
    }
}

/// The share of the run done, from the arrivals sent and the time spent.
pub fn progress_fraction(arrived: u64, arrivals: u64, elapsed: Duration, duration: Duration) -> f64 {
    let by_count = if arrivals == 0 { 1.0 } else { arrived as f64 / arrivals as f64 };
    let by_time = elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-9);
    by_count.max(by_time).clamp(0.0, 1.0)
}

/// A 20-character bar for `fraction`.
pub fn bar(fraction: f64) -> String {
    let full = (fraction.clamp(0.0, 1.0) * 20.0).round() as usize;
    format!("[{}{}]", "#".repeat(full), "-".repeat(20 - full))
}

/// Once a second on stderr: a bar, the rates over the last second and the
/// totals by answer. Overwrites itself on a terminal, one line per second
/// otherwise (logs).
async fn progress(s: Arc<Shared>) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_total, mut last_granted, mut last_redeemed) = (0u64, 0u64, 0u64);
    loop {
        tick.tick().await;
        let c = |op: Op, o: Outcome| s.counts[op.index()][o.index()].load(Ordering::Relaxed);
        let sum = |f: &dyn Fn(Outcome) -> bool| -> u64 {
            Op::ALL.iter().flat_map(|op| Outcome::ALL.iter().filter(|o| f(**o)).map(move |o| c(*op, *o))).sum()
        };
        let total = sum(&|_| true);
        let granted = c(Op::Claim, Outcome::Granted);
        let redeemed = c(Op::Redeem, Outcome::Redeemed);
        let elapsed = s.start.elapsed();
        let fraction = progress_fraction(s.arrived.load(Ordering::Relaxed), s.plan.arrivals, elapsed, s.plan.duration);
        let mut line = format!(
            "{} {:>3.0}% {:>6.1}s {:>7} req/s {:>7} 201/s | total={} 201={} 409={} 410={} 429={} 503={} err={}",
            bar(fraction),
            fraction * 100.0,
            elapsed.as_secs_f64(),
            total - last_total,
            granted - last_granted,
            total,
            granted,
            sum(&|o| matches!(o, Outcome::AlreadyClaimed | Outcome::LimitReached | Outcome::NotStarted)),
            sum(&|o| matches!(o, Outcome::SoldOut | Outcome::Ended)),
            sum(&|o| o == Outcome::RateLimited),
            sum(&|o| o == Outcome::Unavailable),
            sum(&|o| matches!(o, Outcome::ClientError | Outcome::ServerError | Outcome::Timeout | Outcome::Transport)),
        );
        if s.behaviour.redeem.is_some() {
            line.push_str(&format!(" | redeemed={redeemed} ({}/s)", redeemed - last_redeemed));
        }
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        (last_total, last_granted, last_redeemed) = (total, granted, redeemed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_uniform_enough_and_stable() {
        let n = 100_000u32;
        let tappers = (0..n).filter(|u| share_of(*u, SALT_TAP) < 0.05).count() as f64 / f64::from(n);
        assert!((tappers - 0.05).abs() < 0.005, "{tappers}");
        assert_eq!(share_of(7, SALT_RETRY), share_of(7, SALT_RETRY));
        assert_ne!(share_of(7, SALT_RETRY), share_of(7, SALT_TAP));
        assert!((0..n).all(|u| (0.0..1.0).contains(&share_of(u, 3))));
    }

    #[test]
    fn backoff_honours_retry_after_within_bounds() {
        assert_eq!(backoff(0, Some(1)), Duration::from_secs(1));
        assert_eq!(backoff(0, Some(60)), Duration::from_secs(2));
        assert_eq!(backoff(0, None), Duration::from_millis(100));
        assert_eq!(backoff(2, None), Duration::from_millis(400));
        assert_eq!(backoff(200, None), Duration::from_millis(1600));
    }

    #[test]
    fn pending_pops_earliest_first() {
        let t = Instant::now();
        let mut h = BinaryHeap::new();
        for (i, ms) in [30u64, 10, 20, 10].into_iter().enumerate() {
            h.push(Pending {
                due: t + Duration::from_millis(ms),
                seq: i as u64,
                action: Action::Claim { user: 0, attempt: 0 },
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop().map(|p| p.seq)).collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }

    #[test]
    fn progress_takes_the_further_of_count_and_time() {
        let d = Duration::from_secs(10);
        assert!((progress_fraction(50, 100, Duration::from_secs(1), d) - 0.5).abs() < 1e-9);
        assert!((progress_fraction(10, 100, Duration::from_secs(8), d) - 0.8).abs() < 1e-9);
        assert_eq!(progress_fraction(500, 100, Duration::ZERO, d), 1.0);
        assert_eq!(bar(0.5), "[##########----------]");
        assert_eq!(bar(2.0), "[####################]");
    }
}
