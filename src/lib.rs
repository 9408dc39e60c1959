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
//! - [`outbox`]: the relay from the Redis outbox streams to RabbitMQ
//!   (publisher confirms, then XACK + XDEL).
//! - [`persist`]: the RabbitMQ -> MySQL worker and `reconcile`.
//! - [`db`]: MySQL (campaign terms, persisted coupons) and migrations.
//! - [`domain`]: validated values with no I/O (campaign terms, ids, shard
//!   routing maths).
//! - [`auth`]: admin token and HS256 user JWTs (pure logic).
//! - [`config`], [`backend`], [`telemetry`], [`startup`]: how a process is
//!   configured (settings, backend URLs, secrets, TLS trust), observed and
//!   wired.
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
