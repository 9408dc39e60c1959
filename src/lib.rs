//! flashgrab: timed coupon drops that never oversell and never lose a claim.
//!
//! The crate is laid out along the data flow of a claim:
//!
//! - [`http`]: the axum front end (routing, auth extractors, error mapping).
//!   Handlers only extract, call a service and map the outcome.
//! - [`service`]: the use cases (create/close campaigns, claim, list coupons)
//!   gluing the stores together.
//! - [`stock`]: the Redis Cluster side: key layout, shard placement, the Lua
//!   claim script and the journaled stock transfers between shards.
//! - [`outbox`]: the Redis outbox streams and their relay to RabbitMQ
//!   (publisher confirms, then XACK + XDEL); the MySQL redemptions outbox.
//! - [`queue`]: RabbitMQ topology, confirmed channels, errors.
//! - [`persist`]: the RabbitMQ -> MySQL worker and the dead-letter tools.
//! - [`db`]: MySQL (campaign terms, persisted coupons) and migrations.
//! - [`domain`]: validated values with no I/O (campaign terms, ids, shard
//!   routing maths).
//! - [`auth`]: admin token and HS256 user JWTs (pure logic).
//! - [`protect`]: rate limits and the admission bound at the front door.
//! - [`supervise`]: the reconnect loop of the relay, worker and publisher.
//! - [`config`], [`backend`], [`metrics`], [`telemetry`], [`startup`]: how a
//!   process is configured (settings, backend URLs, secrets, TLS trust),
//!   observed and wired.
//!
//! See docs/ARCHITECTURE.md for the full picture and the failure model.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod config;
pub mod db;
pub mod domain;
pub mod health;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod persist;
pub mod protect;
pub mod queue;
pub mod service;
pub mod startup;
pub mod stock;
pub mod supervise;
pub mod telemetry;
