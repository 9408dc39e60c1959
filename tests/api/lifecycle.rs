//! Campaign lifecycle events on the events exchange: started, sold_out,
//! closed, ended, each once for the campaign although two instances publish
//! (docs/ARCHITECTURE.md, "Lifecycle events").

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn each_lifecycle_event_arrives_once_as_documented() {
    let app = TestApp::builder().instances(2).pipeline().start().await;
    let (conn, mut deliveries) = listen_to_events(&app).await;

    let mut body = campaign_body(2);
    body["starts_at"] = json!(at(1));
    body["ends_at"] = json!(at(5));
    let c = app.create_campaign(body).await;
    let id = c["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for user in ["a", "b"] {
        assert_eq!(app.claim(&id, user).await.0, 201);
    }
    let closed = app.post_admin(&format!("/v1/campaigns/{id}/close"), &json!({})).await;
    assert_eq!(closed.status(), 200);

    // Until the end has passed and a few publisher passes later (a second
    // copy from the other instance would show up here).
    let mut seen: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all_four = seen.len() == 4;
        let wait = if all_four {
            Duration::from_secs(3)
        } else {
            until.saturating_duration_since(tokio::time::Instant::now())
        };
        let Ok(Some(Ok(d))) = tokio::time::timeout(wait, deliveries.next()).await else { break };
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        let Some(kind) = v["kind"].as_str().filter(|k| k.starts_with("campaign.")) else { continue };
        assert_eq!(d.properties.message_id().as_ref().map(|m| m.as_str()), v["id"].as_str(), "message_id = id");
        seen.entry(kind.to_owned()).or_default().push((d.routing_key.as_str().to_owned(), v));
    }
    let stored = app.get_admin(&format!("/v1/campaigns/{id}")).await.json::<Value>().await.unwrap();
    let want_at = |k: &str| match k {
        "started" => Some(c["starts_at"].clone()),
        "ended" => Some(c["ends_at"].clone()),
        "closed" => Some(stored["closed_at"].clone()),
        _ => None,
    };
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["campaign.closed", "campaign.ended", "campaign.sold_out", "campaign.started"]
    );
    for (kind, copies) in &seen {
        assert_eq!(copies.len(), 1, "{kind} once across both instances: {copies:?}");
        let (routing, v) = &copies[0];
        let fact = kind.trim_start_matches("campaign.");
        assert_eq!(routing, kind);
        assert_eq!(v.as_object().unwrap().keys().cloned().collect::<Vec<_>>(), ["at", "campaign_id", "id", "kind"]);
        assert_eq!(v["campaign_id"], id.as_str());
        assert_eq!(v["id"], format!("{id}:{fact}"));
        if let Some(at) = want_at(fact) {
            let parse = |t: &Value| chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap()).unwrap();
            assert_eq!(parse(&v["at"]), parse(&at), "{kind} at");
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}
