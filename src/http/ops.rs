//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process runs", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "every backend answers", body = crate::health::Readiness),
    (status = 503, description = "a backend is down (marked)", body = crate::health::Readiness)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    let r = crate::health::readiness(&s.stock, &s.amqp, &s.db).await;
    let status = if r.ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r)).into_response()
}
