//! The HTTP front end (axum on hyper; the accept loop and connection bounds
//! are in `server`). Before the router, the accept loop gives each request its
//! id (a malformed `x-request-id` replaced, a missing one made), the log
//! context every line of the request carries, and the id on the response
//! (see `request_id`). Layer order, outermost first: metrics (every response counted by route and status), then `/v1`
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
use chrono::{DateTime, SecondsFormat, Utc};

pub use error::ApiError;
pub use extract::parse_json;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// Every route with its documentation: the handlers' `#[utoipa::path]`
/// give the paths of both the router and the document, so neither can
/// list a route the other lacks (`routes!` takes only annotated handlers;
/// the test below catches a route added around it). Startup only: the
/// requests are routed by the plain axum router this yields.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(metrics::metrics))
        .routes(routes!(console::index))
        .routes(routes!(console::index_slash))
        .routes(routes!(console::app_js))
        .routes(routes!(console::app_css))
        .routes(routes!(campaigns::create, campaigns::list))
        .routes(routes!(campaigns::get_one, campaigns::patch))
        .routes(routes!(live::live))
        .routes(routes!(live::events))
        .routes(routes!(campaigns::claims_csv))
        .routes(routes!(campaigns::close))
        .routes(routes!(campaigns::stats))
        .routes(routes!(reports::report))
        .routes(routes!(claims::claim))
        .routes(routes!(claims::my_coupons))
        .routes(routes!(claims::my_coupon))
        .routes(routes!(coupons::redeem))
        .routes(routes!(coupons::release))
}

/// The served OpenAPI document, built per call (it is small and rarely
/// fetched).
pub fn document() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// The routes, the fallbacks for what none of them match, no layer.
fn routes() -> Router<AppState> {
    let (routes, _) = documented().split_for_parts();
    routes
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

pub fn router(state: AppState) -> Router {
    routes()
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_large_bodies))
        .layer(middleware::from_fn_with_state(state.clone(), protect::guard))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::record))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{TimeZone, Utc};

    /// Method and path of every route of `routes()`, read from the
    /// router's `Debug` text: axum lists its routes nowhere else. The
    /// text is `PathRouter { routes: {RouteId(n): MethodRouter(MethodRouter
    /// { get: BoxedHandler, head: None, ... }), ...}, node: Node { paths:
    /// {RouteId(n): "/path", ...} } }`; should it change, the count check
    /// below fails rather than the test passing on nothing.
    fn router_routes() -> BTreeSet<(String, String)> {
        let text = format!("{:?}", super::routes());
        let (paths_part, _fallbacks) = text.split_once("fallback_router:").expect("a path router, then the fallbacks");
        let (endpoints, node) = paths_part.split_once("node: Node").expect("the routes, then their paths");
        let path_of = |id: &str| -> String {
            let at = node.find(&format!("RouteId({id}): \"")).unwrap_or_else(|| panic!("no path for RouteId({id})"));
            let rest = &node[at..];
            let start = rest.find('"').unwrap() + 1;
            let len = rest[start..].find('"').unwrap();
            rest[start..start + len].to_owned()
        };
        let mut routes = BTreeSet::new();
        let mut endpoint_count = 0;
        for chunk in endpoints.split("RouteId(").skip(1) {
            let (id, rest) = chunk.split_once(')').unwrap();
            let methods = rest.split_once("MethodRouter {").expect("a method router per route").1;
            let methods = methods.split_once("fallback:").expect("the methods, then the fallback").0;
            endpoint_count += 1;
            for field in methods.split(',').filter(|f| !f.trim().is_empty()) {
                let (method, endpoint) = field.split_once(':').expect("method: endpoint");
                if endpoint.trim() != "None" {
                    routes.insert((method.trim().to_uppercase(), path_of(id)));
                }
            }
        }
        assert_eq!(node.matches("RouteId(").count(), endpoint_count, "one path per route in {text}");
        assert!(endpoint_count >= 20, "too few routes read from {text}");
        routes
    }

    #[test]
    fn the_document_lists_every_route_of_the_router() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().unwrap().keys().map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let routed = router_routes();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        assert!(undocumented.is_empty(), "routes the document lacks: {undocumented:?}");
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(unrouted.is_empty(), "documented routes the router lacks: {unrouted:?}");
    }

    #[test]
    fn rfc3339_is_utc_to_the_millisecond_with_a_z() {
        assert_eq!(super::rfc3339(Utc.timestamp_millis_opt(0).unwrap()), "1970-01-01T00:00:00.000Z");
        // Sub-millisecond parts are cut, not rounded.
        assert_eq!(super::rfc3339(Utc.timestamp_nanos(1_796_012_511_009_999_999)), "2026-11-30T04:21:51.009Z");
    }
}
