//! The app's endpoints: claim, and the user's coupons.

use std::borrow::Cow;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ErrorBody, Refusals};
use super::extract::{User, authenticate, idempotency_key};
use super::{ApiError, AppState, rfc3339};
use crate::domain::campaign::{AppliesTo, Discount};
use crate::domain::{CampaignId, CouponId};
use crate::metrics::ClaimLabel;
use crate::service::ClaimResult;
use crate::service::claims::{CouponStatus, CouponView, CouponsQuery as PageQuery, PAGE_DEFAULT, PAGE_MAX};

// A coupon as API.md shows it, serialized straight from the view (the 201
// of every grant: no `serde_json::Value` tree per response).
#[derive(Serialize, ToSchema)]
#[schema(as = Coupon)]
pub struct CouponBody<'a> {
    id: &'a str,
    campaign_id: &'a str,
    user_id: &'a str,
    status: CouponStatus,
    #[schema(format = DateTime)]
    claimed_at: String,
    #[schema(format = DateTime)]
    valid_from: String,
    #[schema(format = DateTime)]
    valid_until: String,
    discount: &'a Discount,
    min_spend_cents: i64,
    applies_to: &'a AppliesTo,
    /// Once redeemed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    redeemed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    discount_cents: Option<i64>,
}

impl<'a> CouponBody<'a> {
    pub fn of(c: &'a CouponView) -> Self {
        Self {
            id: &c.id,
            campaign_id: &c.campaign_id,
            user_id: &c.user_id,
            status: c.status,
            claimed_at: rfc3339(c.claimed_at),
            valid_from: rfc3339(c.valid_from),
            valid_until: rfc3339(c.valid_until),
            discount: &c.discount,
            min_spend_cents: c.min_spend_cents,
            applies_to: &c.applies_to,
            redeemed_at: c.redemption.as_ref().map(|r| rfc3339(r.redeemed_at)),
            order_id: c.redemption.as_ref().map(|r| r.order_id.as_str()),
            discount_cents: c.redemption.as_ref().map(|r| r.discount_cents),
        }
    }
}

// One page of the user's coupons.
#[derive(Serialize, ToSchema)]
pub struct CouponList<'a> {
    coupons: Vec<CouponBody<'a>>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<&'a str>,
}

/// `POST /v1/campaigns/{id}/claim`.
//
// Reads the request head itself instead of through one extractor per
// input: after a sell-out nearly every request of a drop ends here with a
// 410 from memory, and the extractors' futures, the percent-decoded path
// parameter and repeated clock reads were most of that answer's cost
// (BENCHMARKS.md, "Front end"). The checks keep the documented order:
// token (401), `Idempotency-Key` (400), campaign id (404), then the claim.
// (Not a doc comment: that would be the operation's description.)
#[utoipa::path(post, path = "/v1/campaigns/{id}/claim", tag = "claims", security(("user_jwt" = [])),
    params(
        ("id" = String, Path, description = "campaign id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1..=64 chars: a retry with the same key returns the same coupon with 200")),
    responses(
        (status = 201, description = "granted", body = CouponBody),
        (status = 200, description = "the coupon of an earlier claim with the same Idempotency-Key", body = CouponBody),
        (status = 400, description = "`invalid_request` (bad Idempotency-Key)", body = ErrorBody),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        (status = 409, description = "`not_started` (`starts_at`), `already_claimed` (`coupon_id`), `limit_reached` (`coupon_ids`)", body = ErrorBody),
        (status = 410, description = "`sold_out`, `ended`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        Refusals))]
pub async fn claim(State(s): State<AppState>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let answer = claim_answer(&s, req.uri().path(), req.headers(), Utc::now()).await;
    s.http_metrics.claim(claim_label(&answer), started.elapsed());
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// The `{id}` of `/v1/campaigns/{id}/claim`, percent-decoded if it needs
/// to be; `None` when it cannot be text (so no campaign has it).
fn campaign_segment(path: &str) -> Option<Cow<'_, str>> {
    let raw = path.strip_prefix("/v1/campaigns/")?.strip_suffix("/claim")?;
    if raw.contains('%') { percent_encoding::percent_decode_str(raw).decode_utf8().ok() } else { Some(raw.into()) }
}

/// The outcome label of a claim's answer, for the metrics.
fn claim_label(answer: &Result<Response, ApiError>) -> ClaimLabel {
    match answer {
        Ok(r) if r.status() == StatusCode::CREATED => ClaimLabel::Granted,
        Ok(_) => ClaimLabel::Replayed,
        Err(ApiError::AlreadyClaimed { .. }) => ClaimLabel::AlreadyClaimed,
        Err(ApiError::LimitReached { .. }) => ClaimLabel::LimitReached,
        Err(ApiError::NotStarted { .. }) => ClaimLabel::NotStarted,
        Err(ApiError::Ended) => ClaimLabel::Ended,
        Err(ApiError::SoldOut) => ClaimLabel::SoldOut,
        Err(ApiError::CampaignNotFound) => ClaimLabel::NotFound,
        Err(ApiError::RateLimited { .. }) => ClaimLabel::RateLimited,
        Err(ApiError::Unavailable { .. }) => ClaimLabel::Unavailable,
        Err(_) => ClaimLabel::Error,
    }
}

async fn claim_answer(s: &AppState, path: &str, headers: &HeaderMap, now: DateTime<Utc>) -> Result<Response, ApiError> {
    let user = authenticate(headers, s, now.timestamp())?;
    let key = idempotency_key(headers)?;
    let id = campaign_segment(path).and_then(|id| CampaignId::parse(&id)).ok_or(ApiError::CampaignNotFound)?;
    let result = s.claims.claim(&id, &user, key.as_deref(), now).await?;
    match result {
        ClaimResult::Granted(c) => Ok((StatusCode::CREATED, Json(CouponBody::of(&c))).into_response()),
        ClaimResult::Replayed(c) => Ok((StatusCode::OK, Json(CouponBody::of(&c))).into_response()),
        ClaimResult::AlreadyClaimed { coupon_id } => Err(ApiError::AlreadyClaimed { coupon_id }),
        ClaimResult::LimitReached { coupon_ids } => Err(ApiError::LimitReached { coupon_ids }),
        ClaimResult::NotStarted { starts_at } => Err(ApiError::NotStarted { starts_at }),
        ClaimResult::Ended => Err(ApiError::Ended),
        ClaimResult::SoldOut => Err(ApiError::SoldOut),
        ClaimResult::Busy => Err(ApiError::Unavailable { retry_after_secs: 1 }),
        ClaimResult::CampaignNotFound => Err(ApiError::CampaignNotFound),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponsQuery {
    campaign_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/me/coupons`: one page, newest first; `next_cursor` (the last
/// id of the page) is passed back as `cursor` for the next one, null on
/// the last page.
#[utoipa::path(get, path = "/v1/me/coupons", tag = "coupons", security(("user_jwt" = [])),
    params(
        ("campaign_id" = Option<String>, Query, description = "only this campaign"),
        ("status" = Option<CouponStatus>, Query, description = "only this status"),
        ("limit" = Option<u32>, Query, description = "page size, 1..=1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before (opaque)")),
    responses(
        (status = 200, description = "one page of the user's coupons, newest first, including claims not yet persisted (listed once relayed, typically tens of ms after the 201; at once with `campaign_id`); `next_cursor` for the next page", body = CouponList),
        (status = 400, description = "`invalid_request` (`status`, `limit`, `cursor`)", body = ErrorBody),
        Refusals))]
pub async fn my_coupons(
    State(s): State<AppState>,
    User(user): User,
    query: Result<Query<CouponsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None => None,
        Some("claimed") => Some(CouponStatus::Claimed),
        Some("redeemed") => Some(CouponStatus::Redeemed),
        Some("expired") => Some(CouponStatus::Expired),
        Some(_) => {
            return Err(ApiError::invalid("status", "must be claimed, redeemed or expired"));
        }
    };
    let limit = match q.limit.as_deref() {
        None => PAGE_DEFAULT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", format!("must be an integer in 1..={PAGE_MAX}"))),
        },
    };
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => {
            Some(CouponId::parse(raw).ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this listing"))?)
        }
    };
    let campaign = match q.campaign_id.as_deref() {
        None => None,
        Some(raw) => match CampaignId::parse(raw) {
            Some(id) => Some(id),
            // An id that cannot exist has no coupons.
            None => return Ok(Json(CouponList { coupons: Vec::new(), next_cursor: None }).into_response()),
        },
    };
    let query = PageQuery { campaign: campaign.as_ref(), status, before: cursor.as_ref(), limit };
    let page = s.claims.my_coupons(&user, &query, Utc::now()).await?;
    let list = CouponList {
        coupons: page.coupons.iter().map(CouponBody::of).collect(),
        next_cursor: page.next_cursor.as_deref(),
    };
    Ok(Json(list).into_response())
}

#[utoipa::path(get, path = "/v1/me/coupons/{coupon_id}", tag = "coupons", security(("user_jwt" = [])),
    params(("coupon_id" = String, Path, description = "coupon id")),
    responses(
        (status = 200, description = "the coupon", body = CouponBody),
        (status = 404, description = "`coupon_not_found` (also another user's)", body = ErrorBody),
        Refusals))]
pub async fn my_coupon(
    State(s): State<AppState>,
    User(user): User,
    Path(coupon_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = CouponId::parse(&coupon_id).ok_or(ApiError::CouponNotFound)?;
    let c = s.claims.my_coupon(&user, &id, Utc::now()).await?.ok_or(ApiError::CouponNotFound)?;
    Ok(Json(CouponBody::of(&c)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_campaign_id_is_read_from_the_path() {
        let id = |p: &str| campaign_segment(p).map(Cow::into_owned);
        assert_eq!(id("/v1/campaigns/01ARZ3NDEKTSV4RRFFQ69G5FAV/claim").as_deref(), Some("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert_eq!(id("/v1/campaigns/%30%31ab/claim").as_deref(), Some("01ab"));
        assert_eq!(id("/v1/campaigns/%ff/claim"), None, "not UTF-8: no campaign has it");
        assert_eq!(id("/v1/campaigns/%zz/claim").as_deref(), Some("%zz"), "not an escape: kept, then not an id");
        assert_eq!(id("/v1/campaigns//claim").as_deref(), Some(""));
        assert_eq!(id("/v1/coupons/x/claim"), None);
    }
}
