//! The admin calls of the harness: create the campaign, read its stats.
//! The claim request itself is built in `engine` (hot path).

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http_body_util::Full;
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::json;

use crate::client::{Http, SendError};

/// What the harness asks for.
pub struct CampaignSpec {
    pub name: String,
    pub total_stock: u64,
    /// `None`: let the service choose from the cluster size.
    pub shards: Option<u32>,
    /// How long the campaign stays open; the run must fit in it.
    pub open_for: chrono::Duration,
}

/// The fields of `GET /v1/campaigns/{id}/stats` the invariants need.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Stats {
    pub total_stock: u64,
    pub remaining: u64,
    pub claimed: u64,
}

fn describe(e: SendError) -> anyhow::Error {
    match e {
        SendError::Timeout => anyhow::anyhow!("no answer within the timeout"),
        SendError::Transport(t) => anyhow::anyhow!("{t}"),
    }
}

/// Creates a campaign starting a second ago (live at once), one coupon per
/// user, and returns its id.
pub async fn create_campaign(
    http: &Http,
    base: &str,
    admin_token: &str,
    spec: &CampaignSpec,
) -> anyhow::Result<String> {
    let now = Utc::now();
    let mut body = json!({
        "name": spec.name,
        "total_stock": spec.total_stock,
        "per_user_limit": 1,
        "starts_at": (now - chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true),
        "ends_at": (now + spec.open_for).to_rfc3339_opts(SecondsFormat::Millis, true),
        "coupon": {"discount": {"type": "fixed", "amount_cents": 500}, "valid_for_days": 7},
    });
    if let Some(s) = spec.shards {
        body["shards"] = json!(s);
    }
    let req = Request::post(format!("{base}/v1/campaigns"))
        .header(AUTHORIZATION, format!("Bearer {admin_token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let (status, reply) = http.send(req).await.map_err(describe).context("POST /v1/campaigns")?;
    if status.as_u16() != 201 {
        bail!("POST /v1/campaigns answered {status}: {}", String::from_utf8_lossy(&reply));
    }
    #[derive(Deserialize)]
    struct Created {
        id: String,
    }
    let created: Created = serde_json::from_slice(&reply).context("POST /v1/campaigns: reply without an id")?;
    Ok(created.id)
}

pub async fn fetch_stats(http: &Http, base: &str, admin_token: &str, campaign: &str) -> anyhow::Result<Stats> {
    let path = format!("/v1/campaigns/{campaign}/stats");
    let req = Request::get(format!("{base}{path}"))
        .header(AUTHORIZATION, format!("Bearer {admin_token}"))
        .body(Full::new(Bytes::new()))?;
    let (status, reply) = http.send(req).await.map_err(describe).with_context(|| format!("GET {path}"))?;
    if status.as_u16() != 200 {
        bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&reply));
    }
    serde_json::from_slice(&reply).with_context(|| format!("GET {path}: unexpected body"))
}
