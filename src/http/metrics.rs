//! `GET /metrics` in the Prometheus text format, and the counters of the
//! front end behind it.
//!
//! Hand-rolled on atomics rather than a metrics crate: no global recorder
//! (every instance, and every test instance in one process, has its own),
//! no allocation and no lock on the request path once a route has been
//! seen, and the whole exposition is a few dozen lines. What is exported:
//!
//! - `flashgrab_http_requests_total{route,status}`: every response, by
//!   route template (`/v1/campaigns/{id}/claim`; `unmatched` for unknown
//!   paths, so junk URLs cannot blow up the label set);
//! - `flashgrab_claims_total{outcome}` and the
//!   `flashgrab_claim_duration_seconds{outcome}` histogram: claims that
//!   reached the claim handler (a per-user 429 is refused before it);
//! - `flashgrab_rate_limited_total{scope}`, `flashgrab_rate_limiter_keys`,
//!   `flashgrab_shed_total`, `flashgrab_in_flight`, the breaker's state and
//!   counters;
//! - the claim pipeline: outbox relay and persist worker figures.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::domain::Campaign;
pub use crate::metrics::ClaimLabel;
use crate::metrics::{ClaimTally, PipelineMetrics};

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One latency histogram (cumulative on export).
#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Responses of one route by status (100..=599, indexed from 100).
struct RouteCounters {
    by_status: Box<[AtomicU64]>,
}

impl RouteCounters {
    fn new() -> Self {
        Self { by_status: (100..600).map(|_| AtomicU64::new(0)).collect() }
    }
}

/// The front end's counters of one instance.
pub struct HttpMetrics {
    routes: RwLock<HashMap<Box<str>, Arc<RouteCounters>>>,
    claims: [AtomicU64; ClaimLabel::ALL.len()],
    claim_latency: [Histogram; ClaimLabel::ALL.len()],
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            routes: RwLock::default(),
            claims: Default::default(),
            claim_latency: std::array::from_fn(|_| Histogram::default()),
        }
    }
}

impl HttpMetrics {
    fn route(&self, route: &str) -> Arc<RouteCounters> {
        if let Some(c) = self.routes.read().unwrap_or_else(|e| e.into_inner()).get(route) {
            return c.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.entry(route.into()).or_insert_with(|| Arc::new(RouteCounters::new())).clone()
    }

    pub fn response(&self, route: &str, status: u16) {
        Self::count(&self.route(route), status);
    }

    fn count(route: &RouteCounters, status: u16) {
        if (100..600).contains(&status) {
            route.by_status[usize::from(status - 100)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn claim(&self, label: ClaimLabel, took: Duration) {
        let i = label as usize;
        self.claims[i].fetch_add(1, Ordering::Relaxed);
        self.claim_latency[i].observe(took);
    }

    /// Writes the HTTP and claim families; `live` are the live campaigns
    /// with this instance's counters of each (the `campaign` label).
    fn render(&self, out: &mut String, live: &[(Arc<Campaign>, Arc<ClaimTally>)]) {
        family(out, "flashgrab_http_requests_total", "counter", "HTTP responses by route template and status.");
        let routes: Vec<(Box<str>, Arc<RouteCounters>)> = {
            let r = self.routes.read().unwrap_or_else(|e| e.into_inner());
            r.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut routes = routes;
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        for (route, c) in &routes {
            for (i, n) in c.by_status.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ =
                        writeln!(out, "flashgrab_http_requests_total{{route=\"{route}\",status=\"{}\"}} {n}", i + 100);
                }
            }
        }
        family(
            out,
            "flashgrab_claims_total",
            "counter",
            "Claims that reached the claim handler, by outcome; by campaign for the live campaigns \
             (the series without a campaign label counts the rest: sum over the family for the total).",
        );
        for l in ClaimLabel::ALL {
            let total = self.claims[l as usize].load(Ordering::Relaxed);
            let mut attributed = 0u64;
            for (c, tally) in live {
                let n = tally.get(l);
                if n == 0 {
                    continue;
                }
                attributed += n;
                let _ = writeln!(
                    out,
                    "flashgrab_claims_total{{outcome=\"{}\",campaign=\"{}\",campaign_id=\"{}\"}} {n}",
                    l.name(),
                    label_value(&c.name),
                    c.id
                );
            }
            // The service counts a claim a moment before the handler does:
            // never let the remainder go below zero.
            let _ = writeln!(
                out,
                "flashgrab_claims_total{{outcome=\"{}\"}} {}",
                l.name(),
                total.saturating_sub(attributed)
            );
        }
        family(out, "flashgrab_claim_duration_seconds", "histogram", "Claim latency in the handler, by outcome.");
        for l in ClaimLabel::ALL {
            let h = &self.claim_latency[l as usize];
            let mut cumulative = 0;
            for (i, b) in h.buckets.iter().enumerate() {
                cumulative += b.load(Ordering::Relaxed);
                let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "flashgrab_claim_duration_seconds_bucket{{outcome=\"{}\",le=\"{le}\"}} {cumulative}",
                    l.name()
                );
            }
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "flashgrab_claim_duration_seconds_sum{{outcome=\"{}\"}} {sum}", l.name());
            let _ = writeln!(out, "flashgrab_claim_duration_seconds_count{{outcome=\"{}\"}} {cumulative}", l.name());
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Counts every response by route and status (outermost layer, so 413,
/// 429 and 503 from the layers inside are counted too).
pub async fn record(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // The counters are looked up before the request runs: no copy of the
    // route string per request.
    let counters = s.http_metrics.route(req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str));
    let resp = next.run(req).await;
    HttpMetrics::count(&counters, resp.status().as_u16());
    resp
}

/// A Prometheus label value: backslash, quote and line break escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The whole exposition of this instance; `live` as for the claim family.
pub fn render(s: &AppState, live: &[(Arc<Campaign>, Arc<ClaimTally>)]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    s.http_metrics.render(&mut out, live);

    let c = &s.connections;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    family(&mut out, "flashgrab_http_connections_open", "gauge", "Client connections open now.");
    let _ = writeln!(out, "flashgrab_http_connections_open {}", load(&c.open));
    family(
        &mut out,
        "flashgrab_http_connections_total",
        "counter",
        "Client connections by outcome: accepted; refused (503 at FLASHGRAB_MAX_CONNECTIONS, all busy); \
         closed: evicted (at the limit, to make room), header_timeout, idle_timeout.",
    );
    for (outcome, n) in [
        ("accepted", load(&c.accepted)),
        ("refused", load(&c.refused)),
        ("evicted", load(&c.evicted)),
        ("header_timeout", load(&c.header_timeouts)),
        ("idle_timeout", load(&c.idle_timeouts)),
    ] {
        let _ = writeln!(out, "flashgrab_http_connections_total{{outcome=\"{outcome}\"}} {n}");
    }

    let limits = &s.protection.limits;
    family(&mut out, "flashgrab_rate_limited_total", "counter", "Requests refused with 429, by limit.");
    let refused = [
        ("ip", limits.ips.as_ref().map_or(0, |l| l.refused())),
        ("user", limits.users.as_ref().map_or(0, |l| l.refused())),
        ("global", limits.claims.as_ref().map_or(0, |l| l.refused())),
    ];
    for (limiter, n) in refused {
        let _ = writeln!(out, "flashgrab_rate_limited_total{{limiter=\"{limiter}\"}} {n}");
    }
    family(&mut out, "flashgrab_rate_limiter_keys", "gauge", "Keys held by each keyed rate limiter.");
    for (scope, n) in
        [("ip", limits.ips.as_ref().map_or(0, |l| l.len())), ("user", limits.users.as_ref().map_or(0, |l| l.len()))]
    {
        let _ = writeln!(out, "flashgrab_rate_limiter_keys{{scope=\"{scope}\"}} {n}");
    }
    family(
        &mut out,
        "flashgrab_rate_limiter_resets_total",
        "counter",
        "Keyed limiters restarted for holding too many keys.",
    );
    for (scope, n) in [
        ("ip", limits.ips.as_ref().map_or(0, |l| l.resets())),
        ("user", limits.users.as_ref().map_or(0, |l| l.resets())),
    ] {
        let _ = writeln!(out, "flashgrab_rate_limiter_resets_total{{scope=\"{scope}\"}} {n}");
    }
    let admission = &s.protection.admission;
    sample(
        &mut out,
        "flashgrab_shed_total",
        "counter",
        "Requests answered 503 because too many were in flight.",
        admission.shed(),
    );
    sample(
        &mut out,
        "flashgrab_in_flight_requests",
        "gauge",
        "Requests holding an admission slot now.",
        admission.in_flight(),
    );
    sample(&mut out, "flashgrab_in_flight_max", "gauge", "Admission slots (FLASHGRAB_MAX_IN_FLIGHT).", admission.max());
    let breaker = s.stock.breakers();
    sample(
        &mut out,
        "flashgrab_redis_breaker_state",
        "gauge",
        "Redis circuit breakers, the worst over the masters: 0 closed, 1 open, 2 half-open.",
        breaker.state() as u8,
    );
    sample(
        &mut out,
        "flashgrab_breaker_open",
        "gauge",
        "1 while a Redis circuit breaker (of any master) is not closed (open or half-open), else 0.",
        u8::from(breaker.state() as u8 != 0),
    );
    family(
        &mut out,
        "flashgrab_redis_master_breaker_state",
        "gauge",
        "Redis circuit breaker of each master (by address): 0 closed, 1 open, 2 half-open.",
    );
    for (master, state) in breaker.states() {
        let _ = writeln!(out, "flashgrab_redis_master_breaker_state{{master=\"{master}\"}} {}", state as u8);
    }
    sample(
        &mut out,
        "flashgrab_redis_reconnects_total",
        "counter",
        "Redis Cluster connections rebuilt from the seed nodes after lasting trouble.",
        s.stock.reconnects(),
    );
    let (calls, claims) = s.stock.claim_calls();
    sample(
        &mut out,
        "flashgrab_claim_script_calls_total",
        "counter",
        "Calls of the claim script (one per batch of claims of a shard).",
        calls,
    );
    sample(
        &mut out,
        "flashgrab_claim_script_claims_total",
        "counter",
        "Claims sent in those calls (divided by the calls: the mean batch size).",
        claims,
    );
    sample(
        &mut out,
        "flashgrab_redis_breaker_opened_total",
        "counter",
        "Times a Redis breaker (of any master) opened.",
        breaker.opened(),
    );
    sample(
        &mut out,
        "flashgrab_redis_breaker_rejected_total",
        "counter",
        "Redis calls refused at once by an open breaker.",
        breaker.rejected(),
    );

    render_pipeline(&s.metrics, &mut out);
    out
}

/// The claim pipeline's figures (relay and persist worker of this process).
pub fn render_pipeline(p: &PipelineMetrics, out: &mut String) {
    let get = PipelineMetrics::get;
    for (name, kind, help, v) in [
        ("flashgrab_relayed_total", "counter", "Claim records published to RabbitMQ and confirmed.", get(&p.relayed)),
        (
            "flashgrab_outbox_published_batches_total",
            "counter",
            "Messages confirmed by RabbitMQ.",
            get(&p.published_batches),
        ),
        (
            "flashgrab_outbox_reclaimed_total",
            "counter",
            "Outbox entries taken over from a dead relay.",
            get(&p.reclaimed),
        ),
        (
            "flashgrab_relay_unreplicated_total",
            "counter",
            "Outbox entries held back by the relay (replicated mode) because no replica acknowledged them, per pass.",
            get(&p.unreplicated),
        ),
        ("flashgrab_outbox_length", "gauge", "Entries in the outbox streams not yet confirmed.", get(&p.outbox_len)),
        (
            "flashgrab_persisted_total",
            "counter",
            "Rows written (or found written) by the persist worker.",
            get(&p.persisted),
        ),
        ("flashgrab_dead_lettered_total", "counter", "Messages sent to the dead-letter queue.", get(&p.dead_lettered)),
        (
            "flashgrab_pipeline_errors_total",
            "counter",
            "Backend errors of the relay and the worker (retried).",
            get(&p.errors),
        ),
        (
            "flashgrab_events_failed_total",
            "counter",
            "Claim event messages the events exchange refused or did not confirm (best effort: not retried).",
            get(&p.events_failed),
        ),
        (
            "flashgrab_holdings_indexed_total",
            "counter",
            "Users' holdings index writes by the relay (one per user per pass).",
            get(&p.indexed),
        ),
        (
            "flashgrab_holdings_index_failed_total",
            "counter",
            "Holdings index writes that failed (those grants are listed once persisted).",
            get(&p.index_failed),
        ),
    ] {
        sample(out, name, kind, help, v);
    }
    sample(
        out,
        "flashgrab_outbox_age_seconds",
        "gauge",
        "Age of the oldest outbox entry in the last relay pass.",
        get(&p.outbox_age_ms) as f64 / 1000.0,
    );
    sample(
        out,
        "flashgrab_persist_lag_seconds",
        "gauge",
        "Grant-to-commit lag of the newest persisted batch.",
        get(&p.persist_lag_ms) as f64 / 1000.0,
    );
}

/// What `flashgrab persist` serves on `FLASHGRAB_LISTEN`: `/healthz` and
/// the pipeline part of `/metrics`, so a worker running alone is scraped
/// like an instance.
pub fn worker_router(metrics: Arc<PipelineMetrics>) -> axum::Router {
    axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })).route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                let mut out = String::with_capacity(4096);
                render_pipeline(&metrics, &mut out);
                ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
            }
        }),
    )
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let live = live_campaigns(&s).await;
    // This instance's counters sit in its cached copy of the terms (only a
    // campaign claimed here is cached); the names come from MySQL.
    let tallies: Vec<_> =
        live.iter().filter_map(|c| s.campaigns.cached(&c.id).map(|cached| (c.clone(), cached.tally.clone()))).collect();
    let mut out = render(&s, &tallies);
    stock_remaining(&s, &live, &mut out).await;
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

/// Live campaigns labelled per scrape, at most (the stock gauge and the
/// `campaign` label of the claim counter): the label set stays bounded.
const STOCK_GAUGE_CAMPAIGNS: usize = 50;

/// The newest live campaigns (none when MySQL is down: a scrape must not
/// fail with the backends).
async fn live_campaigns(s: &AppState) -> Vec<Arc<Campaign>> {
    let now = chrono::Utc::now();
    let Ok(terms) = s.campaigns.list_terms().await else { return Vec::new() };
    terms
        .into_iter()
        .filter(|c| c.closed_at.is_none() && c.starts_at <= now && now < c.ends_at)
        .take(STOCK_GAUGE_CAMPAIGNS)
        .collect()
}

/// `flashgrab_stock_remaining{campaign_id}` of the live campaigns (read
/// from the shards at scrape time, so every instance reports the same
/// value: aggregate with max, not sum). Left out when a store is down: a
/// scrape must not fail with the backends.
async fn stock_remaining(s: &AppState, live: &[Arc<Campaign>], out: &mut String) {
    let reads = live.iter().map(|c| s.stock.shard_stats(c));
    let Ok(stats) = futures_util::future::try_join_all(reads).await else { return };
    family(
        out,
        "flashgrab_stock_remaining",
        "gauge",
        "Units left in a live campaign (all shards, in flight included).",
    );
    for (c, shards) in live.iter().zip(stats) {
        let remaining: u64 = shards.iter().map(|sh| sh.remaining).sum();
        let _ = writeln!(
            out,
            "flashgrab_stock_remaining{{campaign_id=\"{}\",campaign=\"{}\"}} {remaining}",
            c.id,
            label_value(&c.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_statuses_and_histograms_render() {
        let m = HttpMetrics::default();
        m.response("/v1/campaigns/{id}/claim", 201);
        m.response("/v1/campaigns/{id}/claim", 201);
        m.response("unmatched", 404);
        m.response("x", 42);
        m.claim(ClaimLabel::Granted, Duration::from_micros(700));
        m.claim(ClaimLabel::Granted, Duration::from_secs(20));
        let mut out = String::new();
        m.render(&mut out, &[]);
        assert!(out.contains("flashgrab_http_requests_total{route=\"/v1/campaigns/{id}/claim\",status=\"201\"} 2\n"));
        assert!(out.contains("flashgrab_http_requests_total{route=\"unmatched\",status=\"404\"} 1\n"));
        assert!(out.contains("flashgrab_claims_total{outcome=\"granted\"} 2\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"0.0005\"} 0\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"0.001\"} 1\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_count{outcome=\"granted\"} 2\n"));
        assert!(!out.contains("status=\"42\""));
    }

    #[test]
    fn live_campaigns_get_their_own_series_and_the_rest_stays_unlabelled() {
        let m = HttpMetrics::default();
        for _ in 0..5 {
            m.claim(ClaimLabel::Granted, Duration::from_micros(700));
        }
        m.claim(ClaimLabel::SoldOut, Duration::from_micros(10));
        let tally = Arc::new(ClaimTally::default());
        for _ in 0..3 {
            tally.count(ClaimLabel::Granted);
        }
        let c = Arc::new(crate::domain::change::tests_support::campaign("Double \"11\"\nnow"));
        let mut out = String::new();
        m.render(&mut out, &[(c.clone(), tally)]);
        let labelled = format!(
            "flashgrab_claims_total{{outcome=\"granted\",campaign=\"Double \\\"11\\\"\\nnow\",campaign_id=\"{}\"}} 3\n",
            c.id
        );
        assert!(out.contains(&labelled), "{out}");
        assert!(out.contains("flashgrab_claims_total{outcome=\"granted\"} 2\n"));
        assert!(out.contains("flashgrab_claims_total{outcome=\"sold_out\"} 1\n"));
        assert!(!out.contains("outcome=\"sold_out\",campaign="), "no series for an outcome the campaign never had");
    }
}
