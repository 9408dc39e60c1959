//! `GET /metrics` and the layer that counts every response; the counters
//! and their exposition are `crate::metrics`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::domain::Campaign;
use crate::metrics::http::{LiveCampaign, ScrapeCollector};
use crate::metrics::{PipelineMetrics, Registry};

/// Counts every response by route and status (outermost layer, so 413,
/// 429 and 503 from the layers inside are counted too).
pub async fn record(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // The counters are looked up before the request runs: no copy of the
    // route string per request.
    let counters = s.http_metrics.route(req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str));
    let resp = next.run(req).await;
    counters.count(resp.status().as_u16());
    resp
}

/// What `flashgrab persist` serves on `FLASHGRAB_LISTEN`: `/healthz` and
/// the pipeline part of `/metrics`, so a worker running alone is scraped
/// like an instance.
pub fn worker_router(metrics: Arc<PipelineMetrics>) -> axum::Router {
    let registry = Arc::new(crate::metrics::pipeline_registry(metrics));
    axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })).route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::encode(&[&registry])) }
        }),
    )
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let live = live_campaigns(&s).await;
    // The live campaigns' families need what only a scrape reads: built
    // per scrape, beside the instance's registry.
    let mut scrape = Registry::default();
    scrape.register_collector(Box::new(ScrapeCollector { claims: s.http_metrics.claims(), live }));
    let out = crate::metrics::encode(&[&s.registry, &scrape]);
    ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out)
}

/// Live campaigns labelled per scrape, at most (the stock gauge and the
/// `campaign` label of the claim counter): the label set stays bounded.
const STOCK_GAUGE_CAMPAIGNS: usize = 50;

/// The newest live campaigns (none when MySQL is down: a scrape must not
/// fail with the backends), each with this instance's counters of it (they
/// sit in its cached copy of the terms: only a campaign claimed here is
/// cached; the names come from MySQL) and its units left, read from the
/// shards at scrape time, so every instance reports the same value
/// (aggregate with max, not sum); none when a store is down.
async fn live_campaigns(s: &AppState) -> Vec<LiveCampaign> {
    let now = chrono::Utc::now();
    let Ok(terms) = s.campaigns.list_terms().await else { return Vec::new() };
    let live: Vec<Arc<Campaign>> = terms
        .into_iter()
        .filter(|c| c.closed_at.is_none() && c.starts_at <= now && now < c.ends_at)
        .take(STOCK_GAUGE_CAMPAIGNS)
        .collect();
    let reads = live.iter().map(|c| s.stock.shard_stats(c));
    let remaining: Vec<Option<u64>> = match futures_util::future::try_join_all(reads).await {
        Ok(stats) => stats.iter().map(|shards| Some(shards.iter().map(|sh| sh.remaining).sum())).collect(),
        Err(_) => vec![None; live.len()],
    };
    live.into_iter()
        .zip(remaining)
        .map(|(campaign, remaining)| LiveCampaign {
            tally: s.campaigns.cached(&campaign.id).map(|cached| cached.tally.clone()),
            campaign,
            remaining,
        })
        .collect()
}
