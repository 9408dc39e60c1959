//! Counters of the claim pipeline (outbox -> RabbitMQ -> MySQL), shared by
//! the relay, the persist worker and whoever reports them: plain atomics
//! that the relay and the worker bump in passing, read by the collector at
//! scrape time (`flashgrab persist` alone serves these and nothing else).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{counter, gauge};

#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Claim records published to RabbitMQ and confirmed by it.
    pub relayed: AtomicU64,
    /// Messages (batches) confirmed by RabbitMQ.
    pub published_batches: AtomicU64,
    /// Entries taken over from a dead relay (XAUTOCLAIM).
    pub reclaimed: AtomicU64,
    /// `replicated` mode: outbox entries the relay read but held back
    /// because no replica acknowledged them (counted once per pass that
    /// held them; they are shipped once a replica has them).
    pub unreplicated: AtomicU64,
    /// Entries in all outbox streams (not yet confirmed by RabbitMQ), as of
    /// the last reclaim pass (every second).
    pub outbox_len: AtomicU64,
    /// Age of the oldest outbox entry seen in the last relay pass, ms.
    pub outbox_age_ms: AtomicU64,
    /// Rows written (or found already written) by the persist worker.
    pub persisted: AtomicU64,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Grant-to-commit lag of the newest persisted batch: max over its rows, ms.
    pub persist_lag_ms: AtomicU64,
    /// Backend errors seen by the relay and the worker (each retried).
    pub errors: AtomicU64,
    /// Claim event messages (`<prefix>.events`) nacked, unconfirmed in
    /// time, or not sent; events are best effort and never retried.
    pub events_failed: AtomicU64,
    /// Users' holdings index writes the relay made (one per user per pass;
    /// `stock::holdings`).
    pub indexed: AtomicU64,
    /// Holdings index writes that failed: those grants are shipped anyway
    /// and listed once persisted (`outbox::relay`).
    pub index_failed: AtomicU64,
}

impl PipelineMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

/// The pipeline's families, read from the counters at each scrape.
#[derive(Debug)]
pub struct PipelineCollector(pub Arc<PipelineMetrics>);

impl Collector for PipelineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let p = &self.0;
        let get = PipelineMetrics::get;
        for (name, help, v) in [
            ("flashgrab_relayed", "Claim records published to RabbitMQ and confirmed.", get(&p.relayed)),
            ("flashgrab_outbox_published_batches", "Messages confirmed by RabbitMQ.", get(&p.published_batches)),
            ("flashgrab_outbox_reclaimed", "Outbox entries taken over from a dead relay.", get(&p.reclaimed)),
            (
                "flashgrab_relay_unreplicated",
                "Outbox entries held back by the relay (replicated mode) because no replica acknowledged them, per pass.",
                get(&p.unreplicated),
            ),
        ] {
            counter(&mut enc, name, help, v)?;
        }
        gauge(
            &mut enc,
            "flashgrab_outbox_length",
            "Entries in the outbox streams not yet confirmed.",
            get(&p.outbox_len),
        )?;
        for (name, help, v) in [
            ("flashgrab_persisted", "Rows written (or found written) by the persist worker.", get(&p.persisted)),
            ("flashgrab_dead_lettered", "Messages sent to the dead-letter queue.", get(&p.dead_lettered)),
            ("flashgrab_pipeline_errors", "Backend errors of the relay and the worker (retried).", get(&p.errors)),
            (
                "flashgrab_events_failed",
                "Claim event messages the events exchange refused or did not confirm (best effort: not retried).",
                get(&p.events_failed),
            ),
            (
                "flashgrab_holdings_indexed",
                "Users' holdings index writes by the relay (one per user per pass).",
                get(&p.indexed),
            ),
            (
                "flashgrab_holdings_index_failed",
                "Holdings index writes that failed (those grants are listed once persisted).",
                get(&p.index_failed),
            ),
        ] {
            counter(&mut enc, name, help, v)?;
        }
        gauge(
            &mut enc,
            "flashgrab_outbox_age_seconds",
            "Age of the oldest outbox entry in the last relay pass.",
            get(&p.outbox_age_ms) as f64 / 1000.0,
        )?;
        gauge(
            &mut enc,
            "flashgrab_persist_lag_seconds",
            "Grant-to-commit lag of the newest persisted batch.",
            get(&p.persist_lag_ms) as f64 / 1000.0,
        )
    }
}
