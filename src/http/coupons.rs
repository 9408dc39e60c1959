//! The app's checkout side: redeem and release a coupon.

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use serde_json::{Value, json};

use super::claims::coupon_json;
use super::extract::{JsonBody, User};
use super::{ApiError, AppState, rfc3339};
use crate::domain::CouponId;
use crate::domain::order::{RedeemRequest, ReleaseRequest};
use crate::service::{RedeemResult, ReleaseResult};

pub async fn redeem(
    State(s): State<AppState>,
    User(user): User,
    Path(coupon_id): Path<String>,
    JsonBody(req): JsonBody<RedeemRequest>,
) -> Result<Json<Value>, ApiError> {
    let id = CouponId::parse(&coupon_id).ok_or(ApiError::CouponNotFound)?;
    let order = req.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    match s.coupons.redeem(&user, &id, &order, Utc::now()).await? {
        RedeemResult::Redeemed { coupon_id, redemption: r } => Ok(Json(json!({
            "coupon_id": coupon_id, "order_id": r.order_id, "discount_cents": r.discount_cents,
            "status": "redeemed", "redeemed_at": rfc3339(r.redeemed_at),
        }))),
        RedeemResult::CouponNotFound => Err(ApiError::CouponNotFound),
        RedeemResult::AlreadyRedeemed { order_id } => Err(ApiError::AlreadyRedeemed { order_id }),
        RedeemResult::NotYetValid { valid_from } => Err(ApiError::NotYetValid { valid_from }),
        RedeemResult::Expired => Err(ApiError::Expired),
        RedeemResult::NotApplicable(reason) => Err(ApiError::NotApplicable { reason: reason.as_str() }),
    }
}

pub async fn release(
    State(s): State<AppState>,
    User(user): User,
    Path(coupon_id): Path<String>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<Value>, ApiError> {
    let id = CouponId::parse(&coupon_id).ok_or(ApiError::CouponNotFound)?;
    let order_id = req.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    match s.coupons.release(&user, &id, &order_id, Utc::now()).await? {
        ReleaseResult::Released(c) => Ok(Json(coupon_json(&c))),
        ReleaseResult::CouponNotFound => Err(ApiError::CouponNotFound),
        ReleaseResult::NotRedeemedByOrder => Err(ApiError::NotRedeemedByOrder),
    }
}
