//! Wiring: connect the stores, build the services and the router, bind the
//! listener. Tests build an [`Application`] on port 0 and read the bound
//! address back; the binary does the same on the configured address.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::db::Db;
use crate::health::AmqpProbe;
use crate::http::{AppInner, AppState, router};
use crate::service::{CampaignService, ClaimService};
use crate::stock::StockStore;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the Redis Cluster at {nodes}: {source}")]
    Redis {
        nodes: String,
        source: crate::stock::StockError,
    },
    #[error("cannot use MySQL: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, wired, not yet serving instance.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

/// Connects to MySQL and applies the migrations (`flashgrab migrate`, and
/// every `serve` start).
pub async fn migrate(settings: &Settings) -> Result<Db, StartupError> {
    let db = Db::connect(
        &settings.mysql_url,
        settings.mysql_max_connections,
        settings.mysql_timeout,
    )
    .await?;
    db.migrate().await?;
    Ok(db)
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let db = migrate(settings).await?;
        let stock = StockStore::connect(
            &settings.redis_nodes,
            &settings.key_prefix,
            settings.redis_timeout,
        )
        .await
        .map_err(|source| StartupError::Redis {
            nodes: settings.redis_nodes.join(","),
            source,
        })?;
        let campaigns =
            CampaignService::new(db.clone(), stock.clone(), settings.campaign_cache_ttl);
        let claims = ClaimService::new(campaigns.clone(), stock.clone());
        let state = AppState::new(AppInner {
            campaigns,
            claims,
            admin_token: settings.admin_token.clone(),
            jwt: JwtKeys::new(settings.user_jwt_secret.as_bytes()),
            stock,
            db,
            amqp: AmqpProbe::new(
                settings.amqp_url.clone(),
                settings
                    .redis_timeout
                    .max(std::time::Duration::from_secs(2)),
            ),
        });
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets the
    /// requests in flight finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
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
