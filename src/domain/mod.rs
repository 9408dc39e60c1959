//! Validated values of the product, with no I/O: campaign terms as marketing
//! sends them, ids, and the maths that routes a user to a shard. Everything
//! here is checked once at the edge so that the stores never see bad input.

pub mod campaign;
pub mod change;
pub mod coupon;
pub mod ids;
pub mod order;
pub mod tally;

pub use campaign::{Campaign, CampaignStatus, CouponTerms, Discount, NewCampaign, ValidationError};
pub use coupon::CouponRecord;
pub use ids::{CampaignId, CouponId, UserId};
