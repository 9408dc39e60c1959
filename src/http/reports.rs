//! `GET /v1/campaigns/{id}/report` (admin).

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use serde_json::{Value, json};

use super::extract::Admin;
use super::{ApiError, AppState, rfc3339};
use crate::db::reports::TopEntry;
use crate::domain::CampaignId;
use crate::service::CampaignReport;

fn top_json(entries: &[TopEntry]) -> Vec<Value> {
    entries.iter().map(|e| json!({"id": e.id, "redemptions": e.redemptions, "line_cents": e.line_cents})).collect()
}

pub fn report_json(r: &CampaignReport) -> Value {
    let s = &r.stats;
    let c = &s.view.campaign;
    json!({
        "campaign_id": c.id, "name": c.name, "status": s.view.status,
        "starts_at": rfc3339(c.starts_at), "ends_at": rfc3339(c.ends_at),
        "total_stock": c.total_stock, "remaining": s.remaining, "claimed": s.claimed, "persisted": s.persisted,
        "first_claim_at": r.timeline.first_claim_at.map(rfc3339),
        "last_claim_at": r.timeline.last_claim_at.map(rfc3339),
        "sold_out_after_ms": r.sold_out_after_ms,
        "claims_per_minute": r.timeline.per_minute.iter()
            .map(|(m, n)| json!({"minute": rfc3339(*m), "claims": n}))
            .collect::<Vec<_>>(),
        "claims_per_second": r.timeline.per_second.iter()
            .map(|(t, n)| json!({"second": rfc3339(*t), "claims": n}))
            .collect::<Vec<_>>(),
        "redeemed": s.redeemed, "redemption_rate": r.redemption_rate,
        "discount_total_cents": s.discount_total_cents,
        "top_products": top_json(&r.top_products), "top_categories": top_json(&r.top_categories),
    })
}

pub async fn report(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = CampaignId::parse(&id).ok_or(ApiError::CampaignNotFound)?;
    let r = s.reports.report(&id, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(report_json(&r)))
}
