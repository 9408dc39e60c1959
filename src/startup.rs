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
use crate::http::{AppInner, AppState, router};
use crate::metrics::PipelineMetrics;
use crate::outbox::relay::Relay;
use crate::persist::worker::PersistWorker;
use crate::service::{CampaignService, ClaimService};
use crate::stock::StockStore;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the Redis Cluster at {nodes}: {source}")]
    Redis { nodes: String, source: crate::stock::StockError },
    #[error("cannot use MySQL: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A bound, wired, not yet serving instance.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Background parts of `serve`, started by `run_until`.
    relay: Option<Relay>,
    worker: Option<PersistWorker>,
}

/// Connects to MySQL and applies the migrations (`flashgrab migrate`, and
/// every `serve` start).
pub async fn migrate(settings: &Settings) -> Result<Db, StartupError> {
    let db = Db::connect(&settings.mysql_url, settings.mysql_max_connections, settings.mysql_timeout).await?;
    db.migrate().await?;
    Ok(db)
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let db = migrate(settings).await?;
        let stock = StockStore::connect(&settings.redis_nodes, &settings.key_prefix, settings.redis_timeout)
            .await
            .map_err(|source| StartupError::Redis { nodes: settings.redis_nodes.join(","), source })?;
        let metrics = Arc::new(PipelineMetrics::default());
        let relay = settings.run_relay.then(|| {
            Relay::new(
                stock.clone(),
                settings.amqp_url.clone(),
                metrics.clone(),
                settings.redis_timeout,
                settings.relay_reclaim_idle,
            )
        });
        let worker = settings
            .run_persist
            .then(|| PersistWorker::new(db.clone(), settings.amqp_url.clone(), &settings.key_prefix, metrics.clone()));
        let campaigns = CampaignService::new(db.clone(), stock.clone(), settings.campaign_cache_ttl);
        let claims = ClaimService::new(campaigns.clone(), stock.clone(), db.clone());
        let state = AppState::new(AppInner {
            campaigns,
            claims,
            admin_token: settings.admin_token.clone(),
            jwt: JwtKeys::new(settings.user_jwt_secret.as_bytes()),
            stock,
            db,
            amqp: AmqpProbe::new(
                settings.amqp_url.clone(),
                settings.redis_timeout.max(std::time::Duration::from_secs(2)),
            ),
            metrics,
        });
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartupError::Bind { addr: settings.listen, source })?;
        Ok(Self { listener, state, relay, worker })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the
    /// requests in flight finish, and only then stops the relay and the
    /// persist worker (each finishes the batch in hand), so every claim
    /// answered 201 is in the outbox before the relay stops.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let background = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(relay) = self.relay {
            tasks.push(tokio::spawn(relay.run(background.clone())));
        }
        if let Some(worker) = self.worker {
            tasks.push(tokio::spawn(worker.run(background.clone())));
        }
        let app = router(self.state);
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await;
        background.cancel();
        for t in tasks {
            let _ = t.await;
        }
        served
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
