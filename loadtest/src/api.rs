//! The calls of the harness outside the load itself: create the campaign,
//! read its stats, list a user's coupons. The claim and redeem requests are
//! built in `engine` (hot path).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::client::{Http, SendError};

/// What the harness asks for.
pub struct CampaignSpec {
    pub name: String,
    pub total_stock: u64,
    /// `None`: let the service choose from the cluster size.
    pub shards: Option<u32>,
    /// How long after its creation the campaign starts (the drop waits for it).
    pub starts_in: chrono::Duration,
    /// How long the campaign stays open after its start; the run must fit in it.
    pub open_for: chrono::Duration,
}

/// Discount of every coupon the harness creates (fixed, no minimum spend,
/// no restriction), so a redemption's expected discount is known.
pub const DISCOUNT_CENTS: i64 = 500;

/// The fields of `GET /v1/campaigns/{id}/stats` the invariants need.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Stats {
    pub total_stock: u64,
    pub remaining: u64,
    pub claimed: u64,
    /// Rows in the database; converges to `claimed`.
    #[serde(default)]
    pub persisted: u64,
    #[serde(default)]
    pub redeemed: u64,
    #[serde(default)]
    pub discount_total_cents: i64,
}

/// How long the calls outside the load keep retrying a 503, a 429 or a
/// transport error: a breaker that opened during a Redis failover, for
/// example, must not turn a run's verdict into "stats unreadable".
const RETRY_FOR: Duration = Duration::from_secs(20);

/// Sends the request `build` makes, again after a pause (200 ms doubling to
/// 2 s) while the answer is 503, 429 or no answer, for up to [`RETRY_FOR`].
async fn send_retrying(
    http: &Http,
    build: impl Fn() -> Result<Request<Full<Bytes>>, hyper::http::Error>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(200);
    loop {
        let answer = http.send(build()?).await;
        let again = match &answer {
            Ok((status, _)) => matches!(status.as_u16(), 429 | 503),
            Err(_) => true,
        };
        if !again || Instant::now() + pause > deadline {
            return answer.map_err(describe);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

fn describe(e: SendError) -> anyhow::Error {
    match e {
        SendError::Timeout => anyhow::anyhow!("no answer within the timeout"),
        SendError::Transport(t) => anyhow::anyhow!("{t}"),
    }
}

/// A created campaign.
pub struct Created {
    pub id: String,
    pub starts_at: chrono::DateTime<Utc>,
}

/// Creates a campaign with one coupon per user starting `spec.starts_in`
/// from now (a zero or negative value makes it live at once: it then starts
/// a second ago) and returns its id and start.
pub async fn create_campaign(
    http: &Http,
    base: &str,
    admin_token: &str,
    spec: &CampaignSpec,
) -> anyhow::Result<Created> {
    let now = Utc::now();
    let starts_at = if spec.starts_in > chrono::Duration::zero() {
        now + spec.starts_in
    } else {
        now - chrono::Duration::seconds(1)
    };
    let mut body = json!({
        "name": spec.name,
        "total_stock": spec.total_stock,
        "per_user_limit": 1,
        "starts_at": starts_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "ends_at": (starts_at + spec.open_for).to_rfc3339_opts(SecondsFormat::Millis, true),
        "coupon": {"discount": {"type": "fixed", "amount_cents": DISCOUNT_CENTS}, "valid_for_days": 7},
    });
    if let Some(s) = spec.shards {
        body["shards"] = json!(s);
    }
    let body = Bytes::from(body.to_string());
    // A retried creation after a lost answer may leave an unused campaign:
    // harmless, the run uses the one whose id it got.
    let (status, reply) = send_retrying(http, || {
        Request::post(format!("{base}/v1/campaigns"))
            .header(AUTHORIZATION, format!("Bearer {admin_token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
    })
    .await
    .context("POST /v1/campaigns")?;
    if status.as_u16() != 201 {
        bail!("POST /v1/campaigns answered {status}: {}", String::from_utf8_lossy(&reply));
    }
    #[derive(Deserialize)]
    struct Reply {
        id: String,
    }
    let created: Reply = serde_json::from_slice(&reply).context("POST /v1/campaigns: reply without an id")?;
    Ok(Created { id: created.id, starts_at })
}

pub async fn fetch_stats(http: &Http, base: &str, admin_token: &str, campaign: &str) -> anyhow::Result<Stats> {
    let path = format!("/v1/campaigns/{campaign}/stats");
    let (status, reply) = send_retrying(http, || {
        Request::get(format!("{base}{path}"))
            .header(AUTHORIZATION, format!("Bearer {admin_token}"))
            .body(Full::new(Bytes::new()))
    })
    .await
    .with_context(|| format!("GET {path}"))?;
    if status.as_u16() != 200 {
        bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&reply));
    }
    serde_json::from_slice(&reply).with_context(|| format!("GET {path}: unexpected body"))
}

/// The coupon ids `GET /v1/me/coupons?campaign_id=` lists for one user.
pub async fn my_coupons(http: &Http, base: &str, auth: &HeaderValue, campaign: &str) -> anyhow::Result<Vec<String>> {
    let path = format!("/v1/me/coupons?campaign_id={campaign}");
    let (status, reply) = send_retrying(http, || {
        Request::get(format!("{base}{path}")).header(AUTHORIZATION, auth.clone()).body(Full::new(Bytes::new()))
    })
    .await
    .with_context(|| format!("GET {path}"))?;
    if status.as_u16() != 200 {
        bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&reply));
    }
    #[derive(Deserialize)]
    struct Coupon {
        id: String,
    }
    #[derive(Deserialize)]
    struct Coupons {
        coupons: Vec<Coupon>,
    }
    let list: Coupons = serde_json::from_slice(&reply).with_context(|| format!("GET {path}: unexpected body"))?;
    Ok(list.coupons.into_iter().map(|c| c.id).collect())
}

/// The terms of an existing campaign the harness reads (`--campaign ID`).
#[derive(Debug, Deserialize)]
pub struct Staged {
    pub id: String,
    pub status: String,
    pub total_stock: u64,
    pub per_user_limit: u32,
    pub starts_at: chrono::DateTime<Utc>,
    pub ends_at: chrono::DateTime<Utc>,
}

/// `GET /v1/campaigns/{id}`.
pub async fn get_campaign(http: &Http, base: &str, admin_token: &str, campaign: &str) -> anyhow::Result<Staged> {
    let path = format!("/v1/campaigns/{campaign}");
    let (status, reply) = send_retrying(http, || {
        Request::get(format!("{base}{path}"))
            .header(AUTHORIZATION, format!("Bearer {admin_token}"))
            .body(Full::new(Bytes::new()))
    })
    .await
    .with_context(|| format!("GET {path}"))?;
    match status.as_u16() {
        200 => serde_json::from_slice(&reply).with_context(|| format!("GET {path}: unexpected body")),
        404 => bail!("--campaign {campaign}: no such campaign on {base}"),
        _ => bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&reply)),
    }
}
