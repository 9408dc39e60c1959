//! The front door: request ids on every response, and connection hygiene
//! under a slowloris-style client (half-sent headers held open).

use std::time::Duration;

use flashgrab::config::FrontSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::support::metrics::metric;

#[tokio::test]
async fn every_response_carries_a_request_id_kept_when_well_formed() {
    let app = spawn_app().await;
    let get = |id: Option<&'static str>| {
        let mut r = app.client.get(app.url("/healthz"));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        async move { r.send().await.unwrap().headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned()) }
    };
    assert_eq!(get(Some("client-id-42")).await.as_deref(), Some("client-id-42"));
    for malformed in [None, Some("has spaces"), Some("<script>")] {
        let made = get(malformed).await.expect("an id is made");
        assert!(ulid::Ulid::from_string(&made).is_ok(), "{malformed:?} -> {made}");
    }
    // Errors and 404s too.
    let r = app.client.post(app.url("/v1/campaigns")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn half_open_connections_beyond_the_limit_do_not_keep_clients_out_and_are_closed() {
    let front = FrontSettings {
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        max_connections: 20,
    };
    let app = TestApp::builder().pipeline().configure(move |s| s.front = front).start().await;
    let c = app.create_campaign(campaign_body(10)).await;
    let id = c["id"].as_str().unwrap().to_owned();

    // 50 connections that send half a header and stop.
    let opened = tokio::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(app.addrs[0]).await.unwrap();
        s.write_all(b"POST /v1/campaigns/x/claim HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
        held.push(s);
    }
    // A real client still gets in, promptly (well before the header timeout).
    let fresh = reqwest::Client::new();
    let prompt = Duration::from_millis(1500);
    let r =
        tokio::time::timeout(prompt, fresh.get(app.url("/healthz")).send()).await.expect("healthz in time").unwrap();
    assert_eq!(r.status(), 200);
    let token = app.token("real-user");
    let claim = fresh.post(app.url(&format!("/v1/campaigns/{id}/claim"))).bearer_auth(token).send();
    let r = tokio::time::timeout(prompt, claim).await.expect("claim in time").unwrap();
    assert_eq!(r.status(), 201);

    // Every held connection is closed by the header timeout (plus slack).
    let deadline = opened + front.header_read_timeout + Duration::from_secs(2);
    for (i, s) in held.iter_mut().enumerate() {
        let mut buf = [0u8; 512];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {}
            Err(_) => panic!("held connection {i} still open after the header timeout"),
        }
    }
    let metrics = fresh.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |outcome: &str| metric(&metrics, &format!("flashgrab_http_connections_total{{outcome=\"{outcome}\"}}"));
    assert!(count("evicted") >= 30.0, "{metrics}");
    assert!(count("header_timeout") >= 1.0, "{metrics}");
    assert!(metrics.contains("flashgrab_http_connections_open "), "{metrics}");
}
