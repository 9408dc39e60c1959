//! The app's endpoints: claim, and the user's coupons.

use std::borrow::Cow;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{User, authenticate, idempotency_key};
use super::{ApiError, AppState, rfc3339};
use crate::domain::campaign::{AppliesTo, Discount};
use crate::domain::{CampaignId, CouponId};
use crate::metrics::ClaimLabel;
use crate::service::ClaimResult;
use crate::service::claims::{CouponStatus, CouponView, CouponsQuery as PageQuery, PAGE_DEFAULT, PAGE_MAX};

/// A coupon as API.md shows it, serialized straight from the view (the
/// 201 of every grant: no `serde_json::Value` tree per response).
#[derive(Serialize)]
pub struct CouponBody<'a> {
    id: &'a str,
    campaign_id: &'a str,
    user_id: &'a str,
    status: CouponStatus,
    claimed_at: String,
    valid_from: String,
    valid_until: String,
    discount: &'a Discount,
    min_spend_cents: i64,
    applies_to: &'a AppliesTo,
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// The same, as a JSON value (listings and the other coupon endpoints).
pub fn coupon_json(c: &CouponView) -> Value {
    serde_json::to_value(CouponBody::of(c)).expect("a coupon serializes")
}

/// `POST /v1/campaigns/{id}/claim`.
///
/// Reads the request head itself instead of through one extractor per
/// input: after a sell-out nearly every request of a drop ends here with a
/// 410 from memory, and the extractors' futures, the percent-decoded path
/// parameter and repeated clock reads were most of that answer's cost
/// (BENCHMARKS.md, "Front end"). The checks keep the documented order:
/// token (401), `Idempotency-Key` (400), campaign id (404), then the claim.
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
pub async fn my_coupons(
    State(s): State<AppState>,
    User(user): User,
    query: Result<Query<CouponsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
            None => return Ok(Json(json!({ "coupons": [], "next_cursor": null }))),
        },
    };
    let query = PageQuery { campaign: campaign.as_ref(), status, before: cursor.as_ref(), limit };
    let page = s.claims.my_coupons(&user, &query, Utc::now()).await?;
    Ok(Json(json!({
        "coupons": page.coupons.iter().map(coupon_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

pub async fn my_coupon(
    State(s): State<AppState>,
    User(user): User,
    Path(coupon_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = CouponId::parse(&coupon_id).ok_or(ApiError::CouponNotFound)?;
    let c = s.claims.my_coupon(&user, &id, Utc::now()).await?.ok_or(ApiError::CouponNotFound)?;
    Ok(Json(coupon_json(&c)))
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
