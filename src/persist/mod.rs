//! From RabbitMQ to MySQL, and the check that nothing was lost on the way.
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
//! - [`reconcile`]: compares the claim records held in Redis with the rows
//!   in MySQL for one campaign and, on request, writes what is missing.

pub mod dlq;
pub mod reconcile;
pub mod worker;
