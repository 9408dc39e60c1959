//! Admin endpoints: `/v1/campaigns...`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::extract::{Admin, JsonBody};
use super::{ApiError, AppState, rfc3339};
use crate::domain::CampaignId;
use crate::domain::campaign::CreateCampaignRequest;
use crate::service::{CampaignStats, CampaignView};

pub fn campaign_json(v: &CampaignView) -> Value {
    let c = &v.campaign;
    let mut j = json!({
        "id": c.id, "name": c.name, "status": v.status, "total_stock": c.total_stock,
        "per_user_limit": c.per_user_limit, "starts_at": rfc3339(c.starts_at), "ends_at": rfc3339(c.ends_at),
        "shards": c.shards(), "coupon": c.coupon, "created_at": rfc3339(c.created_at),
    });
    if let Some(closed) = c.closed_at {
        j["closed_at"] = json!(rfc3339(closed));
    }
    j
}

fn stats_json(s: &CampaignStats) -> Value {
    let shards: Vec<Value> = s
        .shards
        .iter()
        .map(|sh| json!({"shard": sh.shard, "remaining": sh.remaining, "claimed": sh.claimed, "in_flight": sh.in_flight}))
        .collect();
    json!({
        "campaign_id": s.view.campaign.id, "status": s.view.status, "total_stock": s.view.campaign.total_stock,
        "remaining": s.remaining, "claimed": s.claimed, "persisted": s.persisted,
        "redeemed": s.redeemed, "discount_total_cents": s.discount_total_cents, "shards": shards,
    })
}

fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    CampaignId::parse(raw).ok_or(ApiError::CampaignNotFound)
}

pub async fn create(
    State(s): State<AppState>,
    _: Admin,
    JsonBody(req): JsonBody<CreateCampaignRequest>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let new = req.validate(now).map_err(|e| ApiError::invalid(e.field, e.message))?;
    let view = s.campaigns.create(new, now).await?;
    Ok((StatusCode::CREATED, Json(campaign_json(&view))).into_response())
}

pub async fn list(State(s): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let views = s.campaigns.list(Utc::now()).await?;
    Ok(Json(json!({ "campaigns": views.iter().map(campaign_json).collect::<Vec<_>>() })))
}

pub async fn get_one(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let view = s.campaigns.get(&campaign_id(&id)?, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(campaign_json(&view)))
}

pub async fn close(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let view = s.campaigns.close(&campaign_id(&id)?, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(campaign_json(&view)))
}

pub async fn stats(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let st = s.campaigns.stats(&campaign_id(&id)?, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(stats_json(&st)))
}
