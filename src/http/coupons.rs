//! The app's checkout side: redeem and release a coupon.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::claims::CouponBody;
use super::error::{ErrorBody, Refusals};
use super::extract::{JsonBody, User};
use super::{ApiError, AppState, rfc3339};
use crate::domain::CouponId;
use crate::domain::order::{RedeemRequest, ReleaseRequest};
use crate::service::{RedeemResult, ReleaseResult};

// The answer of a redemption.
#[derive(Serialize, ToSchema)]
#[schema(as = Redemption)]
pub struct RedemptionBody<'a> {
    coupon_id: &'a str,
    order_id: &'a str,
    discount_cents: i64,
    /// Always `redeemed`.
    status: &'static str,
    #[schema(format = DateTime)]
    redeemed_at: String,
}

#[utoipa::path(post, path = "/v1/coupons/{coupon_id}/redeem", tag = "coupons", security(("user_jwt" = [])),
    params(("coupon_id" = String, Path, description = "coupon id")),
    request_body = RedeemRequest,
    responses(
        (status = 200, description = "redeemed (again the same body for the same order_id)", body = RedemptionBody),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 404, description = "`coupon_not_found` (also another user's)", body = ErrorBody),
        (status = 409, description = "`already_redeemed` (`order_id`), `not_yet_valid` (`valid_from`)", body = ErrorBody),
        (status = 410, description = "`expired`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`not_applicable` (`reason`: `min_spend` or `no_eligible_items`)", body = ErrorBody),
        Refusals))]
pub async fn redeem(
    State(s): State<AppState>,
    User(user): User,
    Path(coupon_id): Path<String>,
    JsonBody(req): JsonBody<RedeemRequest>,
) -> Result<Response, ApiError> {
    let id = CouponId::parse(&coupon_id).ok_or(ApiError::CouponNotFound)?;
    let order = req.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    match s.coupons.redeem(&user, &id, &order, Utc::now()).await? {
        RedeemResult::Redeemed { coupon_id, redemption: r } => Ok(Json(RedemptionBody {
            coupon_id: &coupon_id,
            order_id: &r.order_id,
            discount_cents: r.discount_cents,
            status: "redeemed",
            redeemed_at: rfc3339(r.redeemed_at),
        })
        .into_response()),
        RedeemResult::CouponNotFound => Err(ApiError::CouponNotFound),
        RedeemResult::AlreadyRedeemed { order_id } => Err(ApiError::AlreadyRedeemed { order_id }),
        RedeemResult::NotYetValid { valid_from } => Err(ApiError::NotYetValid { valid_from }),
        RedeemResult::Expired => Err(ApiError::Expired),
        RedeemResult::NotApplicable(reason) => Err(ApiError::NotApplicable { reason: reason.as_str() }),
    }
}

#[utoipa::path(post, path = "/v1/coupons/{coupon_id}/release", tag = "coupons", security(("user_jwt" = [])),
    params(("coupon_id" = String, Path, description = "coupon id")),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "the coupon, back to `claimed` if it was redeemed by this order (idempotent)", body = CouponBody),
        (status = 400, description = "`invalid_request` with `field`", body = ErrorBody),
        (status = 404, description = "`coupon_not_found`", body = ErrorBody),
        (status = 409, description = "`not_redeemed_by_order`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        Refusals))]
pub async fn release(
    State(s): State<AppState>,
    User(user): User,
    Path(coupon_id): Path<String>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Response, ApiError> {
    let id = CouponId::parse(&coupon_id).ok_or(ApiError::CouponNotFound)?;
    let order_id = req.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    match s.coupons.release(&user, &id, &order_id, Utc::now()).await? {
        ReleaseResult::Released(c) => Ok(Json(CouponBody::of(&c)).into_response()),
        ReleaseResult::CouponNotFound => Err(ApiError::CouponNotFound),
        ReleaseResult::NotRedeemedByOrder => Err(ApiError::NotRedeemedByOrder),
    }
}
