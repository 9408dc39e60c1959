//! `/metrics`: the Prometheus text format and the families of the front
//! end and the pipeline.

use reqwest::StatusCode;

use crate::support::app::*;
use crate::support::metrics::{claims_of, metric, scrape as metrics};

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
}
