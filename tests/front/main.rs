//! The front end under floods and outages (issue "Protect the front end"):
//! rate limits, load shedding, the in-memory fast paths and their
//! broadcast, the Redis breaker, hostile input.
//!
//! Tests that count Redis commands or stop Redis run against a private
//! 3-master Redis Cluster that the test starts on free ports (see
//! [`PrivateCluster`]): INFO commandstats there counts only that test's
//! instances, and freezing it disturbs no other test or developer. The rest
//! use the shared local stack like `tests/api`.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../support/private_cluster.rs"]
mod private_cluster;

use std::time::{Duration, Instant};

use flashgrab::config::{Rate, Settings};
use flashgrab::startup::Application;
use reqwest::StatusCode;
use serde_json::{Value, json};

use helpers::*;
use private_cluster::PrivateCluster;

/// Starts `n` instances sharing one prefix and database with `settings`
/// adjusted by `tune` (limits, Redis nodes, timeouts).
async fn spawn_tuned(n: usize, tune: impl Fn(&mut Settings)) -> TestApp {
    let (prefix, db_name) = fresh_names();
    let mut s = settings(&prefix, &db_name);
    s.run_relay = false;
    s.run_persist = false;
    tune(&mut s);
    let mut addrs = Vec::new();
    let mut state = None;
    for _ in 0..n {
        let app = Application::build(&s).await.expect("the test instance starts");
        addrs.push(app.local_addr());
        state.get_or_insert_with(|| app.state().clone());
        tokio::spawn(app.run_until(std::future::pending()));
    }
    let state = state.expect("n >= 1");
    TestApp {
        addrs,
        client: reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap(),
        jwt: flashgrab::auth::JwtKeys::new(SECRET.as_bytes()),
        prefix,
        db_name,
        stock: state.stock.clone(),
        state,
    }
}

async fn metrics(app: &TestApp, instance: usize) -> String {
    app.client.get(app.url_on(instance, "/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of one sample line of /metrics (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every `flashgrab_claims_total` series of `outcome` (with and
/// without the `campaign` label: the family's total).
fn claims_of(text: &str, outcome: &str) -> f64 {
    let with_label = format!("flashgrab_claims_total{{outcome=\"{outcome}\",");
    let without = format!("flashgrab_claims_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .filter(|l| l.starts_with(&with_label) || l.starts_with(&without))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers().get("retry-after")?.to_str().ok()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------

/// One user hammering claim is held to its allowance (429 with
/// Retry-After), while other users, at the same time and from the same
/// address, still get their coupons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_gets_429_while_others_still_claim() {
    let app = spawn_tuned(1, |s| s.protect.user_rate = Some(Rate { per_sec: 2, burst: 5 })).await;
    let mut body = campaign_body(10_000);
    body["per_user_limit"] = json!(100);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();

    let flood: Vec<_> = (0..60)
        .map(|_| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move {
                let r = app
                    .client
                    .post(app.url(&format!("/v1/campaigns/{id}/claim")))
                    .bearer_auth(app.token("flooder"))
                    .send()
                    .await
                    .unwrap();
                let ra = retry_after(&r);
                (parts(r).await, ra)
            })
        })
        .collect();
    let others: Vec<_> = (0..20)
        .map(|i| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move { app.claim(&id, &format!("patient-{i}")).await })
        })
        .collect();

    let (mut granted, mut limited) = (0, 0);
    for t in flood {
        let ((status, body), ra) = t.await.unwrap();
        match status.as_u16() {
            201 => granted += 1,
            429 => {
                assert_error(&(status, body), 429, "rate_limited");
                assert!(ra.is_some_and(|s| s >= 1), "Retry-After on a 429");
                limited += 1;
            }
            other => panic!("flooder got {other}: {body}"),
        }
    }
    assert!(granted <= 6, "at most the burst (+1 refill) is granted: {granted}");
    assert_eq!(granted + limited, 60);
    for t in others {
        let got = t.await.unwrap();
        assert_eq!(got.0, StatusCode::CREATED, "other users are not limited: {}", got.1);
    }
    let m = metrics(&app, 0).await;
    assert_eq!(metric(&m, "flashgrab_rate_limited_total{limiter=\"user\"}"), f64::from(limited));
    assert_eq!(app.stats(&id).await["claimed"], granted + 20);
}

/// Per client address, before auth. The trusted proxy header is honoured
/// only when configured: without it, a forged X-Forwarded-For changes
/// nothing; with it, each forwarded client has its own allowance.
#[tokio::test]
async fn a_flooding_address_gets_429_and_the_proxy_header_counts_only_when_configured() {
    let tight = Some(Rate { per_sec: 1, burst: 5 });
    let direct = spawn_tuned(1, |s| s.protect.ip_rate = tight).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = direct
            .client
            .get(direct.url("/v1/me/coupons"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&r).is_some());
            assert_error(&parts(r).await, 429, "rate_limited");
        }
    }
    // No token at all: the first five are 401 (the limit comes first, auth
    // second), the rest 429, whatever the forged header says.
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    // Ops endpoints are never limited.
    for _ in 0..20 {
        assert_eq!(direct.client.get(direct.url("/healthz")).send().await.unwrap().status(), 200);
    }

    let proxied = spawn_tuned(1, |s| {
        s.protect.ip_rate = tight;
        s.protect.trusted_proxy_header = Some("x-forwarded-for".into());
    })
    .await;
    for i in 0..12 {
        let r = proxied
            .client
            .get(proxied.url("/v1/me/coupons"))
            .header("x-forwarded-for", format!("6.6.6.6, 203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "each forwarded client has its own bucket");
    }
    let mut last = StatusCode::OK;
    for _ in 0..8 {
        let r = proxied
            .client
            .get(proxied.url("/v1/me/coupons"))
            .header("x-forwarded-for", "198.51.100.9")
            .send()
            .await
            .unwrap();
        last = r.status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "one forwarded client flooding is limited");
    let m = metrics(&proxied, 0).await;
    assert!(metric(&m, "flashgrab_rate_limited_total{limiter=\"ip\"}") >= 3.0, "{m}");
    assert!(metric(&m, "flashgrab_rate_limiter_keys{scope=\"ip\"}") >= 1.0, "{m}");
}

/// The instance's claim rate: claims past the fast paths beyond it are
/// 429 at once.
#[tokio::test]
async fn the_instance_claim_rate_is_enforced() {
    let app = spawn_tuned(1, |s| s.protect.claim_rate = Some(Rate { per_sec: 1, burst: 3 })).await;
    let id = app.create_campaign(campaign_body(100)).await["id"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    for i in 0..6 {
        got.push(app.claim(&id, &format!("rate-{i}")).await);
    }
    assert_eq!(got.iter().filter(|g| g.0 == StatusCode::CREATED).count(), 3, "{got:?}");
    for g in got.iter().filter(|g| g.0 != StatusCode::CREATED) {
        assert_error(g, 429, "rate_limited");
    }
}

// ---------------------------------------------------------------------------
// Load shedding
// ---------------------------------------------------------------------------

/// With room for 2 requests on the backends, a burst of 60 is answered at
/// once: some served, the rest 503 with Retry-After, nothing queued or
/// timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503_at_once() {
    let app = spawn_tuned(1, |s| s.protect.max_in_flight = 2).await;
    let id = app.create_campaign(campaign_body(1000)).await["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move {
                let path = if i % 2 == 0 { format!("/v1/campaigns/{id}/claim") } else { "/v1/me/coupons".into() };
                let method = if i % 2 == 0 { reqwest::Method::POST } else { reqwest::Method::GET };
                let r = app
                    .client
                    .request(method, app.url(&path))
                    .bearer_auth(app.token(&format!("shed-{i}")))
                    .send()
                    .await
                    .unwrap();
                let ra = retry_after(&r);
                (parts(r).await, ra)
            })
        })
        .collect();
    let mut shed = 0;
    for t in tasks {
        let ((status, body), ra) = t.await.unwrap();
        match status.as_u16() {
            200 | 201 => {}
            503 => {
                assert_error(&(status, body), 503, "unavailable");
                assert_eq!(ra, Some(1));
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(shed > 0, "a burst of 60 over 2 slots sheds some");
    assert!(started.elapsed() < Duration::from_secs(10), "nothing waited for a timeout");
    let m = metrics(&app, 0).await;
    assert_eq!(metric(&m, "flashgrab_shed_total"), f64::from(shed));
    assert_eq!(metric(&m, "flashgrab_in_flight_requests"), 0.0);
}

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// A private Redis Cluster for counting commands and for outages
// ---------------------------------------------------------------------------

/// Once one instance saw the campaign sold out, every instance answers
/// 410 from memory: a flood on both never reaches Redis (not a single
/// script call). A close on one instance reaches the others the same way.
/// Before the start and after the end, claims are answered from memory
/// too. A keyed retry still reaches Redis and gets its coupon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_paths_and_the_sold_out_broadcast_never_touch_redis() {
    let cluster = PrivateCluster::start().await;
    let nodes = cluster.nodes();
    // A long cache TTL: an instance would keep its open copy of a closed
    // campaign for an hour but for the close notice.
    let app = spawn_tuned(2, |s| {
        s.redis_nodes = nodes.clone();
        s.campaign_cache_ttl = Duration::from_secs(3600);
    })
    .await;

    // Sold out, seen by instance 0 only.
    let mut body = campaign_body(5);
    body["shards"] = json!(3);
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let kept = app.claim_on(0, &id, "keeper", Some("k-1")).await;
    assert_eq!(kept.0, StatusCode::CREATED);
    for i in 0..4 {
        assert_eq!(app.claim_on(0, &id, &format!("early-{i}"), None).await.0, StatusCode::CREATED);
    }
    // A campaign instance 1 knows (cached, open), then closed on instance 0.
    let closing = app.create_campaign(campaign_body(100)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.claim_on(1, &closing, "before-close", None).await.0, StatusCode::CREATED);
    assert_error(&app.claim_on(0, &id, "first-to-see-it", None).await, 410, "sold_out");
    let r =
        app.client.post(app.url(&format!("/v1/campaigns/{closing}/close"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Pub/sub is asynchronous; on one machine a notice takes well under a
    // millisecond, a second is plenty.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = cluster.script_calls();
    assert_error(&app.claim_on(1, &id, "told", None).await, 410, "sold_out");
    assert_error(&app.claim_on(1, &closing, "told", None).await, 410, "ended");
    assert_eq!(cluster.script_calls(), before, "instance 1 answered from the notices, not from Redis");

    // Not started yet, and already ended.
    let mut later = campaign_body(10);
    later["starts_at"] = json!(at(3600));
    later["ends_at"] = json!(at(7200));
    let later = app.create_campaign(later).await["id"].as_str().unwrap().to_owned();
    let mut short = campaign_body(10);
    short["ends_at"] = json!(at(1));
    let short = app.create_campaign(short).await["id"].as_str().unwrap().to_owned();
    // Instance 1 has not seen these campaigns: one lookup fills its cache.
    assert_error(&app.claim_on(1, &later, "warm", None).await, 409, "not_started");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_error(&app.claim_on(1, &short, "warm", None).await, 410, "ended");

    let before = cluster.script_calls();
    let flood: Vec<_> = (0..400)
        .map(|i| {
            let app = app.clone();
            let targets = [id.clone(), later.clone(), short.clone(), closing.clone()];
            tokio::spawn(async move {
                let got = app.claim_on(i / 4, &targets[i % 4], &format!("flood-{i}"), None).await;
                (i % 4, got)
            })
        })
        .collect();
    for t in flood {
        let (kind, got) = t.await.unwrap();
        match kind {
            0 => assert_error(&got, 410, "sold_out"),
            1 => assert_error(&got, 409, "not_started"),
            _ => assert_error(&got, 410, "ended"),
        }
    }
    assert_eq!(cluster.script_calls(), before, "the flood never reached Redis");

    let replay = app.claim_on(1, &id, "keeper", Some("k-1")).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.1);
    assert_eq!(replay.1["id"], kept.1["id"]);
    assert!(cluster.script_calls() > before, "the keyed retry did reach Redis");
    let m = metrics(&app, 1).await;
    assert!(claims_of(&m, "sold_out") >= 50.0, "{m}");
    app.cleanup().await;
}

/// With the Redis Cluster frozen (every node SIGSTOPped: connections hang,
/// the worst case), the breaker opens after a few timeouts and claims are
/// answered 503 at once; when Redis comes back the breaker closes by itself
/// and claims are granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_fail_fast_while_redis_is_down_and_recover() {
    let cluster = PrivateCluster::start().await;
    let nodes = cluster.nodes();
    let app = spawn_tuned(1, |s| {
        s.redis_nodes = nodes.clone();
        s.redis_timeout = Duration::from_millis(300);
        s.protect.breaker_failures = 3;
        s.protect.breaker_open = Duration::from_millis(500);
    })
    .await;
    let id = app.create_campaign(campaign_body(1000)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.claim(&id, "before").await.0, StatusCode::CREATED);

    cluster.signal_all("-STOP");
    // Claims that waited for the timeout reached a frozen node (which runs
    // them when it wakes up); counted to bound `claimed` below.
    let mut reached_redis = 0;
    // The first few wait for the Redis timeout and open the breakers (one
    // per master: each opens after 3 of its own timeouts)...
    for i in 0..3 {
        let t = Instant::now();
        let got = app.claim(&id, &format!("opening-{i}")).await;
        assert_error(&got, 503, "unavailable");
        reached_redis += usize::from(t.elapsed() >= Duration::from_millis(250));
    }
    // ...then claims are refused at once (but for the rest of the
    // openings and a probe now and then).
    let started = Instant::now();
    for i in 0..50 {
        let t = Instant::now();
        let got = app.claim(&id, &format!("down-{i}")).await;
        assert_error(&got, 503, "unavailable");
        reached_redis += usize::from(t.elapsed() >= Duration::from_millis(250));
    }
    let per_claim = started.elapsed() / 50;
    assert!(per_claim < Duration::from_millis(100), "503 at once while open: {per_claim:?} per claim");
    let m = metrics(&app, 0).await;
    assert!(metric(&m, "flashgrab_redis_breaker_opened_total") >= 1.0, "{m}");
    assert!(metric(&m, "flashgrab_redis_breaker_rejected_total") >= 40.0, "{m}");
    assert_ne!(metric(&m, "flashgrab_redis_breaker_state"), 0.0, "{m}");

    cluster.signal_all("-CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let got = app.claim(&id, &format!("after-{n}")).await;
        if got.0 == StatusCode::CREATED {
            break;
        }
        assert_error(&got, 503, "unavailable");
        assert!(Instant::now() < deadline, "claims never recovered after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        assert_eq!(app.claim(&id, &format!("recovered-{i}")).await.0, StatusCode::CREATED);
    }
    let m = metrics(&app, 0).await;
    assert_eq!(metric(&m, "flashgrab_redis_breaker_state"), 0.0, "closed again: {m}");
    // 12 answered 201. The claims that timed out while opening the
    // breakers (and the failed probes) were sent to a frozen node: it ran
    // them when it woke up. A 503 means "maybe granted" (API.md); it is
    // never a 201 that was not.
    let claimed = app.stats(&id).await["claimed"].as_u64().unwrap();
    assert!((12..=12 + reached_redis as u64).contains(&claimed), "{claimed} claimed, {reached_redis} timed out");
    app.cleanup().await;
}

/// `/metrics` speaks the Prometheus text format and carries the families
/// the issue asks for.
#[tokio::test]
async fn metrics_expose_the_front_end_and_the_pipeline() {
    let app = spawn_app().await;
    let id = app.create_campaign(campaign_body(10)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.claim(&id, "m1").await.0, StatusCode::CREATED);
    assert_error(&app.claim(&id, "m1").await, 409, "already_claimed");
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let m = r.text().await.unwrap();
    assert_eq!(metric(&m, "flashgrab_http_requests_total{route=\"/v1/campaigns/{id}/claim\",status=\"201\"}"), 1.0);
    assert_eq!(metric(&m, "flashgrab_http_requests_total{route=\"/v1/campaigns\",status=\"201\"}"), 1.0);
    // A live campaign's claims carry its name and id; the rest (none here)
    // stays in the series without them.
    let labelled = |outcome: &str| {
        format!("flashgrab_claims_total{{outcome=\"{outcome}\",campaign=\"test drop\",campaign_id=\"{id}\"}}")
    };
    assert_eq!(metric(&m, &labelled("granted")), 1.0, "{m}");
    assert_eq!(metric(&m, &labelled("already_claimed")), 1.0, "{m}");
    assert_eq!(metric(&m, "flashgrab_claims_total{outcome=\"granted\"}"), 0.0);
    assert_eq!(claims_of(&m, "granted"), 1.0);
    assert_eq!(claims_of(&m, "already_claimed"), 1.0);
    assert_eq!(metric(&m, "flashgrab_claim_duration_seconds_count{outcome=\"granted\"}"), 1.0);
    for family in [
        "flashgrab_rate_limited_total",
        "flashgrab_shed_total",
        "flashgrab_in_flight_requests",
        "flashgrab_redis_breaker_state",
        "flashgrab_breaker_open",
        "flashgrab_relayed_total",
        "flashgrab_outbox_age_seconds",
        "flashgrab_outbox_length",
        "flashgrab_persisted_total",
        "flashgrab_persist_lag_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {family} ")), "{family} missing:\n{m}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "bad sample line {l}");
    }
    // Unknown paths share one label.
    app.client.get(app.url("/no/such/path/123")).send().await.unwrap();
    let m = metrics(&app, 0).await;
    assert_eq!(metric(&m, "flashgrab_http_requests_total{route=\"unmatched\",status=\"404\"}"), 1.0);
    app.cleanup().await;
}
