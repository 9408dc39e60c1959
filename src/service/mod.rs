//! Use cases, between the HTTP layer and the stores. Outcomes the API
//! expects (sold out, already claimed, ...) are values; only backend trouble
//! is a [`ServiceError`], which keeps its source.

pub mod campaigns;
pub mod claims;

pub use campaigns::{CampaignService, CampaignStats, CampaignView};
pub use claims::{ClaimResult, ClaimService, CouponView};

use crate::db::DbError;
use crate::stock::StockError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Stock(#[from] StockError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ServiceError {
    /// True for a backend that is down or slow (retry later: 503), false for
    /// a bug or corrupt data (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ServiceError::Stock(StockError::Redis(_) | StockError::Timeout(_))
                | ServiceError::Db(DbError::Sql(_) | DbError::Timeout(_))
        )
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;
