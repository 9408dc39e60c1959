//! From RabbitMQ to MySQL.
//!
//! - [`worker`]: consumes the claims queue with a bounded prefetch, writes
//!   each batch in one transaction (idempotent per coupon id), acks only
//!   after the commit. What it cannot store goes to the dead-letter queue
//!   with the reason, one record at a time, never the claims around it: a
//!   record that fails the shared check, or a row MySQL refuses for good
//!   (found by halving the refused batch). Reconnects to both sides with
//!   backoff; transient MySQL errors are retried.
//! - [`dlq`]: `flashgrab dlq list|replay`, for the operator to see the
//!   dead-letter queue and send it back once the cause is fixed.
//!
//! The check that nothing was lost (`service::reconcile`) compares both
//! stores, so it is a use case, not part of the pipeline.

pub mod dlq;
pub mod worker;
