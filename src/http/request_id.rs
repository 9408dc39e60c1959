//! Request ids and trace context, with tower-http's layers.
//!
//! Every response carries `x-request-id`: the client's (or its proxy's)
//! when well-formed (1..=128 characters of `A-Z a-z 0-9 - _ . : / + =`),
//! else a fresh ULID. Every log line written while the request runs is in a
//! `request` span holding that id, the method and path, and, when the
//! request carries a valid W3C `traceparent`, its `trace_id` and parent
//! `span_id`, so a log search joins this service's lines with the caller's
//! trace. The span is made at INFO (lines at INFO and above carry it); no
//! line is written per request by these layers.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestId, RequestId};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Makes a ULID for a request that came without a usable id.
#[derive(Clone, Copy, Default)]
pub struct MakeUlid;

impl MakeRequestId for MakeUlid {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string()).ok().map(RequestId::new)
    }
}

/// A client-supplied id worth keeping (logged as is, so it must be short
/// and harmless in a log line).
pub fn well_formed(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

/// Drops a malformed `x-request-id` so that `SetRequestId` makes one.
pub fn drop_malformed(mut req: Request) -> Request {
    if req.headers().get(X_REQUEST_ID).is_some_and(|v| !well_formed(v)) {
        req.headers_mut().remove(X_REQUEST_ID);
    }
    req
}

/// `(trace_id, parent span id)` of a version-00 W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, neither id all zeros).
pub fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let mut parts = v.split('-');
    let (Some(ver), Some(trace), Some(parent), Some(flags)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let ok = ver == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|c| c != b'0')
        && parent.bytes().any(|c| c != b'0');
    ok.then_some((trace, parent))
}

/// The span of one request (`TraceLayer::make_span_with`).
pub fn span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        "request",
        request_id = id,
        method = %req.method(),
        path = req.uri().path(),
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    if let Some((trace, parent)) =
        req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse_traceparent)
    {
        span.record("trace_id", trace);
        span.record("parent_span_id", parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_harmless() {
        for good in ["abc", "01J9Z3", "req-1.2:3/4+5=", &"x".repeat(128)] {
            assert!(well_formed(&HeaderValue::from_str(good).unwrap()), "{good}");
        }
        for bad in ["", "has space", "a\"b", "<script>", &"x".repeat(129), "ünï"] {
            assert!(HeaderValue::from_str(bad).map_or(true, |v| !well_formed(&v)), "{bad}");
        }
    }

    #[test]
    fn traceparent_version_00_only() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(tp), Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")));
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "junk",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
