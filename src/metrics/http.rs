//! The front end's counters (responses by route and status, claims by
//! outcome and their latency) and the collectors of everything an instance
//! reports about its front door: connections, rate limits, admission, the
//! Redis breakers, and the live campaigns read at scrape time.
//!
//! The counters are plain atomics in fixed arrays: the request path does
//! one relaxed add per figure, no map lookup once a route has been seen, no
//! lock and no allocation. prometheus-client's own `Family` would hash an
//! owned label set per request and its `Histogram` takes a mutex per
//! observation; its `Collector` reads ours at scrape time instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{counter, gauge};
use crate::domain::Campaign;
use crate::protect::Protection;
use crate::stock::StockStore;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One latency histogram (cumulative on export).
#[derive(Debug, Default)]
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

    /// `(upper bound, count)` per bucket, not cumulative (the encoder sums
    /// them), and the total.
    fn snapshot(&self) -> ([(f64, u64); BUCKETS.len() + 1], u64) {
        let mut out = [(f64::INFINITY, 0); BUCKETS.len() + 1];
        let mut total = 0;
        for (i, (slot, n)) in out.iter_mut().zip(&self.buckets).enumerate() {
            let n = n.load(Ordering::Relaxed);
            *slot = (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n);
            total += n;
        }
        (out, total)
    }
}

/// Responses of one route by status (100..=599, indexed from 100).
#[derive(Debug)]
pub struct RouteCounters {
    by_status: Box<[AtomicU64]>,
}

impl RouteCounters {
    fn new() -> Self {
        Self { by_status: (100..600).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Counts one response of this route.
    pub fn count(&self, status: u16) {
        if (100..600).contains(&status) {
            self.by_status[usize::from(status - 100)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The front end's counters of one instance.
#[derive(Debug)]
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
    /// The counters of a route template, made on first sight.
    pub fn route(&self, route: &str) -> Arc<RouteCounters> {
        if let Some(c) = self.routes.read().unwrap_or_else(|e| e.into_inner()).get(route) {
            return c.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.entry(route.into()).or_insert_with(|| Arc::new(RouteCounters::new())).clone()
    }

    pub fn response(&self, route: &str, status: u16) {
        self.route(route).count(status);
    }

    pub fn claim(&self, label: ClaimLabel, took: Duration) {
        let i = label as usize;
        self.claims[i].fetch_add(1, Ordering::Relaxed);
        self.claim_latency[i].observe(took);
    }

    /// Claims by outcome that reached the handler (all campaigns).
    pub fn claims(&self) -> [u64; ClaimLabel::ALL.len()] {
        std::array::from_fn(|i| self.claims[i].load(Ordering::Relaxed))
    }

    fn encode_requests(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut routes: Vec<(Box<str>, Arc<RouteCounters>)> = {
            let r = self.routes.read().unwrap_or_else(|e| e.into_inner());
            r.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut family = enc.encode_descriptor(
            "flashgrab_http_requests",
            "HTTP responses by route template and status.",
            None,
            MetricType::Counter,
        )?;
        for (route, c) in &routes {
            for (i, n) in c.by_status.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let labels = ([("route", &**route)], [("status", i + 100)]);
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    fn encode_latency(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = enc.encode_descriptor(
            "flashgrab_claim_duration_seconds",
            "Claim latency in the handler, by outcome.",
            None,
            MetricType::Histogram,
        )?;
        for l in ClaimLabel::ALL {
            let h = &self.claim_latency[l as usize];
            let (buckets, count) = h.snapshot();
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let labels = [("outcome", l.name())];
            family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

pub use crate::domain::tally::{ClaimLabel, ClaimTally};

/// What the front door did with connections, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub accepted: AtomicU64,
    /// Answered 503 at the limit (every open connection busy).
    pub refused: AtomicU64,
    /// Closed at the limit to make room (they were waiting or idle).
    pub evicted: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Open right now.
    pub open: AtomicU64,
}

/// What an instance reports about its front end, read at each scrape from
/// the parts that keep the figures (registered once per instance).
pub struct FrontCollector {
    pub http: Arc<HttpMetrics>,
    pub connections: Arc<ConnectionStats>,
    pub protection: Arc<Protection>,
    pub stock: StockStore,
}

impl std::fmt::Debug for FrontCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontCollector").finish_non_exhaustive()
    }
}

impl Collector for FrontCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.http.encode_requests(&mut enc)?;
        self.http.encode_latency(&mut enc)?;

        let c = &self.connections;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        gauge(&mut enc, "flashgrab_http_connections_open", "Client connections open now.", load(&c.open))?;
        labelled_counters(
            &mut enc,
            "flashgrab_http_connections",
            "Client connections by outcome: accepted; refused (503 at FLASHGRAB_MAX_CONNECTIONS, all busy); \
             closed: evicted (at the limit, to make room), header_timeout, idle_timeout.",
            "outcome",
            [
                ("accepted", load(&c.accepted)),
                ("refused", load(&c.refused)),
                ("evicted", load(&c.evicted)),
                ("header_timeout", load(&c.header_timeouts)),
                ("idle_timeout", load(&c.idle_timeouts)),
            ],
        )?;

        let limits = &self.protection.limits;
        labelled_counters(
            &mut enc,
            "flashgrab_rate_limited",
            "Requests refused with 429, by limit.",
            "limiter",
            [
                ("ip", limits.ips.as_ref().map_or(0, |l| l.refused())),
                ("user", limits.users.as_ref().map_or(0, |l| l.refused())),
                ("global", limits.claims.as_ref().map_or(0, |l| l.refused())),
            ],
        )?;
        let mut keys = enc.encode_descriptor(
            "flashgrab_rate_limiter_keys",
            "Keys held by each keyed rate limiter.",
            None,
            MetricType::Gauge,
        )?;
        for (scope, n) in
            [("ip", limits.ips.as_ref().map_or(0, |l| l.len())), ("user", limits.users.as_ref().map_or(0, |l| l.len()))]
        {
            ConstGauge::new(n as u64).encode(keys.encode_family(&[("scope", scope)])?)?;
        }
        labelled_counters(
            &mut enc,
            "flashgrab_rate_limiter_resets",
            "Keyed limiters restarted for holding too many keys.",
            "scope",
            [
                ("ip", limits.ips.as_ref().map_or(0, |l| l.resets())),
                ("user", limits.users.as_ref().map_or(0, |l| l.resets())),
            ],
        )?;
        let admission = &self.protection.admission;
        counter(
            &mut enc,
            "flashgrab_shed",
            "Requests answered 503 because too many were in flight.",
            admission.shed(),
        )?;
        gauge(
            &mut enc,
            "flashgrab_in_flight_requests",
            "Requests holding an admission slot now.",
            admission.in_flight() as u64,
        )?;
        gauge(
            &mut enc,
            "flashgrab_in_flight_max",
            "Admission slots (FLASHGRAB_MAX_IN_FLIGHT).",
            admission.max() as u64,
        )?;

        let breaker = self.stock.breakers();
        let worst = breaker.state() as u64;
        gauge(
            &mut enc,
            "flashgrab_redis_breaker_state",
            "Redis circuit breakers, the worst over the masters: 0 closed, 1 open, 2 half-open.",
            worst,
        )?;
        gauge(
            &mut enc,
            "flashgrab_breaker_open",
            "1 while a Redis circuit breaker (of any master) is not closed (open or half-open), else 0.",
            u64::from(worst != 0),
        )?;
        let mut masters = enc.encode_descriptor(
            "flashgrab_redis_master_breaker_state",
            "Redis circuit breaker of each master (by address): 0 closed, 1 open, 2 half-open.",
            None,
            MetricType::Gauge,
        )?;
        for (master, state) in breaker.states() {
            ConstGauge::new(state as u64).encode(masters.encode_family(&[("master", master.as_str())])?)?;
        }
        counter(
            &mut enc,
            "flashgrab_redis_reconnects",
            "Redis Cluster connections rebuilt from the seed nodes after lasting trouble.",
            self.stock.reconnects(),
        )?;
        let (calls, claims) = self.stock.claim_calls();
        counter(
            &mut enc,
            "flashgrab_claim_script_calls",
            "Calls of the claim script (one per batch of claims of a shard).",
            calls,
        )?;
        counter(
            &mut enc,
            "flashgrab_claim_script_claims",
            "Claims sent in those calls (divided by the calls: the mean batch size).",
            claims,
        )?;
        counter(
            &mut enc,
            "flashgrab_redis_breaker_opened",
            "Times a Redis breaker (of any master) opened.",
            breaker.opened(),
        )?;
        counter(
            &mut enc,
            "flashgrab_redis_breaker_rejected",
            "Redis calls refused at once by an open breaker.",
            breaker.rejected(),
        )
    }
}

fn labelled_counters<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: [(&str, u64); N],
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(n).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// A live campaign as one scrape sees it: this instance's tally of its
/// claims (none when it is not cached here) and the units left in it
/// (none when the shards could not be read).
pub struct LiveCampaign {
    pub campaign: Arc<Campaign>,
    pub tally: Option<Arc<ClaimTally>>,
    pub remaining: Option<u64>,
}

/// The families that need what only a scrape reads (the live campaigns,
/// from MySQL and the shards): built per scrape, with the claim counts of
/// the handler taken at the same moment.
pub struct ScrapeCollector {
    pub claims: [u64; ClaimLabel::ALL.len()],
    pub live: Vec<LiveCampaign>,
}

impl std::fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeCollector").field("live", &self.live.len()).finish_non_exhaustive()
    }
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let mut family = enc.encode_descriptor(
            "flashgrab_claims",
            "Claims that reached the claim handler, by outcome; by campaign for the live campaigns \
             (the series without a campaign label counts the rest: sum over the family for the total).",
            None,
            MetricType::Counter,
        )?;
        for l in ClaimLabel::ALL {
            let mut attributed = 0u64;
            for live in &self.live {
                let Some(n) = live.tally.as_ref().map(|t| t.get(l)).filter(|n| *n > 0) else { continue };
                attributed += n;
                let c = &live.campaign;
                let labels = [("outcome", l.name()), ("campaign", c.name.as_str()), ("campaign_id", c.id.as_str())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
            // The service counts a claim a moment before the handler does:
            // never let the remainder go below zero.
            let rest = self.claims[l as usize].saturating_sub(attributed);
            ConstCounter::new(rest).encode(family.encode_family(&[("outcome", l.name())])?)?;
        }
        // Left out whole when a store is down: a scrape must not fail with
        // the backends.
        if self.live.iter().any(|l| l.remaining.is_none()) {
            return Ok(());
        }
        let mut stock = enc.encode_descriptor(
            "flashgrab_stock_remaining",
            "Units left in a live campaign (all shards, in flight included).",
            None,
            MetricType::Gauge,
        )?;
        for live in &self.live {
            let c = &live.campaign;
            let labels = [("campaign_id", c.id.as_str()), ("campaign", c.name.as_str())];
            ConstGauge::new(live.remaining.unwrap_or(0)).encode(stock.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(collector: impl Collector) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[derive(Debug)]
    struct Requests(HttpMetrics);

    impl Collector for Requests {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            self.0.encode_requests(&mut enc)?;
            self.0.encode_latency(&mut enc)
        }
    }

    #[test]
    fn routes_statuses_and_histograms_render() {
        let m = HttpMetrics::default();
        m.response("/v1/campaigns/{id}/claim", 201);
        m.response("/v1/campaigns/{id}/claim", 201);
        m.response("unmatched", 404);
        m.response("x", 42);
        m.claim(ClaimLabel::Granted, Duration::from_micros(700));
        m.claim(ClaimLabel::Granted, Duration::from_secs(20));
        let out = encode(Requests(m));
        assert!(out.contains("# TYPE flashgrab_http_requests_total counter\n"), "{out}");
        assert!(out.contains("flashgrab_http_requests_total{route=\"/v1/campaigns/{id}/claim\",status=\"201\"} 2\n"));
        assert!(out.contains("flashgrab_http_requests_total{route=\"unmatched\",status=\"404\"} 1\n"));
        assert!(out.contains("# TYPE flashgrab_claim_duration_seconds histogram\n"), "{out}");
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"0.0005\"} 0\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"0.001\"} 1\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"10\"} 1\n"), "{out}");
        assert!(out.contains("flashgrab_claim_duration_seconds_bucket{outcome=\"granted\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("flashgrab_claim_duration_seconds_sum{outcome=\"granted\"} 20.0007\n"), "{out}");
        assert!(out.contains("flashgrab_claim_duration_seconds_count{outcome=\"granted\"} 2\n"));
        assert_eq!(out.matches("le=\"+Inf\"").count(), ClaimLabel::ALL.len(), "one +Inf bucket per outcome");
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
        let live = vec![LiveCampaign { campaign: c.clone(), tally: Some(tally), remaining: Some(7) }];
        let out = encode(ScrapeCollector { claims: m.claims(), live });
        let labelled = format!(
            "flashgrab_claims_total{{outcome=\"granted\",campaign=\"Double \\\"11\\\"\\nnow\",campaign_id=\"{}\"}} 3\n",
            c.id
        );
        assert!(out.contains(&labelled), "{out}");
        assert!(out.contains("flashgrab_claims_total{outcome=\"granted\"} 2\n"));
        assert!(out.contains("flashgrab_claims_total{outcome=\"sold_out\"} 1\n"));
        assert!(!out.contains("outcome=\"sold_out\",campaign="), "no series for an outcome the campaign never had");
        let stock =
            format!("flashgrab_stock_remaining{{campaign_id=\"{}\",campaign=\"Double \\\"11\\\"\\nnow\"}} 7\n", c.id);
        assert!(out.contains(&stock), "{out}");
    }

    #[test]
    fn the_stock_gauge_is_left_out_when_a_shard_read_failed() {
        let c = Arc::new(crate::domain::change::tests_support::campaign("c"));
        let live = vec![LiveCampaign { campaign: c, tally: None, remaining: None }];
        let out = encode(ScrapeCollector { claims: [0; ClaimLabel::ALL.len()], live });
        assert!(out.contains("flashgrab_claims_total{outcome=\"granted\"} 0\n"), "{out}");
        assert!(!out.contains("flashgrab_stock_remaining"), "{out}");
    }
}
