//! The request loop: `concurrency` workers, each with at most one request in
//! flight, over keep-alive connections.
//!
//! - Closed loop (no rate): a worker takes the next request number from a
//!   shared counter and sends as soon as its previous answer arrived; the
//!   latency is measured from the send.
//! - Open loop (`rate`): request `i` is due at `start + i / rate`; worker `w`
//!   sends requests `w, w + C, w + 2C, ...` each at its due time (the wrk2
//!   model). The latency is measured from the due time, so a server that
//!   falls behind is charged for the queueing it causes (no coordinated
//!   omission). If the workers cannot keep up the achieved rate is lower
//!   than asked; the summary shows both.
//!
//! Request `i` is sent as user `i mod users`. In both modes the numbers sent
//! are exactly `0..sent` (a worker checks the deadline before it takes a
//! number), so the users reached are `min(sent, users)`.
//!
//! Bounded: at most `requests` requests, no new request after `duration`, and
//! every request has the client's timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use hyper::{Request, Uri};

use crate::client::{Http, SendError};
use crate::outcome::{Outcome, classify};
use crate::report::Hists;

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    pub requests: u64,
    pub concurrency: usize,
    /// Requests per second for the open loop; `None` for the closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
}

/// Where the claims go and as whom.
pub struct Target {
    /// The claim URI on each instance; worker `w` uses `claim_uris[w % n]`.
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

pub struct RunResult {
    pub elapsed: Duration,
    pub counts: [u64; Outcome::COUNT],
    pub hists: Hists,
    pub grants: Vec<Grant>,
    /// A few transport/timeout/unexpected-status details, for diagnosis.
    pub samples: Vec<String>,
}

impl RunResult {
    pub fn sent(&self) -> u64 {
        self.counts.iter().sum()
    }
}

struct Shared {
    http: Http,
    target: Target,
    plan: Plan,
    start: Instant,
    deadline: Instant,
    next: AtomicU64,
    counts: [AtomicU64; Outcome::COUNT],
}

#[derive(Default)]
struct WorkerOut {
    hists: Hists,
    grants: Vec<Grant>,
    samples: Vec<String>,
}

/// Details kept per worker: enough to see what went wrong, not a log.
const SAMPLES_PER_WORKER: usize = 3;

pub async fn run(http: Http, target: Target, plan: Plan) -> RunResult {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        http,
        deadline: start + plan.duration,
        start,
        target,
        plan,
        next: AtomicU64::new(0),
        counts: std::array::from_fn(|_| AtomicU64::new(0)),
    });
    let progress = tokio::spawn(progress(shared.clone()));
    let workers: Vec<_> = (0..shared.plan.concurrency).map(|w| tokio::spawn(worker(w, shared.clone()))).collect();
    let mut hists = Hists::default();
    let mut grants = Vec::new();
    let mut samples = Vec::new();
    for w in workers {
        match w.await {
            Ok(out) => {
                hists.merge(out.hists);
                grants.extend(out.grants);
                samples.extend(out.samples);
            }
            Err(e) => samples.push(format!("worker failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    RunResult {
        elapsed,
        counts: std::array::from_fn(|i| shared.counts[i].load(Ordering::Relaxed)),
        hists,
        grants,
        samples,
    }
}

/// The next request number and the instant latency is measured from, or
/// `None` when this worker is done.
async fn next_request(w: usize, k: &mut u64, s: &Shared) -> Option<(u64, Instant)> {
    match s.plan.rate {
        None => {
            if Instant::now() >= s.deadline {
                return None;
            }
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            (i < s.plan.requests).then(|| (i, Instant::now()))
        }
        Some(rate) => {
            let i = w as u64 + *k * s.plan.concurrency as u64;
            *k += 1;
            let due = s.start + Duration::from_secs_f64(i as f64 / rate);
            if i >= s.plan.requests || due >= s.deadline {
                return None;
            }
            tokio::time::sleep_until(due.into()).await;
            Some((i, due))
        }
    }
}

async fn worker(w: usize, s: Arc<Shared>) -> WorkerOut {
    let mut out = WorkerOut::default();
    let users = s.target.auth.len() as u64;
    let uri = &s.target.claim_uris[w % s.target.claim_uris.len()];
    let mut k = 0u64;
    while let Some((i, from)) = next_request(w, &mut k, &s).await {
        let user = (i % users) as usize;
        let req = Request::post(uri.clone())
            .header(AUTHORIZATION, s.target.auth[user].clone())
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
            .body(Full::new(Bytes::new()))
            .expect("a request from a parsed URI and valid headers");
        let answer = s.http.send(req).await;
        let micros = from.elapsed().as_micros() as u64;
        let (outcome, reply, detail) = match answer {
            Ok((status, body)) => {
                let (o, reply) = classify(status.as_u16(), &body);
                let detail = matches!(o, Outcome::ClientError | Outcome::ServerError)
                    .then(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
                (o, Some(reply), detail)
            }
            Err(SendError::Timeout) => (Outcome::Timeout, None, None),
            Err(SendError::Transport(t)) => (Outcome::Transport, None, Some(t)),
        };
        s.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        out.hists.record(outcome, micros);
        if outcome == Outcome::Granted {
            let reply = reply.unwrap_or_default();
            out.grants.push(Grant { user: user as u32, coupon_id: reply.id, owner: reply.user_id });
        }
        if let Some(d) = detail
            && out.samples.len() < SAMPLES_PER_WORKER
        {
            out.samples.push(d);
        }
    }
    out
}

/// One line a second on stderr: rate over the last second and totals.
async fn progress(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let c: [u64; Outcome::COUNT] = std::array::from_fn(|i| s.counts[i].load(Ordering::Relaxed));
        let total: u64 = c.iter().sum();
        let n = |o: Outcome| c[o.index()];
        eprintln!(
            "{:>6.1}s {:>8} req/s  total {:>9}  201 {:>8}  409 {:>8}  410 {:>8}  429 {:>6}  503 {:>6}  other {:>6}  err {:>6}",
            s.start.elapsed().as_secs_f64(),
            total - last,
            total,
            n(Outcome::Granted),
            n(Outcome::AlreadyClaimed) + n(Outcome::LimitReached) + n(Outcome::NotStarted),
            n(Outcome::SoldOut) + n(Outcome::Ended),
            n(Outcome::RateLimited),
            n(Outcome::Unavailable),
            n(Outcome::ClientError) + n(Outcome::ServerError),
            n(Outcome::Timeout) + n(Outcome::Transport),
        );
        last = total;
    }
}
