//! Use cases, between the HTTP layer and the stores. Outcomes the API
//! expects (sold out, already claimed, ...) are values; only backend trouble
//! is a [`ServiceError`], which keeps its source.

pub mod archive;
pub mod campaigns;
pub mod claims;
pub mod coupons;
pub mod live;
pub mod reconcile;
pub mod reports;

pub use archive::{ArchiveOutcome, ArchiveService};
pub use campaigns::{CampaignService, CampaignStats, CampaignView};
pub use claims::{ClaimResult, ClaimService, CouponView};
pub use coupons::{CouponService, RedeemResult, ReleaseResult};
pub use live::LiveHub;
pub use reports::{CampaignReport, ReportService};

use crate::db::DbError;
use crate::stock::StockError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Stock(#[from] StockError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// Too many requests were already waiting on the backends (503).
    #[error(transparent)]
    Shed(#[from] crate::protect::admission::Shed),
    /// The claim rate of this instance is used up (429).
    #[error("claim rate of this instance exceeded")]
    RateLimited(crate::protect::RateLimited),
}

impl ServiceError {
    /// True for a backend that is down or slow (retry later: 503), false for
    /// a bug or corrupt data (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ServiceError::Stock(
                StockError::Redis(_)
                    | StockError::Timeout(_)
                    | StockError::BreakerOpen
                    | StockError::NotReplicated { .. }
                    | StockError::NotAcknowledged { .. }
                    | StockError::Busy
            ) | ServiceError::Db(DbError::Sql(_) | DbError::Timeout(_))
                | ServiceError::Shed(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;
