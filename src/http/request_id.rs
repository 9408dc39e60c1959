//! Request ids and trace context, with tower-http's layers.
//!
//! Every response carries `x-request-id`: the client's (or its proxy's)
//! when well-formed (1..=128 characters of `A-Z a-z 0-9 - _ . : / + =`),
//! else one this instance makes. Every log line written while the request
//! runs carries that id and, when the request carries a valid W3C
//! `traceparent`, its `trace_id` and parent `span_id`, so a log search
//! joins this service's lines with the caller's trace (how: `telemetry`,
//! "Request context"). No line is written per request by these layers.
//!
//! Both are on the sold-out fast path, where a request costs ~48k
//! instructions in all, so they are kept small (issue 18 asked for at most
//! 3 %): no `tracing` span per request (see `telemetry`), and a made id is
//! the instance's ULID with a counter in its last ten characters instead
//! of a fresh ULID (a clock read, 80 random bits and a base-32 encoding per
//! request: ~3k instructions). BENCHMARKS.md has the counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestId, RequestId};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Crockford's base 32, as ULIDs are written.
const BASE32: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Makes the id of a request that came without a usable one: 26 characters
/// shaped as a ULID, the first 16 of one made when the router was built
/// (its start time and 30 random bits), the last 10 a counter (50 bits).
/// Unique across instances as long as two never start in the same
/// millisecond with the same 30 random bits, and ordered within one.
#[derive(Clone)]
pub struct MakeId {
    prefix: [u8; 16],
    next: Arc<AtomicU64>,
}

impl MakeId {
    pub fn new() -> Self {
        let base = ulid::Ulid::new().to_string();
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&base.as_bytes()[..16]);
        Self { prefix, next: Arc::new(AtomicU64::new(0)) }
    }

    fn make(&self) -> [u8; 26] {
        let mut n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 26];
        b[..16].copy_from_slice(&self.prefix);
        for c in b[16..].iter_mut().rev() {
            *c = BASE32[(n & 31) as usize];
            n >>= 5;
        }
        b
    }
}

impl Default for MakeId {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&self.make()).ok().map(RequestId::new)
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

/// Serves the request inside its log context (`telemetry::in_request`):
/// the id `SetRequestId` put in the header, and the trace ids of a valid
/// `traceparent`.
pub async fn in_context(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    let Some(id) = req.headers().get(X_REQUEST_ID).cloned() else {
        return next.run(req).await;
    };
    let trace = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .map(|(t, p)| (Box::from(t), Box::from(p)));
    crate::telemetry::in_request(crate::telemetry::RequestContext { request_id: id, trace }, next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_ulids_that_count_up() {
        let m = MakeId::new();
        let ids: Vec<String> = (0..40).map(|_| String::from_utf8(m.make().to_vec()).unwrap()).collect();
        for id in &ids {
            let u = ulid::Ulid::from_string(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(u.to_string(), *id);
            assert!(well_formed(&HeaderValue::from_str(id).unwrap()));
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(&ids[33][16..], "0000000011");
        // Another router (another instance) starts elsewhere.
        let other = String::from_utf8(MakeId::new().make().to_vec()).unwrap();
        assert!(!ids.contains(&other));
    }

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
