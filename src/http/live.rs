//! The event streams (Server-Sent Events): `GET /v1/campaigns/{id}/live`
//! for the console (admin token) and `GET /v1/campaigns/{id}/events` for
//! the app (user JWT). Both read a watch channel of `service::live`: the
//! current value at once, then each new one; a comment line every 15 s
//! keeps proxies from closing an idle stream. Nothing here reads a store.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::watch;

use super::campaigns::stats_json;
use super::extract::{Admin, User};
use super::{ApiError, AppState, rfc3339};
use crate::domain::CampaignId;
use crate::service::live::{AdminFrame, Refused, UserEvent};

/// Idle streams get a comment this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn refused(r: Refused) -> ApiError {
    match r {
        Refused::NotFound => ApiError::CampaignNotFound,
        Refused::TooManyFeeds => ApiError::Unavailable { retry_after_secs: 5 },
    }
}

/// The values of `rx` as they come, the current one first; ends when the
/// producer stops (the campaign is gone, or shutdown).
fn values<T: Clone + Send + Sync + 'static>(rx: watch::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let v = rx.borrow_and_update().clone();
        Some((v, (rx, false)))
    })
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut resp = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Proxies (nginx) must not buffer the stream.
    resp.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}

fn user_event(e: &UserEvent) -> Event {
    Event::default()
        .event("status")
        .data(json!({"status": e.status, "remaining_approx": e.remaining_approx}).to_string())
}

fn admin_event(f: &AdminFrame) -> Event {
    let mut body = stats_json(&f.stats);
    body["at"] = json!(rfc3339(f.at));
    body["name"] = json!(f.stats.view.campaign.name);
    body["attempts_here"] = json!(f.attempts_here);
    Event::default().event("stats").data(body.to_string())
}

/// `GET /v1/campaigns/{id}/events` (user JWT).
pub async fn events(State(s): State<AppState>, _: User, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = CampaignId::parse(&id).ok_or(ApiError::CampaignNotFound)?;
    let rx = s.live.user_events(&id).await?.map_err(refused)?;
    // Only changes are sent: the producer sets a new value only when the
    // status or the rounded stock changed.
    Ok(sse(futures_util::StreamExt::map(values(rx), |e| Ok(user_event(&e)))))
}

/// `GET /v1/campaigns/{id}/live` (admin).
pub async fn live(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = CampaignId::parse(&id).ok_or(ApiError::CampaignNotFound)?;
    let rx = s.live.admin_frames(&id).await?.map_err(refused)?;
    let frames = futures_util::StreamExt::filter_map(values(rx), |f| async move { f.map(|f| Ok(admin_event(&f))) });
    Ok(sse(frames))
}
