//! Wiring: connect the stores, build the services and the router, bind the
//! listener. Tests build an [`Application`] on port 0 and read the bound
//! address back; the binary does the same on the configured address.

use std::net::SocketAddr;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::db::Db;
use crate::health::AmqpProbe;
use crate::http::server::ConnectionStats;
use crate::http::{AppInner, AppState, router};
use crate::metrics::http::FrontCollector;
use crate::metrics::{HttpMetrics, PipelineMetrics};
use crate::outbox::events::EventPublisher;
use crate::outbox::relay::Relay;
use crate::outbox::stream::OutboxStreams;
use crate::persist::worker::PersistWorker;
use crate::protect::Protection;
use crate::service::{ArchiveService, CampaignService, ClaimService, CouponService, LiveHub, ReportService};
use crate::stock::StockStore;
use crate::stock::broadcast::{Notice, Subscriber};
use crate::supervise::Backoff;
use crate::telemetry::LogEvery;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the Redis Cluster at {nodes}: {source}")]
    Redis { nodes: String, source: crate::stock::StockError },
    #[error(
        "cannot connect to RabbitMQ at {url}: {source} (its certificate is not trusted: check FLASHGRAB_AMQP_CA_FILE / FLASHGRAB_TLS_CA_FILE and the host name)"
    )]
    AmqpCertificate { url: String, source: lapin::Error },
    #[error("cannot use MySQL: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Period of the stock transfer recovery pass, and the age from which it
/// lands a journaled transfer (a live one takes milliseconds).
const TRANSFER_RECOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const TRANSFER_RECOVERY_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// A broker that is down does not stop `serve` (the outbox keeps the claims
/// until it is back), but one whose TLS certificate we do not trust never
/// comes back by itself: over `amqps://` one connect at start tells them
/// apart, and the second refuses to start.
async fn check_amqp_certificate(settings: &Settings) -> Result<(), StartupError> {
    let amqp = settings.amqp();
    if !amqp.url.starts_with("amqps://") {
        return Ok(());
    }
    match tokio::time::timeout(settings.amqp_timeout, amqp.connect()).await {
        Ok(Err(source)) if crate::backend::is_certificate_error(&source) => {
            Err(StartupError::AmqpCertificate { url: crate::backend::redact(&amqp.url), source })
        }
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "startup check".into()).await;
            Ok(())
        }
        // Down or slow: the relay and the worker retry with backoff.
        Ok(Err(_)) | Err(_) => Ok(()),
    }
}

/// The seed nodes for messages, passwords masked.
fn redacted_nodes(settings: &Settings) -> String {
    settings.redis_nodes.iter().map(|n| crate::backend::redact(n)).collect::<Vec<_>>().join(",")
}

/// A bound, wired, not yet serving instance.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Background parts of `serve`, started by `run_until`.
    relay: Option<Relay>,
    worker: Option<PersistWorker>,
    events: Option<EventPublisher>,
    /// Sold-out and close notices from the other instances.
    notices: Subscriber,
    /// Bound of the graceful shutdown, from the signal to the end of the
    /// flush (`FLASHGRAB_SHUTDOWN_TIMEOUT_MS`).
    shutdown_timeout: std::time::Duration,
    /// Grace period of the automatic archive pass (`None`: off).
    archive_after: Option<std::time::Duration>,
    /// Connection bounds of the front door.
    front: crate::config::FrontSettings,
}

/// Connects to MySQL and applies the migrations (`flashgrab migrate`, and
/// every `serve` start).
pub async fn migrate(settings: &Settings) -> Result<Db, StartupError> {
    let db = Db::connect_to(&settings.mysql(), settings.mysql_max_connections, settings.mysql_timeout).await?;
    db.migrate().await?;
    Ok(db)
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let db = migrate(settings).await?;
        let stock = StockStore::connect_to(&settings.redis(), &settings.key_prefix, settings.redis_timeout)
            .await
            .map_err(|source| StartupError::Redis { nodes: redacted_nodes(settings), source })?
            .with_durability(settings.durability)
            .with_claim_batch(settings.claim_batch)
            .with_breakers(settings.protect.breaker_failures, settings.protect.breaker_open)
            .await;
        check_amqp_certificate(settings).await?;
        let protection = Arc::new(Protection::new(&settings.protect));
        let notices = Subscriber::to(settings.redis(), &settings.key_prefix, settings.redis_timeout);
        let metrics = Arc::new(PipelineMetrics::default());
        let relay = settings.run_relay.then(|| {
            Relay::new(
                stock.clone(),
                settings.amqp(),
                metrics.clone(),
                settings.redis_timeout,
                settings.relay_reclaim_idle,
            )
            .with_amqp_timeout(settings.amqp_timeout)
        });
        let worker = settings
            .run_persist
            .then(|| PersistWorker::new(db.clone(), settings.amqp(), &settings.key_prefix, metrics.clone()))
            .map(|w| w.with_amqp_timeout(settings.amqp_timeout));
        let campaigns = CampaignService::new(db.clone(), stock.clone(), settings.campaign_cache_ttl);
        let claims =
            ClaimService::new(campaigns.clone(), stock.clone(), db.clone()).with_protection(protection.clone());
        // Redeem/release events leave through the relay's broker connection
        // settings; the publisher runs wherever the relay runs.
        let wake_events = Arc::new(tokio::sync::Notify::new());
        let events = settings.run_relay.then(|| {
            EventPublisher::new(db.clone(), settings.amqp(), &settings.key_prefix, wake_events.clone(), metrics.clone())
                .with_amqp_timeout(settings.amqp_timeout)
                .with_stock(stock.clone())
        });
        let coupons = CouponService::new(campaigns.clone(), claims.clone(), db.clone(), wake_events);
        let reports = ReportService::new(campaigns.clone(), db.clone());
        let live = LiveHub::new(campaigns.clone(), stock.clone(), CancellationToken::new());
        let http_metrics = Arc::new(HttpMetrics::default());
        let connections = Arc::new(ConnectionStats::default());
        let front = FrontCollector {
            http: http_metrics.clone(),
            connections: connections.clone(),
            protection: protection.clone(),
            stock: stock.clone(),
        };
        let registry = crate::metrics::instance_registry(front, metrics.clone());
        let state = AppState::new(AppInner {
            campaigns,
            claims,
            coupons,
            reports,
            live,
            admin_token: settings.admin_token.clone(),
            jwt: JwtKeys::new(settings.user_jwt_secret.as_bytes())
                .with_previous(settings.user_jwt_secret_previous.as_deref().map(str::as_bytes))
                .with_leeway(settings.jwt_leeway),
            stock,
            db,
            amqp: AmqpProbe::new(settings.amqp(), settings.redis_timeout.max(std::time::Duration::from_secs(2))),
            metrics,
            protection,
            trusted_proxy_header: settings.protect.trusted_proxy_header.clone(),
            http_metrics,
            registry,
            connections,
        });
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartupError::Bind { addr: settings.listen, source })?;
        Ok(Self {
            listener,
            state,
            relay,
            worker,
            events,
            notices,
            shutdown_timeout: settings.shutdown_timeout,
            archive_after: settings.archive_after,
            front: settings.front,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully within
    /// `FLASHGRAB_SHUTDOWN_TIMEOUT_MS` of the signal:
    ///
    /// 1. stop accepting and let the requests in flight finish (each claim
    ///    answered 201 is in the outbox by then);
    /// 2. keep the relay running until every outbox entry that existed at
    ///    that moment was published and confirmed, then stop it (and the
    ///    event publisher);
    /// 3. stop the persist worker, which first drains what the broker still
    ///    has for it, commits and acks.
    ///
    /// Past the deadline the rest is left where it is safe (outbox, queue)
    /// for the next relay and worker, and this returns anyway.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let relay_stop = CancellationToken::new();
        let worker_stop = CancellationToken::new();
        let relay = self.relay.map(|r| tokio::spawn(r.run(relay_stop.clone())));
        let events = self.events.map(|e| tokio::spawn(e.run(relay_stop.clone())));
        let worker = self.worker.map(|w| tokio::spawn(w.run(worker_stop.clone())));
        let stock = self.state.stock.clone();
        let limit = self.shutdown_timeout;
        // Rate-limiter housekeeping and the notice subscriber live as long
        // as this function (cancelled when it returns).
        let front_stop = CancellationToken::new();
        let _front_guard = front_stop.clone().drop_guard();
        tokio::spawn(self.state.protection.clone().run_housekeeping(front_stop.clone()));
        // Stock transfers a dead instance left half-done: at once, then
        // periodically (see `stock::rebalance`).
        tokio::spawn(self.state.stock.clone().recover_transfers(
            TRANSFER_RECOVERY_EVERY,
            TRANSFER_RECOVERY_AGE,
            front_stop.clone(),
        ));
        // Top-ups a dead instance left half-done (see `service::campaigns`).
        tokio::spawn(self.state.campaigns.clone().recover_top_ups(
            TRANSFER_RECOVERY_EVERY,
            TRANSFER_RECOVERY_AGE,
            front_stop.clone(),
        ));
        // Ended campaigns' Redis data, after the grace period (one instance
        // per period does the work: see `service::archive`).
        if let Some(grace) = self.archive_after {
            let s = &self.state;
            let archiver = ArchiveService::new(s.db.clone(), s.stock.clone(), s.campaigns.clone());
            tokio::spawn(archiver.run(crate::service::archive::PASS_EVERY, grace, front_stop.clone()));
        }
        {
            let state = self.state.clone();
            tokio::spawn(self.notices.run(move |n| apply_notice(&state, n), front_stop.clone()));
        }

        let signalled = CancellationToken::new();
        let signal_at = Arc::new(std::sync::OnceLock::new());
        {
            let (signalled, signal_at) = (signalled.clone(), signal_at.clone());
            let live = self.state.live.clone();
            tokio::spawn(async move {
                shutdown.await;
                let _ = signal_at.set(tokio::time::Instant::now());
                signalled.cancel();
                // Event streams never end by themselves: end them, so the
                // graceful shutdown does not wait on them.
                live.shutdown();
            });
        }
        let connections = self.state.connections.clone();
        let app = router(self.state);
        let serve = crate::http::server::serve(self.listener, app, self.front, connections, signalled.clone());
        let served = tokio::select! {
            r = serve => r,
            () = async { signalled.cancelled().await; tokio::time::sleep(limit).await } => {
                tracing::warn!(?limit, "requests still in flight at the shutdown deadline; not waiting for them");
                Ok(())
            }
        };
        let deadline = signal_at.get().copied().unwrap_or_else(tokio::time::Instant::now) + limit;
        tracing::info!("http server stopped; flushing the outbox relay and the persist worker");

        let flush = async {
            if let Some(relay) = relay {
                wait_outbox_relayed(&OutboxStreams::new(stock.clone(), stock.timeout())).await;
                relay_stop.cancel();
                let _ = relay.await;
            }
            relay_stop.cancel();
            if let Some(events) = events {
                let _ = events.await;
            }
            worker_stop.cancel();
            if let Some(worker) = worker {
                let _ = worker.await;
            }
        };
        if tokio::time::timeout_at(deadline, flush).await.is_err() {
            tracing::warn!(
                ?limit,
                "shutdown deadline reached before the outbox and the queue were flushed; \
                 what is left is relayed and persisted by the next relay and worker"
            );
            relay_stop.cancel();
            worker_stop.cancel();
        } else {
            tracing::info!("shutdown complete: outbox relayed, persist batches committed and acked");
        }
        served
    }
}

/// Waits until every entry in the outbox streams right now has been relayed
/// (published, confirmed, deleted) by some relay. Bucket by bucket: the
/// buckets of an unreachable master are retried (with a jittered backoff,
/// logged at most once a second) while the others are checked and done.
/// The caller bounds the wait.
async fn wait_outbox_relayed(streams: &OutboxStreams) {
    /// Pause between two checks of the outbox while Redis answers.
    const POLL: std::time::Duration = std::time::Duration::from_millis(20);
    let log = LogEvery::new();
    let mut backoff = Backoff::default();
    // Buckets whose head is not known yet, and the heads still to be relayed.
    let mut unread: Vec<u16> = (0..streams.buckets()).collect();
    let mut heads: Vec<(u16, String)> = Vec::new();
    loop {
        let mut failed: Vec<(u16, crate::outbox::stream::StreamError)> = Vec::new();
        let mut still = Vec::new();
        for (b, r) in streams.heads(&unread).await {
            match r {
                Ok(Some(id)) => heads.push((b, id)),
                Ok(None) => {}
                Err(e) => {
                    still.push(b);
                    failed.push((b, e));
                }
            }
        }
        unread = still;
        let mut waiting = Vec::new();
        for ((b, r), head) in streams.unrelayed(&heads).await.into_iter().zip(std::mem::take(&mut heads)) {
            match r {
                Ok(false) => {}
                Ok(true) => waiting.push(head),
                Err(e) => {
                    waiting.push(head);
                    failed.push((b, e));
                }
            }
        }
        heads = waiting;
        if unread.is_empty() && heads.is_empty() {
            return;
        }
        let pause = if failed.is_empty() {
            backoff.reset();
            POLL
        } else {
            if let Some(skipped) = log.allow() {
                let buckets: Vec<u16> = failed.iter().map(|(b, _)| *b).collect();
                tracing::warn!(?buckets, error = %failed[0].1, skipped, "cannot check the outbox of these buckets; retrying");
            }
            backoff.next_delay()
        };
        tokio::time::sleep(pause).await;
    }
}

/// Applies a notice of another instance (or of this one) to the in-memory
/// state the fast paths read.
fn apply_notice(state: &AppState, notice: Notice) {
    match notice {
        Notice::SoldOut(id) => state.claims.mark_sold_out(&id),
        Notice::Closed(id) => state.campaigns.apply_closed(&id, chrono::Utc::now()),
        Notice::Changed(id) => {
            state.claims.forget_sold_out(&id);
            let campaigns = state.campaigns.clone();
            tokio::spawn(async move { campaigns.refresh(&id).await });
        }
        Notice::Resubscribed => {
            state.claims.forget_sold_outs();
            let campaigns = state.campaigns.clone();
            tokio::spawn(async move { campaigns.refresh_all().await });
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
