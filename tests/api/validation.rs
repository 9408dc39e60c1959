//! Create refuses what the claim pipeline cannot carry: every time of a
//! campaign, and every time its coupons can get, must lie in
//! 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z (API.md). A campaign at the
//! very bounds is accepted, and its claims reach MySQL.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// The valid body with `valid_until` instead of `valid_for_days`.
fn until(valid_until: &str) -> Value {
    let mut b = campaign_body(10);
    b["coupon"].as_object_mut().unwrap().remove("valid_for_days");
    b["coupon"]["valid_until"] = json!(valid_until);
    b
}

fn set(mut b: Value, path: &[&str], v: Value) -> Value {
    let mut cur = &mut b;
    for p in &path[..path.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    cur[path[path.len() - 1]] = v;
    b
}

#[tokio::test]
async fn times_the_pipeline_cannot_store_are_refused_at_create() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (set(campaign_body(10), &["starts_at"], json!("1969-12-31T23:59:59Z")), "starts_at"),
        (set(campaign_body(10), &["starts_at"], json!("0000-01-01T00:00:00Z")), "starts_at"),
        (set(campaign_body(10), &["ends_at"], json!("9999-12-31T23:59:59.999Z")), "ends_at"),
        (until("9999-12-31T23:59:59.999Z"), "coupon.valid_until"),
        (set(campaign_body(10), &["coupon", "valid_from"], json!("1969-12-31T00:00:00Z")), "coupon.valid_from"),
        (set(campaign_body(10), &["coupon", "valid_from"], json!("9999-12-31T23:59:59.001Z")), "coupon.valid_from"),
        // A claim just before ends_at would get a valid_until past 9999.
        (set(campaign_body(10), &["ends_at"], json!("9999-12-31T00:00:00Z")), "coupon.valid_for_days"),
        (
            set(
                set(campaign_body(10), &["ends_at"], json!("9990-01-03T00:00:00Z")),
                &["coupon", "valid_for_days"],
                json!(3650),
            ),
            "coupon.valid_for_days",
        ),
    ];
    for (body, field) in cases {
        let got = parts(app.post_admin("/v1/campaigns", &body).await).await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(got.1["field"], field, "body {body} gave {}", got.1);
        assert!(got.1["message"].as_str().unwrap().starts_with(field), "{}", got.1);
    }
}

/// The bounds themselves are storable: a coupon valid from the first to
/// the last moment of the range is granted and persisted as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_at_the_bounds_is_accepted_and_persisted() {
    let app = spawn_pipeline_app().await;
    let body = set(until("9999-12-31T23:59:59Z"), &["coupon", "valid_from"], json!("1970-01-01T00:00:01Z"));
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap();
    let (status, coupon) = app.claim(id, "bounds-user").await;
    assert_eq!(status, StatusCode::CREATED, "{coupon}");
    app.wait_persisted(id, 1, 30).await;
    let rows = app.state.db.campaign_coupons(id).await.unwrap();
    assert_eq!(rows[0].valid_until.to_rfc3339(), "9999-12-31T23:59:59+00:00");
    assert_eq!(rows[0].valid_from.to_rfc3339(), "1970-01-01T00:00:01+00:00");
    // With valid_for_days, the last ends_at whose coupons still fit (the
    // campaign row itself holds these times: no 503 at create).
    let last = set(campaign_body(10), &["ends_at"], json!("9999-12-24T23:59:59Z"));
    let c = app.create_campaign(last).await;
    assert_eq!(c["ends_at"], "9999-12-24T23:59:59.000Z", "{c}");
    let ten_years = set(
        set(campaign_body(10), &["ends_at"], json!("9990-01-01T00:00:00Z")),
        &["coupon", "valid_for_days"],
        json!(3650),
    );
    let c = app.create_campaign(ten_years).await;
    let got = app.get_admin(&format!("/v1/campaigns/{}", c["id"].as_str().unwrap())).await;
    assert_eq!(got.status(), StatusCode::OK);
}
