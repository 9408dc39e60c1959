//! Admin endpoints: `/v1/campaigns...`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::{ErrorBody, Refusals};
use super::extract::{Admin, JsonBody, JsonBytes, idempotency_key, parse_json};
use super::{ApiError, AppState, rfc3339};
use crate::domain::CampaignId;
use crate::domain::campaign::{CampaignStatus, CouponTerms, CreateCampaignRequest};
use crate::domain::change::PatchCampaignRequest;
use crate::service::campaigns::{Created, Patched};
use crate::service::{CampaignStats, CampaignView};
use crate::stock::ShardStats;

/// `GET /v1/campaigns` without `limit`: this many (API.md).
pub const PAGE_DEFAULT: u32 = 100;
/// The most a page holds.
pub const PAGE_MAX: u32 = 1000;

// A campaign as API.md shows it, serialized straight from the view (its
// doc comment would be the schema's description).
#[derive(Serialize, ToSchema)]
#[schema(as = Campaign)]
pub struct CampaignBody<'a> {
    #[schema(value_type = String)]
    id: &'a CampaignId,
    name: &'a str,
    status: CampaignStatus,
    total_stock: u64,
    per_user_limit: u32,
    #[schema(format = DateTime)]
    starts_at: String,
    #[schema(format = DateTime)]
    ends_at: String,
    shards: u32,
    coupon: &'a CouponTerms,
    #[schema(format = DateTime)]
    created_at: String,
    /// Set once closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    closed_at: Option<String>,
}

impl<'a> CampaignBody<'a> {
    pub fn of(v: &'a CampaignView) -> Self {
        let c = &v.campaign;
        Self {
            id: &c.id,
            name: &c.name,
            status: v.status,
            total_stock: c.total_stock,
            per_user_limit: c.per_user_limit,
            starts_at: rfc3339(c.starts_at),
            ends_at: rfc3339(c.ends_at),
            shards: c.shards(),
            coupon: &c.coupon,
            created_at: rfc3339(c.created_at),
            closed_at: c.closed_at.map(rfc3339),
        }
    }
}

/// One page, newest first.
#[derive(Serialize, ToSchema)]
pub struct CampaignList<'a> {
    campaigns: Vec<CampaignBody<'a>>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `remaining + claimed == total_stock` when read quietly.
#[derive(Serialize, ToSchema)]
#[schema(as = CampaignStats)]
pub struct StatsBody<'a> {
    #[schema(value_type = String)]
    campaign_id: &'a CampaignId,
    status: CampaignStatus,
    total_stock: u64,
    remaining: u64,
    claimed: u64,
    /// Rows in the database; converges to `claimed`.
    persisted: u64,
    redeemed: u64,
    discount_total_cents: i64,
    shards: &'a [ShardStats],
}

impl<'a> StatsBody<'a> {
    pub fn of(s: &'a CampaignStats) -> Self {
        Self {
            campaign_id: &s.view.campaign.id,
            status: s.view.status,
            total_stock: s.view.campaign.total_stock,
            remaining: s.remaining,
            claimed: s.claimed,
            persisted: s.persisted,
            redeemed: s.redeemed,
            discount_total_cents: s.discount_total_cents,
            shards: &s.shards,
        }
    }
}

fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    CampaignId::parse(raw).ok_or(ApiError::CampaignNotFound)
}

/// `POST /v1/campaigns`, with an optional `Idempotency-Key`: the same key
/// with the same body answers the campaign made the first time (200), with
/// another body 409 `idempotency_conflict`.
#[utoipa::path(operation_id = "create_campaign", post, path = "/v1/campaigns", tag = "campaigns", security(("admin_token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1..=64 chars: the same key with the same body answers the campaign made the first time (200); with another body 409 `idempotency_conflict`")),
    request_body = CreateCampaignRequest,
    responses(
        (status = 201, description = "created", body = CampaignBody),
        (status = 200, description = "made before by a request with this Idempotency-Key and this body", body = CampaignBody),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        Refusals))]
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
        return Ok((StatusCode::CREATED, Json(CampaignBody::of(&view))).into_response());
    };
    let body_sha256: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    match s.campaigns.create_keyed(new, &key, &body_sha256, now).await? {
        Created::New(view) => Ok((StatusCode::CREATED, Json(CampaignBody::of(&view))).into_response()),
        Created::Replayed(view) => Ok((StatusCode::OK, Json(CampaignBody::of(&view))).into_response()),
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
#[utoipa::path(operation_id = "list_campaigns", get, path = "/v1/campaigns", tag = "campaigns", security(("admin_token" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "page size, default 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, description = "newest first, one page", body = CampaignList),
        (status = 400, description = "`invalid_request` (`limit`, `cursor`)", body = ErrorBody),
        Refusals))]
pub async fn list(
    State(s): State<AppState>,
    _: Admin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
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
    let page = CampaignList {
        campaigns: views.iter().map(CampaignBody::of).collect(),
        next_cursor: next.map(|id| id.to_string()),
    };
    Ok(Json(page).into_response())
}

/// `PATCH /v1/campaigns/{id}`: name, a later `ends_at`, a `total_stock` top-up.
#[utoipa::path(operation_id = "patch_campaign", patch, path = "/v1/campaigns/{id}", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    request_body = PatchCampaignRequest,
    responses(
        (status = 200, description = "changed (a top-up is spread over the shards; remaining + claimed == total_stock at rest)", body = CampaignBody),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_change` with `reason`: `ended`, `ends_at_earlier`, `ends_at_out_of_range`, `below_claimed`, `stock_decrease`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        Refusals))]
pub async fn patch(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PatchCampaignRequest>,
) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    let patch = req.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    match s.campaigns.patch(&id, &patch, Utc::now()).await? {
        Patched::Done(view) => {
            // This instance answers claims from memory no longer sold out
            // at once; the others on the `changed` notice.
            s.claims.forget_sold_out(&id);
            Ok(Json(CampaignBody::of(&view)).into_response())
        }
        Patched::Invalid(refused) => Err(ApiError::InvalidChange { reason: refused.reason, message: refused.message }),
        Patched::NotFound => Err(ApiError::CampaignNotFound),
    }
}

/// `GET /v1/campaigns/{id}/claims.csv`: the persisted claims, streamed.
#[utoipa::path(get, path = "/v1/campaigns/{id}/claims.csv", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "one row per persisted claim, streamed: `coupon_id,user_id,claimed_at,status,order_id,redeemed_at,discount_cents` (status `claimed`, `redeemed` or `expired`)", body = String, content_type = "text/csv"),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        Refusals))]
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

#[utoipa::path(operation_id = "get_campaign", get, path = "/v1/campaigns/{id}", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "the campaign", body = CampaignBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        Refusals))]
pub async fn get_one(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let view = s.campaigns.get(&campaign_id(&id)?, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(CampaignBody::of(&view)).into_response())
}

#[utoipa::path(operation_id = "close_campaign", post, path = "/v1/campaigns/{id}/close", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "ended now (idempotent)", body = CampaignBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        Refusals))]
pub async fn close(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let view = s.campaigns.close(&campaign_id(&id)?, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(CampaignBody::of(&view)).into_response())
}

#[utoipa::path(operation_id = "campaign_stats", get, path = "/v1/campaigns/{id}/stats", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "live counts", body = StatsBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        Refusals))]
pub async fn stats(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let st = s.campaigns.stats(&campaign_id(&id)?, Utc::now()).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(Json(StatsBody::of(&st)).into_response())
}
