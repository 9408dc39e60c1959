//! `GET /v1/campaigns/{id}/report` (admin).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ErrorBody, Refusals};
use super::extract::Admin;
use super::{ApiError, AppState, rfc3339};
use crate::db::reports::TopEntry;
use crate::domain::CampaignId;
use crate::domain::campaign::CampaignStatus;
use crate::service::CampaignReport;

// Persisted claims in one minute.
#[derive(Serialize, ToSchema)]
pub struct MinuteClaims {
    #[schema(format = DateTime)]
    minute: String,
    claims: u64,
}

// Persisted claims in one second.
#[derive(Serialize, ToSchema)]
pub struct SecondClaims {
    #[schema(format = DateTime)]
    second: String,
    claims: u64,
}

/// What marketing reads after a drop.
#[derive(Serialize, ToSchema)]
#[schema(as = CampaignReport)]
pub struct ReportBody<'a> {
    #[schema(value_type = String)]
    campaign_id: &'a CampaignId,
    name: &'a str,
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
    top_products: &'a [TopEntry],
    top_categories: &'a [TopEntry],
}

impl<'a> ReportBody<'a> {
    pub fn of(r: &'a CampaignReport) -> Self {
        let s = &r.stats;
        let c = &s.view.campaign;
        Self {
            campaign_id: &c.id,
            name: &c.name,
            status: s.view.status,
            starts_at: rfc3339(c.starts_at),
            ends_at: rfc3339(c.ends_at),
            total_stock: c.total_stock,
            remaining: s.remaining,
            claimed: s.claimed,
            persisted: s.persisted,
            first_claim_at: r.timeline.first_claim_at.map(rfc3339),
            last_claim_at: r.timeline.last_claim_at.map(rfc3339),
            sold_out_after_ms: r.sold_out_after_ms,
            claims_per_minute: r
                .timeline
                .per_minute
                .iter()
                .map(|&(m, claims)| MinuteClaims { minute: rfc3339(m), claims })
                .collect(),
            claims_per_second: r
                .timeline
                .per_second
                .iter()
                .map(|&(t, claims)| SecondClaims { second: rfc3339(t), claims })
                .collect(),
            redeemed: s.redeemed,
            redemption_rate: r.redemption_rate,
            discount_total_cents: s.discount_total_cents,
            top_products: &r.top_products,
            top_categories: &r.top_categories,
        }
    }
}

#[utoipa::path(operation_id = "campaign_report", get, path = "/v1/campaigns/{id}/report", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "claims over time, time to sell out, redemptions, discount, top products and categories", body = ReportBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        Refusals))]
pub async fn report(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = CampaignId::parse(&id).ok_or(ApiError::CampaignNotFound)?;
    let r = s.reports.report(&id, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(ReportBody::of(&r)).into_response())
}
