//! Health endpoints and the local stack script.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn healthz_and_readyz() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"redis": "ok", "rabbitmq": "ok", "mysql": "ok"}));
}

/// `scripts/stack up` on a stack that is already up changes nothing and
/// succeeds; `status` then reports every component healthy.
#[test]
fn stack_up_twice_is_harmless() {
    let root = env!("CARGO_MANIFEST_DIR");
    for _ in 0..2 {
        let out =
            std::process::Command::new(format!("{root}/scripts/stack")).arg("up").output().expect("scripts/stack runs");
        assert!(
            out.status.success(),
            "stack up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new(format!("{root}/scripts/stack")).arg("status").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The OpenAPI document lists every endpoint of API.md with its methods,
/// the two security schemes, and the error schema; schemathesis (in
/// scripts/test) checks the live responses against it.
#[tokio::test]
async fn openapi_document_covers_the_contract() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let want = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/campaigns", "post"),
        ("/v1/campaigns", "get"),
        ("/v1/campaigns/{id}", "get"),
        ("/v1/campaigns/{id}/close", "post"),
        ("/v1/campaigns/{id}/stats", "get"),
        ("/v1/campaigns/{id}/report", "get"),
        ("/v1/campaigns/{id}/claim", "post"),
        ("/v1/me/coupons", "get"),
        ("/v1/me/coupons/{coupon_id}", "get"),
        ("/v1/coupons/{coupon_id}/redeem", "post"),
        ("/v1/coupons/{coupon_id}/release", "post"),
        // The console's additions (issue 17).
        ("/console", "get"),
        ("/v1/campaigns/{id}", "patch"),
        ("/v1/campaigns/{id}/live", "get"),
        ("/v1/campaigns/{id}/claims.csv", "get"),
        ("/v1/campaigns/{id}/events", "get"),
    ];
    for (path, method) in want {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is missing");
        if path.starts_with("/v1/") {
            let app_route = path.ends_with("/claim") || path.ends_with("/events");
            let scheme = if path.starts_with("/v1/campaigns") && !app_route { "admin_token" } else { "user_jwt" };
            assert!(op["security"][0][scheme].is_array(), "{method} {path} lacks {scheme}");
            assert!(op["responses"]["401"].is_object(), "{method} {path} lacks 401");
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    assert_eq!(schemes["user_jwt"]["bearerFormat"], "JWT");
    let error = &doc["components"]["schemas"]["Error"];
    assert!(error["required"].as_array().unwrap().contains(&json!("error")), "{error}");
    let claim = &doc["paths"]["/v1/campaigns/{id}/claim"]["post"]["responses"];
    for code in ["201", "404", "409", "410", "429", "503"] {
        assert!(claim[code].is_object(), "claim lacks {code}");
    }
}
