//! From RabbitMQ to MySQL, and the check that nothing was lost on the way.
//!
//! - [`worker`]: consumes the claims queue with a bounded prefetch, writes
//!   each batch in one transaction (idempotent per coupon id), acks only
//!   after the commit; a message it cannot parse goes to the dead-letter
//!   queue with the reason. Reconnects to both sides with backoff.
//! - [`reconcile`]: compares the claim records held in Redis with the rows
//!   in MySQL for one campaign and, on request, writes what is missing.

pub mod reconcile;
pub mod worker;
