//! MySQL: the durable record (campaign terms, persisted coupons,
//! redemptions). Every call is bounded by the pool's acquire timeout and a
//! per-query timeout; errors keep their `sqlx` source and never reach a
//! client (the HTTP layer logs them and answers 503/500 with no detail).

pub mod campaigns;
pub mod changes;
pub mod coupons;
pub mod exports;
pub mod redemptions;
pub mod reports;

use std::time::Duration;

use sqlx::MySqlPool;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("mysql error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("mysql did not answer within {0:?}")]
    Timeout(Duration),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, DbError>;

/// Pool plus the per-call timeout.
#[derive(Clone)]
pub struct Db {
    pool: MySqlPool,
    timeout: Duration,
}

impl Db {
    /// Connects, creating the database first if it does not exist (a fresh
    /// machine has only the server).
    pub async fn connect(url: &str, max_connections: u32, timeout: Duration) -> Result<Self> {
        if !bounded(timeout, sqlx::MySql::database_exists(url)).await? {
            bounded(timeout, sqlx::MySql::create_database(url)).await?;
        }
        let options: MySqlConnectOptions = url.parse()?;
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options.timezone(Some("+00:00".into())))
            .await?;
        Ok(Self { pool, timeout })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/` (compiled in).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        self.run(sqlx::query("SELECT 1").execute(&self.pool)).await.map(|_| ())
    }

    async fn run<T>(&self, fut: impl Future<Output = std::result::Result<T, sqlx::Error>>) -> Result<T> {
        bounded(self.timeout, fut).await
    }
}

async fn bounded<T>(timeout: Duration, fut: impl Future<Output = std::result::Result<T, sqlx::Error>>) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DbError::Timeout(timeout)),
    }
}
