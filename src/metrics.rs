//! The figures of one process and their Prometheus exposition.
//!
//! The counters are plain atomics kept where the work is counted (the
//! front end's in `http`, the claim pipeline's in `pipeline`, the limits',
//! breakers' and connections' in their own parts); prometheus-client reads
//! them through collectors registered in a [`Registry`] per instance (no
//! global recorder: every instance, and every test instance in one process,
//! has its own) and writes the Prometheus text format (0.0.4) at scrape
//! time. What is exported:
//!
//! - `flashgrab_http_requests_total{route,status}`: every response, by
//!   route template (`/v1/campaigns/{id}/claim`; `unmatched` for unknown
//!   paths, so junk URLs cannot blow up the label set);
//! - `flashgrab_claims_total{outcome}` and the
//!   `flashgrab_claim_duration_seconds{outcome}` histogram: claims that
//!   reached the claim handler (a per-user 429 is refused before it);
//! - `flashgrab_rate_limited_total{limiter}`, `flashgrab_rate_limiter_keys`,
//!   `flashgrab_shed_total`, `flashgrab_in_flight_requests`, the breakers'
//!   state and counters, the connections;
//! - the claim pipeline: outbox relay and persist worker figures.

pub mod http;
pub mod pipeline;

use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

pub use http::{ClaimLabel, ClaimTally, HttpMetrics};
pub use pipeline::PipelineMetrics;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry of a serving instance: its front end and its pipeline.
pub fn instance_registry(front: http::FrontCollector, pipeline: Arc<PipelineMetrics>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(front));
    registry.register_collector(Box::new(pipeline::PipelineCollector(pipeline)));
    registry
}

/// The registry of `flashgrab persist` on its own: the pipeline only.
pub fn pipeline_registry(pipeline: Arc<PipelineMetrics>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(pipeline::PipelineCollector(pipeline)));
    registry
}

/// The exposition of `registries`, one after the other (their families
/// must not overlap).
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for r in registries {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
    }
    out
}

/// One unlabelled counter; `name` without `_total` (the encoder adds it).
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One unlabelled gauge.
fn gauge<N: EncodeGaugeValue>(enc: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}
