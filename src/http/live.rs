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
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::campaigns::StatsBody;
use super::error::{ErrorBody, Refusals};
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

/// `event: stats` of `GET /v1/campaigns/{id}/live`: the stats body plus
/// the moment it was read.
#[derive(Serialize, ToSchema)]
pub struct LiveStats<'a> {
    #[serde(flatten)]
    stats: StatsBody<'a>,
    name: &'a str,
    #[schema(format = DateTime)]
    at: String,
    /// Claims of the campaign that reached this instance so far (any outcome).
    attempts_here: u64,
}

fn user_event(e: &UserEvent) -> Event {
    Event::default().event("status").data(serde_json::to_string(e).expect("a status event serializes"))
}

fn admin_event(f: &AdminFrame) -> Event {
    let body = LiveStats {
        stats: StatsBody::of(&f.stats),
        name: &f.stats.view.campaign.name,
        at: rfc3339(f.at),
        attempts_here: f.attempts_here,
    };
    Event::default().event("stats").data(serde_json::to_string(&body).expect("a stats frame serializes"))
}

/// `GET /v1/campaigns/{id}/events` (user JWT).
#[utoipa::path(operation_id = "campaign_events", get, path = "/v1/campaigns/{id}/events", tag = "claims", security(("user_jwt" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: status`, `data:` a StatusEvent, at once and on every change (status, or the rounded stock; at most 4 a second)", body = crate::service::live::UserEvent, content_type = "text/event-stream"),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        Refusals))]
pub async fn events(State(s): State<AppState>, _: User, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = CampaignId::parse(&id).ok_or(ApiError::CampaignNotFound)?;
    let rx = s.live.user_events(&id).await?.map_err(refused)?;
    // Only changes are sent: the producer sets a new value only when the
    // status or the rounded stock changed.
    Ok(sse(futures_util::StreamExt::map(values(rx), |e| Ok(user_event(&e)))))
}

/// `GET /v1/campaigns/{id}/live` (admin).
#[utoipa::path(operation_id = "campaign_live", get, path = "/v1/campaigns/{id}/live", tag = "campaigns", security(("admin_token" = [])),
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: stats`, `data:` a LiveStats object, once a second", body = LiveStats, content_type = "text/event-stream"),
        (status = 404, description = "`campaign_not_found`", body = ErrorBody),
        Refusals,
        // After `Refusals`: this 503 replaces its.
        (status = 503, description = "`unavailable` (also: too many campaigns watched on this instance)", body = ErrorBody, headers(("Retry-After" = u64)))))]
pub async fn live(State(s): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = CampaignId::parse(&id).ok_or(ApiError::CampaignNotFound)?;
    let rx = s.live.admin_frames(&id).await?.map_err(refused)?;
    let frames = futures_util::StreamExt::filter_map(values(rx), |f| async move { f.map(|f| Ok(admin_event(&f))) });
    Ok(sse(frames))
}
