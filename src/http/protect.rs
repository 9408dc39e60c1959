//! The protection middleware of `/v1`: the per-address rate limit (before
//! auth, so floods without a valid token are limited too) and, for every
//! endpoint but claim, the admission bound. Claim takes its admission slot
//! in the service, behind the fast paths (sold out, not started, ended),
//! which must stay answerable however busy the backends are. The per-user
//! limit is applied where the user is known: the `User` extractor.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// The route whose admission is taken by the claim service itself.
pub const CLAIM_ROUTE: &str = "/v1/campaigns/{id}/claim";

/// The client address a limit is keyed by. With a trusted proxy header
/// configured, the rightmost address in it (the one our proxy appended;
/// entries to its left come from the client and can be forged); without,
/// or when the header is missing or unparsable, the peer address.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trusted_header: Option<&str>) -> Option<IpAddr> {
    let from_header = trusted_header
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(parse_addr);
    from_header.or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>().ok().or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Per-address limit, then (except for claims) the admission bound.
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = client_ip(req.headers(), peer, s.trusted_proxy_header.as_deref())
        && let Err(limited) = s.protection.limits.check_ip(&ip)
    {
        return ApiError::RateLimited { retry_after_secs: limited.retry_after_secs() }.into_response();
    }
    let is_claim = req.extensions().get::<MatchedPath>().is_some_and(|p| p.as_str() == CLAIM_ROUTE);
    if is_claim {
        return next.run(req).await;
    }
    match s.protection.admission.enter() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::Unavailable { retry_after_secs: 1 }.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_proxy_header_counts_only_when_configured() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        assert_eq!(client_ip(&h, Some(peer), None), Some(peer), "not configured: the peer");
        assert_eq!(client_ip(&h, Some(peer), Some("x-forwarded-for")), Some("203.0.113.7".parse().unwrap()));
        // Several header lines: the last one is the proxy's.
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.2")]);
        assert_eq!(client_ip(&h, Some(peer), Some("x-forwarded-for")), Some("198.51.100.2".parse().unwrap()));
        for junk in ["", "nope", "1.2.3.4, garbage", "999.1.1.1"] {
            let h = headers(&[("x-forwarded-for", junk)]);
            assert_eq!(client_ip(&h, Some(peer), Some("x-forwarded-for")), Some(peer), "{junk:?}");
        }
        let h = headers(&[("x-real-ip", "[2001:db8::1]:443")]);
        assert_eq!(client_ip(&h, None, Some("x-real-ip")), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(client_ip(&HeaderMap::new(), None, Some("x-real-ip")), None);
    }
}
