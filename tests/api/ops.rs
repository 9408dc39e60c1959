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
