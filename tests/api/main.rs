//! API-level integration tests against the real local stack. One binary
//! (faster to link); each test isolates itself by key prefix and database
//! (`support::app`), one file per part of the API.

#[path = "../support/mod.rs"]
mod support;

mod helpers;

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
