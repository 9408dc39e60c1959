//! Hostile input: malformed tokens, wrong admin tokens, odd path ids,
//! oversized and malformed bodies get the documented 4xx, never a 5xx.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::app::*;
use crate::support::metrics::scrape as metrics;

/// Malformed tokens, a wrong admin token, oversized and malformed bodies,
/// path ids of odd lengths and characters: each the documented 4xx, never
/// a 5xx, on every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_the_documented_4xx_never_5xx() {
    let app = spawn_app().await;
    let id = app.create_campaign(campaign_body(10)).await["id"].as_str().unwrap().to_owned();
    let user = app.token("hostile");
    let odd_ids = [
        "x".to_owned(),
        "0".repeat(25),
        "0".repeat(27),
        "Z".repeat(26),
        "x".repeat(3000),
        "%00".to_owned(),
        "%F0%9F%92%A9".to_owned(),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        "a%20b".to_owned(),
        "01JD0000000000000000000000".to_owned(),
        "'%3B%20DROP%20TABLE%20coupons%3B--".to_owned(),
    ];
    let bad_tokens = [
        "".to_owned(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Basic dXNlcjpwYXNz".to_owned(),
        "Bearer a.b.c".to_owned(),
        "Bearer ....".to_owned(),
        format!("Bearer {}", "A".repeat(8000)),
        format!("Bearer {user}x"),
        format!("Bearer {}", user.replace('.', "")),
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.".to_owned(),
    ];
    let user_routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::POST, format!("/v1/campaigns/{id}/claim")),
        (reqwest::Method::GET, "/v1/me/coupons".into()),
        (reqwest::Method::GET, "/v1/me/coupons/01JD0000000000000000000000".into()),
    ];
    let admin_routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::POST, "/v1/campaigns".into()),
        (reqwest::Method::GET, "/v1/campaigns".into()),
        (reqwest::Method::GET, format!("/v1/campaigns/{id}")),
        (reqwest::Method::POST, format!("/v1/campaigns/{id}/close")),
        (reqwest::Method::GET, format!("/v1/campaigns/{id}/stats")),
    ];
    let mut checked = 0;
    let mut check = |got: (StatusCode, Value), want: u16, codes: &[&str], what: &str| {
        assert_eq!(got.0.as_u16(), want, "{what}: {}", got.1);
        let code = got.1["error"].as_str().unwrap_or_default().to_owned();
        assert!(codes.contains(&code.as_str()), "{what}: {}", got.1);
        assert!(got.1["message"].is_string(), "{what}: {}", got.1);
        checked += 1;
    };
    let mut undecodable = 0;

    for (method, path) in user_routes.iter().chain(&admin_routes) {
        for t in &bad_tokens {
            let mut req = app.client.request(method.clone(), app.url(path));
            if !t.is_empty() {
                req = req.header("authorization", t);
            }
            check(parts(req.send().await.unwrap()).await, 401, &["unauthorized"], &format!("{method} {path} {t:.20}"));
        }
    }
    for (method, path) in &admin_routes {
        for t in [format!("Bearer {ADMIN}x"), format!("Bearer {user}"), ADMIN.to_owned()] {
            let r = app.client.request(method.clone(), app.url(path)).header("authorization", t).send().await.unwrap();
            check(parts(r).await, 401, &["unauthorized"], &format!("wrong admin token on {path}"));
        }
    }
    for odd in &odd_ids {
        for (method, path, token, codes) in [
            (reqwest::Method::POST, format!("/v1/campaigns/{odd}/claim"), &user, &["campaign_not_found"][..]),
            (reqwest::Method::GET, format!("/v1/me/coupons/{odd}"), &user, &["coupon_not_found"][..]),
            (reqwest::Method::GET, format!("/v1/campaigns/{odd}"), &ADMIN.to_owned(), &["campaign_not_found"][..]),
            (
                reqwest::Method::GET,
                format!("/v1/campaigns/{odd}/stats"),
                &ADMIN.to_owned(),
                &["campaign_not_found"][..],
            ),
            (
                reqwest::Method::POST,
                format!("/v1/campaigns/{odd}/close"),
                &ADMIN.to_owned(),
                &["campaign_not_found"][..],
            ),
        ] {
            let r = app.client.request(method, app.url(&path)).bearer_auth(token).send().await.unwrap();
            let got = parts(r).await;
            // A path that does not decode (a NUL, bad UTF-8) never reaches
            // the handler: axum answers 400 for it, which is still a 4xx.
            if got.0 == StatusCode::BAD_REQUEST {
                undecodable += 1;
                continue;
            }
            check(got, 404, codes, &format!("odd id {path:.60}"));
        }
    }
    let bodies: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("application/json", b"{".to_vec(), 400, "invalid_request"),
        ("application/json", b"null".to_vec(), 400, "invalid_request"),
        ("application/json", b"[]".to_vec(), 400, "invalid_request"),
        ("application/json", vec![0xff, 0xfe, 0x00], 400, "invalid_request"),
        ("application/json", br#"{"total_stok": 5}"#.to_vec(), 400, "invalid_request"),
        ("application/json", br#"{"name": 1e999}"#.to_vec(), 400, "invalid_request"),
        ("text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
    ];
    for (ct, body, status, code) in bodies {
        let r = app
            .client
            .post(app.url("/v1/campaigns"))
            .bearer_auth(ADMIN)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        check(parts(r).await, status, &[code], &format!("body {ct} {status}"));
    }
    // A declared size over the limit is refused before anything is read,
    // even on a route that takes no body: the client sends only the head.
    for (path, token) in
        [("/v1/campaigns".to_owned(), ADMIN.to_owned()), (format!("/v1/campaigns/{id}/claim"), user.clone())]
    {
        let got = head_only_post(&app, &path, &token, 70 * 1024).await;
        check(got, 413, &["payload_too_large"], &format!("{path} with a huge body"));
    }
    let r = app.client.get(app.url("/v1/me/coupons?status=%FF&x=1")).bearer_auth(&user).send().await.unwrap();
    check(parts(r).await, 400, &["invalid_request"], "bad query");
    let r = app.client.delete(app.url("/v1/campaigns")).bearer_auth(ADMIN).send().await.unwrap();
    check(parts(r).await, 405, &["method_not_allowed"], "wrong method");
    assert!(checked + undecodable > 150, "{checked} + {undecodable} cases");
    assert!(undecodable <= 10, "only undecodable paths are 400: {undecodable}");

    let m = metrics(&app, 0).await;
    assert!(!m.lines().any(|l| l.starts_with("flashgrab_http_requests_total") && l.contains("status=\"5")), "{m}");
    assert_eq!(app.stats(&id).await["claimed"], 0);
}

/// POSTs only a request head declaring `length` bytes of JSON, and reads
/// the answer: proves the server refuses without reading the body (with a
/// real body in flight the client may see a broken pipe instead, when the
/// server answers and closes first).
async fn head_only_post(app: &TestApp, path: &str, token: &str, length: usize) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(app.addrs[0]).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).expect("a status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (StatusCode::from_u16(status).unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}
