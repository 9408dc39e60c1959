//! Test support, one module for every test crate (`tests/api`, `tests/front`,
//! `tests/faults`, `tests/tls`), each of which declares it once at its root
//! (`#[path = "../support/mod.rs"] mod support;`).
//!
//! Why a module and not copies: what a test owns (its instances, its key
//! prefix and database, its child processes, its private Redis Cluster) is
//! given back in `Drop`, so a failing test cleans up as a passing one does,
//! and waiting is done on conditions (`wait`), never on a guessed sleep.
//!
//! - [`app`]: the test app builder ([`app::TestApp::builder`]): port 0, own
//!   prefix, own database, queues and database dropped when the last clone
//!   of the app goes;
//! - [`process`]: a child process killed and reaped on drop;
//! - [`cluster`]: a Redis Cluster of the test's own (front, faults);
//! - [`wait`]: `wait_until(timeout, what, || async { .. })`;
//! - [`metrics`]: a `/metrics` sample that must exist.

// Four test crates include this module, each using the part it needs (the
// tls crate little, the api crate no child process): what one crate leaves
// unused is compiled there unused. Hence one `dead_code` allow per fixture,
// with its reason, instead of one over every crate (the `#[path]` helpers
// had `#![allow(dead_code)]` for all of them): every item here has a user
// in some crate.
#[allow(dead_code, reason = "each crate uses a part of the app and its calls")]
pub mod app;
#[allow(dead_code, reason = "a fixture of the api, front and faults crates; the tls crate compiles it unused")]
pub mod cluster;
#[allow(dead_code, reason = "read by the api, front and faults crates; the tls crate compiles it unused")]
pub mod metrics;
#[allow(dead_code, reason = "the faults crate kills and signals children; the others only need the kill on drop")]
pub mod process;
#[allow(dead_code, reason = "one crate waits for values (`wait_for`), another only for conditions")]
pub mod wait;
