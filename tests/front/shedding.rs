//! Load shedding: past the in-flight bound requests are answered 503 at
//! once, not queued.

use std::time::{Duration, Instant};

use super::{retry_after, spawn_tuned};
use crate::support::app::*;
use crate::support::metrics::{metric, scrape as metrics};

/// With room for 2 requests on the backends, a burst of 60 is answered at
/// once: some served, the rest 503 with Retry-After, nothing queued or
/// timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503_at_once() {
    let app = spawn_tuned(1, move |s| s.protect.max_in_flight = 2).await;
    let id = app.create_campaign(campaign_body(1000)).await["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move {
                let path = if i % 2 == 0 { format!("/v1/campaigns/{id}/claim") } else { "/v1/me/coupons".into() };
                let method = if i % 2 == 0 { reqwest::Method::POST } else { reqwest::Method::GET };
                let r = app
                    .client
                    .request(method, app.url(&path))
                    .bearer_auth(app.token(&format!("shed-{i}")))
                    .send()
                    .await
                    .unwrap();
                let ra = retry_after(&r);
                (parts(r).await, ra)
            })
        })
        .collect();
    let mut shed = 0;
    for t in tasks {
        let ((status, body), ra) = t.await.unwrap();
        match status.as_u16() {
            200 | 201 => {}
            503 => {
                assert_error(&(status, body), 503, "unavailable");
                assert_eq!(ra, Some(1));
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(shed > 0, "a burst of 60 over 2 slots sheds some");
    assert!(started.elapsed() < Duration::from_secs(10), "nothing waited for a timeout");
    let m = metrics(&app, 0).await;
    assert_eq!(metric(&m, "flashgrab_shed_total"), f64::from(shed));
    assert_eq!(metric(&m, "flashgrab_in_flight_requests"), 0.0);
}
