//! API-level integration tests against the real local stack. One binary
//! (faster to link); each test isolates itself by key prefix and database.

mod helpers;
#[path = "../support/private_cluster.rs"]
mod private_cluster;

mod archive;
mod campaigns;
mod claims;
mod concurrency;
mod console;
mod front_door;
mod holdings;
mod lifecycle;
mod ops;
mod persistence;
mod recovery;
mod redeem;
mod replays;
mod stock;
mod validation;
