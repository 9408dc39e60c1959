//! Request extractors: strict JSON bodies, the admin token, the user JWT and
//! the `Idempotency-Key` header (the last two also as plain functions, for
//! the claim handler). Each failure becomes the documented 4xx.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::auth::token_eq;
use crate::domain::UserId;

/// A JSON body deserialized strictly: wrong content type 415, over the
/// limit 413, anything unparsable 400 `invalid_request` naming the field.
pub struct JsonBody<T>(pub T);

/// Turns a serde error at `path` into the field it is about. Unknown and
/// missing fields are reported by serde at the enclosing object, so their
/// name is taken from the message.
fn field_of(path: &str, message: &str) -> String {
    let named = ["unknown field `", "missing field `"].iter().find_map(|p| {
        message.split_once(p).and_then(|(_, rest)| rest.split_once('`')).map(|(name, _)| name.to_owned())
    });
    let path = if path == "." { "" } else { path };
    match named {
        // serde_path_to_error already appends an unknown field to the path.
        Some(name) if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
        Some(name) if path.is_empty() => name,
        Some(name) => format!("{path}.{name}"),
        None if path.is_empty() => "body".to_owned(),
        None => path.to_owned(),
    }
}

/// Parses `bytes` as `T`, mapping errors to 400 with the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // Never echo serde's "expected one of ..." lists of internals back
        // verbatim beyond the first clause.
        let short = message.split(", expected").next().unwrap_or(&message).to_owned();
        ApiError::invalid(field_of(&path, &message), short)
    })?;
    Ok(value)
}

/// A JSON body as bytes, content type and size checked (for a handler
/// that needs the exact bytes too: the idempotent create hashes them).
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid("body", "could not read the request body")
            }
        })?;
        Ok(JsonBytes(bytes))
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        Ok(JsonBody(parse_json(&bytes)?))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match bearer(&parts.headers) {
            Some(t) if token_eq(t.as_bytes(), state.admin_token.as_bytes()) => Ok(Admin),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// The user of a request: the `sub` of a valid bearer JWT at unix time
/// `now`, else 401. Shared by the `User` extractor and the claim handler.
pub fn authenticate(headers: &HeaderMap, state: &AppState, now: i64) -> Result<UserId, ApiError> {
    let token = bearer(headers).ok_or(ApiError::Unauthorized)?;
    state.jwt.verify(token, now).map_err(|e| {
        tracing::debug!(reason = %e, "user token refused");
        ApiError::Unauthorized
    })
}

/// The authenticated user (`sub` of a valid JWT), within the per-user rate
/// limit. Only once the token is known good is the limit taken, so nobody
/// can spend another user's allowance. (The claim handler authenticates by
/// itself and takes the user's cell in the claim service, behind the fast
/// paths: a claim answered from memory costs nothing worth limiting, and a
/// sold-out flood of a million distinct users then adds no key.)
pub struct User(pub UserId);

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = authenticate(&parts.headers, state, chrono::Utc::now().timestamp())?;
        state
            .protection
            .limits
            .check_user(&user)
            .map_err(|r| ApiError::RateLimited { retry_after_secs: r.retry_after_secs() })?;
        Ok(User(user))
    }
}

/// The optional `Idempotency-Key` header (1..=64 visible ASCII characters),
/// else 400 naming the header.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || ApiError::invalid("Idempotency-Key", "must be 1..=64 visible ASCII characters");
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named() {
        assert_eq!(field_of(".", "unknown field `total_stok`, expected one of ..."), "total_stok");
        assert_eq!(field_of("coupon", "unknown field `x`, expected ..."), "coupon.x");
        assert_eq!(field_of("coupon.x", "unknown field `x`, expected ..."), "coupon.x");
        assert_eq!(field_of("x", "unknown field `x`, expected ..."), "x");
        assert_eq!(field_of(".", "missing field `name`"), "name");
        assert_eq!(field_of("total_stock", "invalid type: string \"a\", expected i64"), "total_stock");
        assert_eq!(field_of(".", "expected value at line 1 column 1"), "body");
    }
}
