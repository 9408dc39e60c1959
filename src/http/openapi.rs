//! `GET /openapi.json`: the contract of API.md as OpenAPI 3, generated from
//! the code with utoipa.
//!
//! One definition per shape: request bodies are the very types the handlers
//! deserialize (their bounds annotated next to the fields), response bodies
//! the very types they serialize (`ToSchema` next to `Serialize`), and each
//! operation is declared on its handler (`#[utoipa::path]`). The paths are
//! collected from the router itself (utoipa-axum's `routes!`, in
//! `super::documented`), so a route and its documentation are added in one
//! place; a test there checks that the router has no route the document
//! lacks. This file holds what is not per route: the info, the schema
//! components, the security schemes and the tags.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::campaigns::{CampaignBody, CampaignList, StatsBody};
use super::claims::{CouponBody, CouponList};
use super::coupons::RedemptionBody;
use super::error::ErrorBody;
use super::live::LiveStats;
use super::reports::{MinuteClaims, ReportBody, SecondClaims};
use crate::db::reports::TopEntry;
use crate::domain::campaign::{
    AppliesTo, AppliesToRequest, CampaignStatus, CouponRequest, CouponTerms, CreateCampaignRequest, Discount,
    DiscountRequest,
};
use crate::domain::change::PatchCampaignRequest;
use crate::domain::order::{OrderLineRequest, RedeemRequest, ReleaseRequest};
use crate::health::Readiness;
use crate::service::claims::CouponStatus;
use crate::service::live::UserEvent;
use crate::stock::ShardStats;

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
    components(schemas(
        ErrorBody, CampaignBody, CampaignList, StatsBody, ShardStats, CouponBody, CouponList, RedemptionBody,
        ReportBody, MinuteClaims, SecondClaims, TopEntry, Readiness, CreateCampaignRequest, CouponRequest,
        PatchCampaignRequest, LiveStats, UserEvent,
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

#[utoipa::path(operation_id = "openapi_doc", get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document (OpenAPI 3)", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(super::document())
}
