//! Rate limits: per user (after auth), per client address (before auth,
//! the proxy header honoured only when configured), per instance.

use flashgrab::config::Rate;
use reqwest::StatusCode;
use serde_json::json;

use super::{retry_after, spawn_tuned};
use crate::support::app::*;
use crate::support::metrics::{metric, scrape as metrics};

/// One user hammering claim is held to its allowance (429 with
/// Retry-After), while other users, at the same time and from the same
/// address, still get their coupons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_gets_429_while_others_still_claim() {
    let app = spawn_tuned(1, move |s| s.protect.user_rate = Some(Rate { per_sec: 2, burst: 5 })).await;
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
    let direct = spawn_tuned(1, move |s| s.protect.ip_rate = tight).await;
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

    let proxied = spawn_tuned(1, move |s| {
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
    let app = spawn_tuned(1, move |s| s.protect.claim_rate = Some(Rate { per_sec: 1, burst: 3 })).await;
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
