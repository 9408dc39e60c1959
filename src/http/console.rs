//! The marketing console (`GET /console`): one HTML page, one script and
//! one stylesheet, compiled into the binary (no Node build, no extra
//! service: the two-command quick start serves it).
//!
//! The page holds no data: it asks for the admin token and reads
//! everything through the admin API with it (sessionStorage, Bearer
//! header). Every response carries a Content-Security-Policy of
//! `default-src 'self'` (no inline script, no other origin, no framing)
//! and `nosniff`; the HTML is never cached.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// The policy of every console response.
pub const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, cache: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &'static str); 6] = [
        (CONTENT_TYPE, content_type),
        (CACHE_CONTROL, cache),
        (axum::http::header::CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (axum::http::header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, body).into_response()
}

/// `GET /console`.
#[utoipa::path(operation_id = "console", get, path = "/console", tag = "console",
    responses((status = 200, description = "the marketing console (HTML; reads everything through the admin API with the token the user enters; CSP default-src 'self')", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", "no-store", INDEX)
}

/// `GET /console/` (a typed URL with a slash).
#[utoipa::path(get, path = "/console/", tag = "console",
    responses((status = 308, description = "to `/console`", headers(("Location" = String)))))]
pub async fn index_slash() -> Redirect {
    Redirect::permanent("/console")
}

/// `GET /console/app.js`. Revalidated on every load: the binary may have
/// been upgraded under the same name.
#[utoipa::path(get, path = "/console/app.js", tag = "console",
    responses((status = 200, description = "the console's script", body = String, content_type = "text/javascript")))]
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", "no-cache", APP_JS)
}

/// `GET /console/app.css`.
#[utoipa::path(get, path = "/console/app.css", tag = "console",
    responses((status = 200, description = "the console's stylesheet", body = String, content_type = "text/css")))]
pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", "no-cache", APP_CSS)
}
