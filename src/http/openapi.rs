//! `GET /openapi.json`: the contract of API.md as OpenAPI 3, generated from
//! the code with utoipa.
//!
//! Request bodies are the very types the handlers deserialize (their bounds
//! annotated next to the fields); the terms, discount and status enums are
//! the domain's own types. Responses are built with `json!` in the handlers
//! (one place per shape), so their shapes are declared here as schema-only
//! structs; `scripts/test` runs schemathesis against the live service to
//! check every response against this document, so the two cannot drift
//! apart unnoticed. The path operations are declared on bodiless functions
//! for the same reason: one file lists the whole contract.

#![allow(dead_code)]

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::domain::campaign::{
    AppliesTo, AppliesToRequest, CampaignStatus, CouponRequest, CouponTerms, CreateCampaignRequest, Discount,
    DiscountRequest,
};
use crate::domain::change::PatchCampaignRequest;
use crate::domain::order::{OrderLineRequest, RedeemRequest, ReleaseRequest};
use crate::service::claims::CouponStatus;

/// Every error: `{"error": code, "message": text, ...details}`.
#[derive(ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Machine-readable code (clients switch on this).
    error: String,
    message: String,
    /// `invalid_request`: the first offending field.
    field: Option<String>,
    /// `not_started`.
    #[schema(format = DateTime)]
    starts_at: Option<String>,
    /// `already_claimed`.
    coupon_id: Option<String>,
    /// `limit_reached`.
    coupon_ids: Option<Vec<String>>,
    /// `already_redeemed`: the order the coupon is redeemed on.
    order_id: Option<String>,
    /// `not_yet_valid`.
    #[schema(format = DateTime)]
    valid_from: Option<String>,
    /// `not_applicable`: `min_spend` or `no_eligible_items`; `invalid_change`:
    /// `ended`, `ends_at_earlier`, `ends_at_out_of_range`, `below_claimed`,
    /// `stock_decrease`.
    reason: Option<String>,
}

#[derive(ToSchema)]
pub struct Campaign {
    id: String,
    name: String,
    status: CampaignStatus,
    total_stock: u64,
    per_user_limit: u32,
    #[schema(format = DateTime)]
    starts_at: String,
    #[schema(format = DateTime)]
    ends_at: String,
    shards: u32,
    coupon: CouponTerms,
    #[schema(format = DateTime)]
    created_at: String,
    /// Set once closed.
    #[schema(format = DateTime)]
    closed_at: Option<String>,
}

/// One page, newest first.
#[derive(ToSchema)]
pub struct CampaignList {
    campaigns: Vec<Campaign>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `event: stats` of `GET /v1/campaigns/{id}/live`: the stats body plus
/// the moment it was read.
#[derive(ToSchema)]
pub struct LiveStats {
    campaign_id: String,
    name: String,
    status: CampaignStatus,
    total_stock: u64,
    remaining: u64,
    claimed: u64,
    persisted: u64,
    redeemed: u64,
    discount_total_cents: i64,
    shards: Vec<ShardStats>,
    #[schema(format = DateTime)]
    at: String,
    /// Claims of the campaign that reached this instance so far (any outcome).
    attempts_here: u64,
}

/// `event: status` of `GET /v1/campaigns/{id}/events`.
#[derive(ToSchema)]
pub struct StatusEvent {
    status: CampaignStatus,
    /// Units left, rounded down to two significant digits (exact below 100;
    /// 0 only when none is left).
    remaining_approx: u64,
}

#[derive(ToSchema)]
pub struct ShardStats {
    shard: u32,
    remaining: u64,
    claimed: u64,
    /// Units moving between shards right now (journaled transfer).
    in_flight: u64,
}

/// `remaining + claimed == total_stock` when read quietly.
#[derive(ToSchema)]
pub struct CampaignStats {
    campaign_id: String,
    status: CampaignStatus,
    total_stock: u64,
    remaining: u64,
    claimed: u64,
    /// Rows in the database; converges to `claimed`.
    persisted: u64,
    redeemed: u64,
    discount_total_cents: i64,
    shards: Vec<ShardStats>,
}

#[derive(ToSchema)]
pub struct Coupon {
    id: String,
    campaign_id: String,
    user_id: String,
    status: CouponStatus,
    #[schema(format = DateTime)]
    claimed_at: String,
    #[schema(format = DateTime)]
    valid_from: String,
    #[schema(format = DateTime)]
    valid_until: String,
    discount: Discount,
    min_spend_cents: i64,
    applies_to: AppliesTo,
    /// Once redeemed.
    #[schema(format = DateTime)]
    redeemed_at: Option<String>,
    order_id: Option<String>,
    discount_cents: Option<i64>,
}

#[derive(ToSchema)]
pub struct CouponList {
    coupons: Vec<Coupon>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct Redemption {
    coupon_id: String,
    order_id: String,
    discount_cents: i64,
    /// Always `redeemed`.
    status: String,
    #[schema(format = DateTime)]
    redeemed_at: String,
}

#[derive(ToSchema)]
pub struct MinuteClaims {
    #[schema(format = DateTime)]
    minute: String,
    claims: u64,
}

#[derive(ToSchema)]
pub struct SecondClaims {
    #[schema(format = DateTime)]
    second: String,
    claims: u64,
}

#[derive(ToSchema)]
pub struct TopEntry {
    id: String,
    /// Redeemed coupons whose order had it (among the lines the coupon applied to).
    redemptions: u64,
    line_cents: i64,
}

/// What marketing reads after a drop.
#[derive(ToSchema)]
pub struct CampaignReport {
    campaign_id: String,
    name: String,
    status: CampaignStatus,
    #[schema(format = DateTime)]
    starts_at: String,
    #[schema(format = DateTime)]
    ends_at: String,
    total_stock: u64,
    remaining: u64,
    claimed: u64,
    persisted: u64,
    #[schema(format = DateTime)]
    first_claim_at: Option<String>,
    #[schema(format = DateTime)]
    last_claim_at: Option<String>,
    /// From `starts_at` to the last claim, once nothing remains.
    sold_out_after_ms: Option<i64>,
    /// Persisted claims per minute.
    claims_per_minute: Vec<MinuteClaims>,
    /// The same per second, for drops whose claims span at most an hour
    /// (empty otherwise).
    claims_per_second: Vec<SecondClaims>,
    redeemed: u64,
    /// `redeemed / claimed`.
    redemption_rate: f64,
    discount_total_cents: i64,
    top_products: Vec<TopEntry>,
    top_categories: Vec<TopEntry>,
}

/// Each component: `ok` or what failed.
#[derive(ToSchema)]
pub struct Readiness {
    redis: String,
    rabbitmq: String,
    mysql: String,
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process runs", body = String, content_type = "text/plain")))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "every backend answers", body = Readiness),
    (status = 503, description = "a backend is down (marked)", body = Readiness)))]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document (OpenAPI 3)", content_type = "application/json")))]
fn openapi_doc() {}

#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", security(("admin_token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1..=64 chars: the same key with the same body answers the campaign made the first time (200); with another body 409 `idempotency_conflict`")),
    request_body = CreateCampaignRequest,
    responses(
        (status = 201, description = "created", body = Campaign),
        (status = 200, description = "made before by a request with this Idempotency-Key and this body", body = Campaign),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn create_campaign() {}

#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", security(("admin_token" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "page size, default 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, description = "newest first, one page", body = CampaignList),
        (status = 400, description = "`invalid_request` (`limit`, `cursor`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn list_campaigns() {}

#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "the campaign", body = Campaign),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn get_campaign() {}

#[utoipa::path(patch, path = "/v1/campaigns/{id}", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    request_body = PatchCampaignRequest,
    responses(
        (status = 200, description = "changed (a top-up is spread over the shards; remaining + claimed == total_stock at rest)", body = Campaign),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_change` with `reason`: `ended`, `ends_at_earlier`, `ends_at_out_of_range`, `below_claimed`, `stock_decrease`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn patch_campaign() {}

#[utoipa::path(get, path = "/v1/campaigns/{id}/live", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: stats`, `data:` a LiveStats object, once a second", body = LiveStats, content_type = "text/event-stream"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable` (also: too many campaigns watched on this instance)", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn campaign_live() {}

#[utoipa::path(get, path = "/v1/campaigns/{id}/events", tag = "claims", security(("user_jwt" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: status`, `data:` a StatusEvent, at once and on every change (status, or the rounded stock; at most 4 a second)", body = StatusEvent, content_type = "text/event-stream"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn campaign_events() {}

#[utoipa::path(get, path = "/v1/campaigns/{id}/claims.csv", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "one row per persisted claim, streamed: `coupon_id,user_id,claimed_at,status,order_id,redeemed_at,discount_cents` (status `claimed`, `redeemed` or `expired`)", body = String, content_type = "text/csv"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn claims_csv() {}

#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "the marketing console (HTML; reads everything through the admin API with the token the user enters; CSP default-src 'self')", body = String, content_type = "text/html")))]
fn console() {}

#[utoipa::path(post, path = "/v1/campaigns/{id}/close", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "ended now (idempotent)", body = Campaign),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn close_campaign() {}

#[utoipa::path(get, path = "/v1/campaigns/{id}/stats", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "live counts", body = CampaignStats),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn campaign_stats() {}

#[utoipa::path(get, path = "/v1/campaigns/{id}/report", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "claims over time, time to sell out, redemptions, discount, top products and categories", body = CampaignReport),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn campaign_report() {}

#[utoipa::path(post, path = "/v1/campaigns/{id}/claim", tag = "claims", security(("user_jwt" = [])),
    params(
        ("id" = String, Path, description = "campaign id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1..=64 chars: a retry with the same key returns the same coupon with 200")),
    responses(
        (status = 201, description = "granted", body = Coupon),
        (status = 200, description = "the coupon of an earlier claim with the same Idempotency-Key", body = Coupon),
        (status = 400, description = "`invalid_request` (bad Idempotency-Key)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 409, description = "`not_started` (`starts_at`), `already_claimed` (`coupon_id`), `limit_reached` (`coupon_ids`)", body = ErrorBody),
        (status = 410, description = "`sold_out`, `ended`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn claim() {}

#[utoipa::path(get, path = "/v1/me/coupons", tag = "coupons", security(("user_jwt" = [])),
    params(
        ("campaign_id" = Option<String>, Query, description = "only this campaign"),
        ("status" = Option<CouponStatus>, Query, description = "only this status"),
        ("limit" = Option<u32>, Query, description = "page size, 1..=1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before (opaque)")),
    responses(
        (status = 200, description = "one page of the user's coupons, newest first, including claims not yet persisted (listed once relayed, typically tens of ms after the 201; at once with `campaign_id`); `next_cursor` for the next page", body = CouponList),
        (status = 400, description = "`invalid_request` (`status`, `limit`, `cursor`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn my_coupons() {}

#[utoipa::path(get, path = "/v1/me/coupons/{coupon_id}", tag = "coupons", security(("user_jwt" = [])),
    params(("coupon_id" = String, Path, description = "coupon id")),
    responses(
        (status = 200, description = "the coupon", body = Coupon),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`coupon_not_found` (also another user's)", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn my_coupon() {}

#[utoipa::path(post, path = "/v1/coupons/{coupon_id}/redeem", tag = "coupons", security(("user_jwt" = [])),
    params(("coupon_id" = String, Path, description = "coupon id")),
    request_body = RedeemRequest,
    responses(
        (status = 200, description = "redeemed (again the same body for the same order_id)", body = Redemption),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`coupon_not_found` (also another user's)", body = ErrorBody),
        (status = 409, description = "`already_redeemed` (`order_id`), `not_yet_valid` (`valid_from`)", body = ErrorBody),
        (status = 410, description = "`expired`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`not_applicable` (`reason`: `min_spend` or `no_eligible_items`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn redeem() {}

#[utoipa::path(post, path = "/v1/coupons/{coupon_id}/release", tag = "coupons", security(("user_jwt" = [])),
    params(("coupon_id" = String, Path, description = "coupon id")),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "the coupon, back to `claimed` if it was redeemed by this order (idempotent)", body = Coupon),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`coupon_not_found`", body = ErrorBody),
        (status = 409, description = "`not_redeemed_by_order`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`unavailable`", body = ErrorBody, headers(("Retry-After" = u64)))))]
fn release() {}

/// The two bearer schemes of API.md.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some("the admin token from configuration (FLASHGRAB_ADMIN_TOKEN)".into());
        components.add_security_scheme("admin_token", SecurityScheme::Http(admin));
        let mut user = Http::new(HttpAuthScheme::Bearer);
        user.bearer_format = Some("JWT".into());
        user.description = Some("HS256 JWT signed with FLASHGRAB_USER_JWT_SECRET; `sub` is the user id".into());
        components.add_security_scheme("user_jwt", SecurityScheme::Http(user));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "flashgrab", description = "Timed coupon drops: campaigns, claims, redemption (API.md v1)."),
    paths(
        healthz, readyz, metrics, openapi_doc, console, create_campaign, list_campaigns, get_campaign,
        patch_campaign, close_campaign, campaign_stats, campaign_report, campaign_live, claims_csv, claim,
        campaign_events, my_coupons, my_coupon, redeem, release
    ),
    components(schemas(
        ErrorBody, Campaign, CampaignList, CampaignStats, ShardStats, Coupon, CouponList, Redemption,
        CampaignReport, MinuteClaims, SecondClaims, TopEntry, Readiness, CreateCampaignRequest, CouponRequest,
        PatchCampaignRequest, LiveStats, StatusEvent,
        DiscountRequest, AppliesToRequest, RedeemRequest, OrderLineRequest, ReleaseRequest, Discount,
        AppliesTo, CouponTerms, CampaignStatus, CouponStatus
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "campaigns", description = "marketing (admin token)"),
        (name = "claims", description = "the app (user JWT)"),
        (name = "coupons", description = "the app (user JWT)"),
        (name = "console", description = "the marketing console (its data needs the admin token)"),
        (name = "operations", description = "no auth")
    )
)]
pub struct ApiDoc;

/// The document, built once per call (it is small and rarely fetched).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
