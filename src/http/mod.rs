//! The HTTP front end (axum on hyper). Layer order, outermost first: the
//! 64 KiB body limit (413 before anything is read), then routing; auth is
//! done by extractors so each route states what it needs. Handlers extract,
//! call a service and map the outcome; no store is touched from here.

mod campaigns;
mod claims;
mod error;
mod extract;
mod ops;

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

use crate::auth::JwtKeys;
use crate::db::Db;
use crate::health::AmqpProbe;
use crate::service::{CampaignService, ClaimService};
use crate::stock::StockStore;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub campaigns: CampaignService,
    pub claims: ClaimService,
    pub admin_token: String,
    pub jwt: JwtKeys,
    pub stock: StockStore,
    pub db: Db,
    pub amqp: AmqpProbe,
    /// Counters of the outbox relay and persist worker of this process.
    pub metrics: std::sync::Arc<crate::metrics::PipelineMetrics>,
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

/// RFC 3339 in UTC with millisecond precision and a `Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Refuses a declared body over the limit before routing, so that even
/// routes that take no body answer 413 (and nothing reads a huge upload).
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let too_big = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > BODY_LIMIT as u64);
    if too_big { ApiError::PayloadTooLarge.into_response() } else { next.run(req).await }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/v1/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/v1/campaigns/{id}", get(campaigns::get_one))
        .route("/v1/campaigns/{id}/close", post(campaigns::close))
        .route("/v1/campaigns/{id}/stats", get(campaigns::stats))
        .route("/v1/campaigns/{id}/claim", post(claims::claim))
        .route("/v1/me/coupons", get(claims::my_coupons))
        .route("/v1/me/coupons/{coupon_id}", get(claims::my_coupon))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_large_bodies))
        .with_state(state)
}
