//! The HTTP front end (axum on hyper; the accept loop and connection bounds
//! are in `server`). Layer order, outermost first: request id (tower-http:
//! a malformed `x-request-id` dropped, a missing one made, the span every
//! log line of the request is in, the id copied to the response: see
//! `request_id`), metrics (every response counted by route and status), then `/v1`
//! protection (per-address rate limit, admission bound for all but claim:
//! see `protect`), then the 64 KiB body limit (413 before anything is
//! read), then routing; auth and the per-user rate limit are done by
//! extractors so each route states what it needs. Handlers extract, call a
//! service and map the outcome; no store is touched from here.

mod campaigns;
mod claims;
pub mod console;
mod coupons;
mod error;
mod extract;
mod live;
pub mod metrics;
pub mod openapi;
mod ops;
pub mod protect;
mod reports;
pub mod request_id;
pub mod server;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};

pub use error::ApiError;
pub use extract::parse_json;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::JwtKeys;
use crate::db::Db;
use crate::health::AmqpProbe;
use crate::service::{CampaignService, ClaimService, CouponService, LiveHub, ReportService};
use crate::stock::StockStore;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub campaigns: CampaignService,
    pub claims: ClaimService,
    pub coupons: CouponService,
    pub reports: ReportService,
    /// Producers of the event streams (`/live`, `/events`).
    pub live: LiveHub,
    pub admin_token: String,
    pub jwt: JwtKeys,
    pub stock: StockStore,
    pub db: Db,
    pub amqp: AmqpProbe,
    /// Counters of the outbox relay and persist worker of this process.
    pub metrics: std::sync::Arc<crate::metrics::PipelineMetrics>,
    /// Rate limits and the admission bound (shared with the claim service).
    pub protection: Arc<crate::protect::Protection>,
    /// Header naming the client address, set by a trusted proxy
    /// (`FLASHGRAB_TRUSTED_PROXY_HEADER`); `None`: the peer address.
    pub trusted_proxy_header: Option<String>,
    /// Responses by route and status, claim outcomes and latency.
    pub http_metrics: Arc<crate::metrics::HttpMetrics>,
    /// What `/metrics` exposes of this instance (`crate::metrics`): its own
    /// registry, no global one.
    pub registry: crate::metrics::Registry,
    /// What the front door did with connections (`server`).
    pub connections: Arc<server::ConnectionStats>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

/// RFC 3339 in UTC with millisecond precision and a `Z`
/// (`2026-12-01T23:17:41.351Z`), the one timestamp format of the API.
///
/// chrono's own formatter: a digit-by-digit writer (every 201 carries three
/// of these) gained nothing measurable (BENCHMARKS.md), so it was dropped.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Refuses a body over the limit before routing, so that even routes that
/// take no body answer 413. A declared length is checked as is; a body of
/// unknown length (chunked) is read up to the limit and handed on from
/// memory (at most 64 KiB, so nothing reads a huge upload).
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let declared = req.headers().get(CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match declared {
        Some(Some(n)) if n > BODY_LIMIT as u64 => ApiError::PayloadTooLarge.into_response(),
        Some(_) => next.run(req).await,
        None if req.headers().contains_key(axum::http::header::TRANSFER_ENCODING) => {
            let (parts, body) = req.into_parts();
            match axum::body::to_bytes(body, BODY_LIMIT).await {
                Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
                Err(_) => ApiError::PayloadTooLarge.into_response(),
            }
        }
        None => next.run(req).await,
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::metrics))
        .route("/console", get(console::index))
        .route("/console/", get(console::index_slash))
        .route("/console/app.js", get(console::app_js))
        .route("/console/app.css", get(console::app_css))
        .route("/v1/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/v1/campaigns/{id}", get(campaigns::get_one).patch(campaigns::patch))
        .route("/v1/campaigns/{id}/live", get(live::live))
        .route("/v1/campaigns/{id}/events", get(live::events))
        .route("/v1/campaigns/{id}/claims.csv", get(campaigns::claims_csv))
        .route("/v1/campaigns/{id}/close", post(campaigns::close))
        .route("/v1/campaigns/{id}/stats", get(campaigns::stats))
        .route("/v1/campaigns/{id}/report", get(reports::report))
        .route("/v1/campaigns/{id}/claim", post(claims::claim))
        .route("/v1/me/coupons", get(claims::my_coupons))
        .route("/v1/me/coupons/{coupon_id}", get(claims::my_coupon))
        .route("/v1/coupons/{coupon_id}/redeem", post(coupons::redeem))
        .route("/v1/coupons/{coupon_id}/release", post(coupons::release))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_large_bodies))
        .layer(middleware::from_fn_with_state(state.clone(), protect::guard))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::record))
        .layer(
            tower::ServiceBuilder::new()
                .map_request(request_id::drop_malformed)
                .layer(SetRequestIdLayer::new(request_id::X_REQUEST_ID, request_id::MakeUlid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_id::span)
                        .on_request(())
                        .on_response(())
                        .on_body_chunk(())
                        .on_eos(())
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID)),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    #[test]
    fn rfc3339_is_utc_to_the_millisecond_with_a_z() {
        assert_eq!(super::rfc3339(Utc.timestamp_millis_opt(0).unwrap()), "1970-01-01T00:00:00.000Z");
        // Sub-millisecond parts are cut, not rounded.
        assert_eq!(super::rfc3339(Utc.timestamp_nanos(1_796_012_511_009_999_999)), "2026-11-30T04:21:51.009Z");
    }
}
