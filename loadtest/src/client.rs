//! The HTTP/1.1 client: hyper-util's pooled client over plain TCP.
//!
//! Lean on purpose: on a 2-core machine the load generator competes with the
//! server for CPU, so there is no TLS, no redirect handling and no
//! decompression. Connections are kept alive and reused; the pool keeps up
//! to one idle connection per worker. Every request is bounded by a timeout
//! that covers the response body too.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::RETRY_AFTER;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum SendError {
    /// No full response within the timeout: the claim may have happened.
    Timeout,
    /// Connect, write or read failed: the claim may have happened.
    Transport(String),
}

/// A complete HTTP answer.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<u64>,
}

/// A cloneable handle on the connection pool.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Upper bound for one request, response body included.
    timeout: Duration,
}

impl Http {
    pub fn new(max_idle_per_host: usize, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(max_idle_per_host).build(connector);
        Self { client, timeout }
    }

    /// Sends `req` and reads the whole body.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), SendError> {
        self.exchange(req).await.map(|a| (a.status, a.body))
    }

    /// Sends `req` and reads the whole body and the `Retry-After` header.
    pub async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Answer, SendError> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(transport)?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = resp.into_body().collect().await.map_err(transport)?.to_bytes();
            Ok(Answer { status, body, retry_after })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| SendError::Timeout)?
    }
}

/// The error with its sources, which hyper keeps the interesting part in.
fn transport(e: impl std::error::Error) -> SendError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    SendError::Transport(text)
}

/// Parses a base URL (`http://host:port`, no path) and refuses targets that
/// are not loopback addresses unless `allow_remote`: this tool generates
/// load and must not be pointed at someone else's server by accident.
pub fn base_url(raw: &str, allow_remote: bool) -> anyhow::Result<String> {
    let uri: Uri = raw.parse().with_context(|| format!("--url {raw:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {raw:?}: only http:// is supported");
    }
    let host = uri.host().with_context(|| format!("--url {raw:?}: no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        bail!("--url {raw:?}: not a loopback address (pass --allow-remote to target it)");
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        bail!("--url {raw:?}: give the base URL only, without a path");
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_by_default() {
        assert!(base_url("http://127.0.0.1:8080", false).is_ok());
        assert!(base_url("http://localhost:8080/", false).is_ok());
        assert!(base_url("http://[::1]:8080", false).is_ok());
        assert!(base_url("http://10.0.0.1:8080", false).is_err());
        assert!(base_url("http://example.com", false).is_err());
        assert!(base_url("http://example.com", true).is_ok());
        assert!(base_url("https://127.0.0.1:8080", false).is_err());
        assert!(base_url("http://127.0.0.1:8080/v1", false).is_err());
    }
}
