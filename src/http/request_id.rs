//! Request ids and trace context, done per request by the accept loop.
//!
//! Every response carries `x-request-id`: the client's (or its proxy's)
//! when well-formed (1..=128 characters of `A-Z a-z 0-9 - _ . : / + =`),
//! else one this instance makes. Every log line written while the request
//! runs carries that id and, when the request carries a valid W3C
//! `traceparent`, its `trace_id` and parent `span_id`, so a log search
//! joins this service's lines with the caller's trace (how: `telemetry`,
//! "Request context"). No line is written per request by these layers.
//!
//! It is on the sold-out fast path, where a request costs ~48k
//! instructions in all, so it is kept small (issue 18 asked for at most
//! 3 %), and that is why it is written here and done by the accept loop
//! (`server`), not made of tower-http's layers: `SetRequestId` +
//! `PropagateRequestId` + `TraceLayer` (and a `map_request` dropping a
//! malformed id) cost 11k instructions per request, 23 %; without the span
//! still 7.6k, 16 % (the id written into the request's headers and
//! extensions, read back for the response, each layer's future); one
//! hand-written layer still 3k, 6 %, about a third of it axum's wrapping
//! of a layer added to a `Router` (callgrind: the layer's own work ~2k). Counts in BENCHMARKS.md. Here the id is read once,
//! kept in the log context (no `tracing` span per request: see
//! `telemetry`) and written on the response by the accept loop. A made id is the instance's ULID with a counter in its
//! last ten characters instead of a fresh ULID (a clock read, 80 random
//! bits and a base-32 encoding per request: ~3k instructions).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderName, HeaderValue};

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

impl MakeId {
    /// A fresh id as a header value.
    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.make()).expect("base-32 digits are a valid header value")
    }
}

/// A client-supplied id worth keeping (logged as is, so it must be short
/// and harmless in a log line).
pub fn well_formed(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
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

/// The front door's request ids: `server` asks [`RequestIds::begin`] for
/// each request's id and log context before handing it to the router, and
/// puts the id on the response.
#[derive(Clone, Default)]
pub struct RequestIds {
    make: MakeId,
}

impl RequestIds {
    /// The request's id (its own when well-formed, else a made one) and
    /// the log context to serve it in.
    pub fn begin<B>(&self, req: &axum::http::Request<B>) -> (HeaderValue, crate::telemetry::RequestContext) {
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(v) if well_formed(v) => v.clone(),
            _ => self.make.header(),
        };
        let trace = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
            .map(|(t, p)| (Box::from(t), Box::from(p)));
        (id.clone(), crate::telemetry::RequestContext { request_id: id, trace })
    }
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
