//! Admin endpoints: `/v1/campaigns...`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::extract::{Admin, JsonBody, JsonBytes, idempotency_key, parse_json};
use super::{ApiError, AppState, rfc3339};
use crate::domain::CampaignId;
use crate::domain::campaign::CreateCampaignRequest;
use crate::domain::change::PatchCampaignRequest;
use crate::service::campaigns::{Created, Patched};
use crate::service::{CampaignStats, CampaignView};

/// `GET /v1/campaigns` without `limit`: this many (API.md).
pub const PAGE_DEFAULT: u32 = 100;
/// The most a page holds.
pub const PAGE_MAX: u32 = 1000;

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

pub fn stats_json(s: &CampaignStats) -> Value {
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

/// `POST /v1/campaigns`, with an optional `Idempotency-Key`: the same key
/// with the same body answers the campaign made the first time (200), with
/// another body 409 `idempotency_conflict`.
pub async fn create(
    State(s): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let req: CreateCampaignRequest = parse_json(&body)?;
    let now = Utc::now();
    let new = req.validate(now).map_err(|e| ApiError::invalid(e.field, e.message))?;
    let Some(key) = key else {
        let view = s.campaigns.create(new, now).await?;
        return Ok((StatusCode::CREATED, Json(campaign_json(&view))).into_response());
    };
    let body_sha256: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    match s.campaigns.create_keyed(new, &key, &body_sha256, now).await? {
        Created::New(view) => Ok((StatusCode::CREATED, Json(campaign_json(&view))).into_response()),
        Created::Replayed(view) => Ok((StatusCode::OK, Json(campaign_json(&view))).into_response()),
        Created::Conflict => Err(ApiError::IdempotencyConflict),
    }
}

/// Query of `GET /v1/campaigns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/campaigns?limit=N&cursor=C`: newest first, one page.
pub async fn list(
    State(s): State<AppState>,
    _: Admin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = match q.limit.as_deref() {
        None => PAGE_DEFAULT,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", format!("must be an integer in 1..={PAGE_MAX}")))?,
    };
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            CampaignId::parse(raw)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this list (use next_cursor as given)"))?,
        ),
    };
    let (views, next) = s.campaigns.list_page(cursor.as_ref(), limit, Utc::now()).await?;
    Ok(Json(json!({
        "campaigns": views.iter().map(campaign_json).collect::<Vec<_>>(),
        "next_cursor": next.map(|id| id.to_string()),
    })))
}

/// `PATCH /v1/campaigns/{id}`: name, a later `ends_at`, a `total_stock` top-up.
pub async fn patch(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PatchCampaignRequest>,
) -> Result<Json<Value>, ApiError> {
    let id = campaign_id(&id)?;
    let patch = req.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    match s.campaigns.patch(&id, &patch, Utc::now()).await? {
        Patched::Done(view) => {
            // This instance answers claims from memory no longer sold out
            // at once; the others on the `changed` notice.
            s.claims.forget_sold_out(&id);
            Ok(Json(campaign_json(&view)))
        }
        Patched::Invalid(refused) => Err(ApiError::InvalidChange { reason: refused.reason, message: refused.message }),
        Patched::NotFound => Err(ApiError::CampaignNotFound),
    }
}

/// `GET /v1/campaigns/{id}/claims.csv`: the persisted claims, streamed.
pub async fn claims_csv(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    let chunks = s.reports.claims_csv(&id, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk.map_err(std::io::Error::other), rx))
    });
    let headers = [
        (CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
        (CONTENT_DISPOSITION, format!("attachment; filename=\"claims-{id}.csv\"")),
        (CACHE_CONTROL, "no-store".to_owned()),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
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
