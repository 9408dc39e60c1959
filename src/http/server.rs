//! The front door: the accept loop and what each connection may cost.
//!
//! hyper serves each connection (HTTP/1.1, keep-alive); around it this module
//! keeps three bounds a slowloris client would otherwise exhaust (file
//! descriptors and memory, not CPU):
//!
//! - **header read timeout** (`FLASHGRAB_HEADER_READ_TIMEOUT_MS`): a request
//!   header must be complete within this of the connection's accept, or of
//!   the first byte of a later request on it. Bytes trickled in do not
//!   extend it.
//! - **idle timeout** (`FLASHGRAB_IDLE_TIMEOUT_MS`): a keep-alive connection
//!   with no request for this long is closed.
//! - **connection limit** (`FLASHGRAB_MAX_CONNECTIONS`): at the limit a new
//!   connection takes the place of the oldest one that is doing nothing
//!   useful (waiting for a header or idle), which is closed; when every open
//!   connection has a request in flight the new one is answered 503 and
//!   closed at once. So an attacker holding the maximum of half-sent headers
//!   cannot keep a real client out, and no request in flight is cut.
//!
//! A connection's phase is one atomic word (phase and since when) updated
//! by the I/O wrapper (first byte of a request) and the service (request
//! started, answered); a watchdog task per connection sleeps until the
//! phase's deadline and closes the connection if the phase has not moved.
//! Counters are in `/metrics` (`flashgrab_http_connections*`).
//!
//! Each request also gets its id and log context here, before the router
//! (`request_id`: cheaper than a layer of the router).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::FrontSettings;
use crate::http::request_id::{RequestIds, X_REQUEST_ID};
pub use crate::metrics::http::ConnectionStats;

/// The phase of one connection, packed: the top two bits say which, the
/// rest milliseconds since the server's epoch when it began.
struct Activity {
    word: AtomicU64,
    epoch: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request header.
    Header = 0,
    /// A request is being served.
    Busy = 1,
    /// Between requests (keep-alive).
    Idle = 2,
}

const PHASE_SHIFT: u32 = 62;
const SINCE_MASK: u64 = (1 << PHASE_SHIFT) - 1;

impl Activity {
    fn new(epoch: Instant) -> Self {
        let a = Self { word: AtomicU64::new(0), epoch };
        a.set(Phase::Header);
        a
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set(&self, phase: Phase) {
        self.word.store(((phase as u64) << PHASE_SHIFT) | self.now_ms(), Ordering::Relaxed);
    }

    fn get(&self) -> (Phase, u64) {
        let w = self.word.load(Ordering::Relaxed);
        let phase = match w >> PHASE_SHIFT {
            0 => Phase::Header,
            1 => Phase::Busy,
            _ => Phase::Idle,
        };
        (phase, w & SINCE_MASK)
    }

    /// Bytes arrived: the first ones after an idle period start a header.
    fn bytes_read(&self) {
        if self.get().0 == Phase::Idle {
            self.set(Phase::Header);
        }
    }

    /// Resolves when the current phase outlived its limit, naming it.
    async fn expired(&self, front: &FrontSettings) -> Phase {
        loop {
            let (phase, since) = self.get();
            let limit = match phase {
                Phase::Header => front.header_read_timeout,
                Phase::Idle => front.idle_timeout,
                // A request in flight is bounded by the backends' timeouts.
                Phase::Busy => front.idle_timeout.max(front.header_read_timeout),
            };
            let due = self.epoch + Duration::from_millis(since) + limit;
            tokio::time::sleep_until(due.into()).await;
            if self.get() == (phase, since) && phase != Phase::Busy {
                return phase;
            }
        }
    }
}

/// The I/O of a connection, telling its [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The open connections, oldest first, for eviction at the limit.
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, (Arc<Activity>, CancellationToken)>,
}

impl Registry {
    /// Closes the oldest connection that has no request in flight; false
    /// when every one is busy.
    fn evict_one(&mut self) -> bool {
        let victim = self.open.iter().find(|(_, (a, _))| a.get().0 != Phase::Busy).map(|(id, _)| *id);
        match victim.and_then(|id| self.open.remove(&id)) {
            Some((_, close)) => {
                close.cancel();
                true
            }
            None => false,
        }
    }
}

/// What a connection over the limit gets before it is closed.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 86\r\n\r\n\
{\"error\":\"unavailable\",\"message\":\"too many connections to this instance, retry later\"}";

/// Serves `app` on `listener` until `stop` is cancelled, then lets the
/// connections finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    front: FrontSettings,
    stats: Arc<ConnectionStats>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let epoch = Instant::now();
    let ids = RequestIds::default();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // No hyper timer: with one, hyper arms its own 30 s header-read sleep
    // for every request (a timer-wheel entry made and dropped per request,
    // on the sold-out fast path too), while `Activity` already bounds the
    // header read, tighter and for trickled bytes as well.
    http.keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause, not exit.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(epoch));
        let close = CancellationToken::new();
        let id = {
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            if reg.open.len() >= front.max_connections {
                if !reg.evict_one() {
                    drop(reg);
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.try_write(BUSY_RESPONSE);
                    continue;
                }
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
            let id = reg.next_id;
            reg.next_id += 1;
            reg.open.insert(id, (activity.clone(), close.clone()));
            id
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);

        let service = {
            let (app, activity, ids) = (app.clone(), activity.clone(), ids.clone());
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                activity.set(Phase::Busy);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let (id, context) = ids.begin(&req);
                let (app, activity) = (app.clone(), activity.clone());
                async move {
                    let served = app.oneshot(req.map(axum::body::Body::new));
                    let mut resp = crate::telemetry::in_request(context, served).await;
                    if let Ok(r) = &mut resp {
                        r.headers_mut().insert(X_REQUEST_ID, id);
                    }
                    activity.set(Phase::Idle);
                    resp
                }
            })
        };
        let io = TokioIo::new(Watched { stream, activity: activity.clone() });
        let conn = graceful.watch(http.serve_connection(io, service));
        let (registry, stats) = (registry.clone(), stats.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = close.cancelled() => {}
                phase = activity.expired(&front) => {
                    let counter = if phase == Phase::Idle { &stats.idle_timeouts } else { &stats.header_timeouts };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Dropping the connection closes the socket.
            registry.lock().unwrap_or_else(|e| e.into_inner()).open.remove(&id);
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
