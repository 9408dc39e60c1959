//! The one error type of the HTTP layer: every documented status and code
//! of API.md, rendered as `{"error", "message", ...details}`. Backend errors
//! are logged here with their source and reach the client as a bare 503 or
//! 500 that reveals nothing (no SQL, no Redis reply, no stack).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::ServiceError;

use super::rfc3339;

#[derive(Debug)]
pub enum ApiError {
    InvalidRequest {
        field: String,
        message: String,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    CampaignNotFound,
    CouponNotFound,
    NotStarted {
        starts_at: DateTime<Utc>,
    },
    AlreadyClaimed {
        coupon_id: String,
    },
    LimitReached {
        coupon_ids: Vec<String>,
    },
    SoldOut,
    Ended,
    AlreadyRedeemed {
        order_id: String,
    },
    NotYetValid {
        valid_from: DateTime<Utc>,
    },
    Expired,
    NotApplicable {
        reason: &'static str,
    },
    NotRedeemedByOrder,
    /// PATCH refused: what may change, and which way (`domain::change`).
    InvalidChange {
        reason: &'static str,
        message: String,
    },
    /// `Idempotency-Key` of `POST /v1/campaigns` reused with another body.
    IdempotencyConflict,
    RateLimited {
        retry_after_secs: u64,
    },
    Unavailable {
        retry_after_secs: u64,
    },
    Internal,
}

// The body as it is written and documented: only the details of the error
// at hand are present. The fields are in name order, the order the keys
// were written in when this was a JSON map.
/// Every error: `{"error": code, "message": text, ...details}`.
#[derive(Debug, Default, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// `already_claimed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon_id: Option<&'a str>,
    /// `limit_reached`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    coupon_ids: Option<&'a [String]>,
    /// Machine-readable code (clients switch on this).
    error: &'static str,
    /// `invalid_request`: the first offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[schema(value_type = String)]
    message: Cow<'a, str>,
    /// `already_redeemed`: the order the coupon is redeemed on.
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    /// `not_applicable`: `min_spend` or `no_eligible_items`; `invalid_change`:
    /// `ended`, `ends_at_earlier`, `ends_at_out_of_range`, `below_claimed`,
    /// `stock_decrease`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// `not_started`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    starts_at: Option<String>,
    /// `not_yet_valid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    valid_from: Option<String>,
}

/// The answers every `/v1` operation may give besides its own (listed in
/// each `#[utoipa::path]`): a missing or bad credential, the rate limits,
/// the admission bound or a backend down. A list for the document: its
/// values are never made (the answers are `ApiError`s).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    #[response(status = 401, description = "`unauthorized`")]
    Unauthorized(ErrorBody<'static>),
    #[response(status = 429, description = "`rate_limited`", headers(("Retry-After" = u64)))]
    RateLimited(ErrorBody<'static>),
    #[response(status = 503, description = "`unavailable`", headers(("Retry-After" = u64)))]
    Unavailable(ErrorBody<'static>),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { field: field.into(), message: message.into() }
    }

    fn parts(&self) -> (StatusCode, ErrorBody<'_>) {
        let mut d = ErrorBody::default();
        let (status, code, message): (StatusCode, &'static str, Cow<'_, str>) = match self {
            ApiError::InvalidRequest { field, message } => {
                d.field = Some(field.as_str());
                (StatusCode::BAD_REQUEST, "invalid_request", format!("{field}: {message}").into())
            }
            ApiError::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request bodies are limited to 64 KiB".into())
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json".into(),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid Authorization: Bearer credentials".into(),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint".into())
            }
            ApiError::CampaignNotFound => (StatusCode::NOT_FOUND, "campaign_not_found", "no such campaign".into()),
            ApiError::CouponNotFound => (StatusCode::NOT_FOUND, "coupon_not_found", "no such coupon".into()),
            ApiError::NotStarted { starts_at } => {
                d.starts_at = Some(rfc3339(*starts_at));
                (StatusCode::CONFLICT, "not_started", "the campaign has not started yet".into())
            }
            ApiError::AlreadyClaimed { coupon_id } => {
                d.coupon_id = Some(coupon_id.as_str());
                (StatusCode::CONFLICT, "already_claimed", "you already hold a coupon of this campaign".into())
            }
            ApiError::LimitReached { coupon_ids } => {
                d.coupon_ids = Some(coupon_ids.as_slice());
                (StatusCode::CONFLICT, "limit_reached", "you hold as many coupons of this campaign as allowed".into())
            }
            ApiError::SoldOut => (StatusCode::GONE, "sold_out", "the campaign is sold out".into()),
            ApiError::Ended => (StatusCode::GONE, "ended", "the campaign has ended".into()),
            ApiError::AlreadyRedeemed { order_id } => {
                d.order_id = Some(order_id.as_str());
                (StatusCode::CONFLICT, "already_redeemed", "the coupon is redeemed on another order".into())
            }
            ApiError::NotYetValid { valid_from } => {
                d.valid_from = Some(rfc3339(*valid_from));
                (StatusCode::CONFLICT, "not_yet_valid", "the coupon is not valid yet".into())
            }
            ApiError::Expired => (StatusCode::GONE, "expired", "the coupon has expired".into()),
            ApiError::NotApplicable { reason } => {
                d.reason = Some(*reason);
                let message = match *reason {
                    "min_spend" => "the order does not reach the coupon's minimum spend",
                    _ => "no item of the order is eligible for the coupon",
                };
                (StatusCode::UNPROCESSABLE_ENTITY, "not_applicable", message.into())
            }
            ApiError::NotRedeemedByOrder => {
                (StatusCode::CONFLICT, "not_redeemed_by_order", "the coupon is redeemed on another order".into())
            }
            ApiError::InvalidChange { reason, message } => {
                d.reason = Some(*reason);
                (StatusCode::CONFLICT, "invalid_change", message.as_str().into())
            }
            ApiError::IdempotencyConflict => (
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this Idempotency-Key was used with another body; use a new key for a new campaign".into(),
            ),
            ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests, retry later".into())
            }
            ApiError::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable, retry later".into())
            }
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into()),
        };
        d.error = code;
        d.message = message;
        (status, d)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        // Refusals of the protection layer are expected under load: no
        // warning per request (they are counted in /metrics).
        match e {
            ServiceError::RateLimited(r) => return ApiError::RateLimited { retry_after_secs: r.retry_after_secs() },
            ServiceError::Shed(_) | ServiceError::Stock(crate::stock::StockError::BreakerOpen) => {
                return ApiError::Unavailable { retry_after_secs: 1 };
            }
            _ => {}
        }
        if e.is_unavailable() {
            // One line a second for a backend that stays unavailable, not one
            // per request (a static like tracing's call-site state).
            static LOG: crate::telemetry::LogEvery = crate::telemetry::LogEvery::new();
            if let Some(skipped) = LOG.allow() {
                tracing::warn!(error = %e, skipped, "backend unavailable");
            }
            ApiError::Unavailable { retry_after_secs: 1 }
        } else {
            tracing::error!(error = %e, "internal error");
            ApiError::Internal
        }
    }
}

impl ApiError {
    /// The JSON body, serialized.
    fn body(&self) -> (StatusCode, Vec<u8>) {
        let (status, body) = self.parts();
        (status, serde_json::to_vec(&body).expect("an error body always serializes"))
    }
}

/// The answers of the in-memory fast paths, serialized once: during a flood
/// after a sell-out or an end they are nearly all of the traffic.
static SOLD_OUT_BODY: std::sync::LazyLock<bytes::Bytes> =
    std::sync::LazyLock::new(|| ApiError::SoldOut.body().1.into());
static ENDED_BODY: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| ApiError::Ended.body().1.into());

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let json = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        match self {
            ApiError::SoldOut => return (StatusCode::GONE, json, SOLD_OUT_BODY.clone()).into_response(),
            ApiError::Ended => return (StatusCode::GONE, json, ENDED_BODY.clone()).into_response(),
            _ => {}
        }
        let (status, body) = self.body();
        let mut resp = (status, json, body).into_response();
        if let ApiError::RateLimited { retry_after_secs } | ApiError::Unavailable { retry_after_secs } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}
