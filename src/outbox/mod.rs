//! From the Redis outbox to RabbitMQ.
//!
//! Every grant appends its claim record to the outbox stream of its bucket
//! in the same script that granted it (`lua/claim.lua`), so a record exists
//! for every 201. The relay moves records to RabbitMQ and removes them from
//! Redis only after the broker confirmed them:
//!
//! 1. `XREADGROUP` (non-blocking, one consumer group for all instances, one
//!    consumer name per instance) on each of the 64 bucket streams;
//! 2. publish the records read in one pass, all buckets together, in
//!    messages of up to [`relay::MESSAGE_CLAIMS`] claims (RabbitMQ confirms
//!    only ~15k messages/s here, and its cost is mostly per message)
//!    as persistent messages with publisher confirms, to the claims
//!    exchange; the same body goes to the events fan-out exchange best
//!    effort (its confirm never decides the ack: an optional consumer that
//!    refuses must not make the relay send the claims again and again);
//! 3. `lua/ack.lua`: `XACK` + `XDEL` of exactly the confirmed entries.
//!
//! Buckets are independent: a bucket whose master is unreachable is
//! retried on its own backoff while the others are relayed (see
//! `relay::Relay::session`).
//!
//! A relay that dies between 2 and 3 leaves entries pending in the group;
//! `XAUTOCLAIM` hands them to a live relay after `FLASHGRAB_RELAY_RECLAIM_MS` and
//! they are published again (the persist worker is idempotent per coupon
//! id). Blocking reads are avoided on purpose: the cluster connection is
//! multiplexed and a `BLOCK` would stall the claims sharing it.
//!
//! In `replicated` mode step 1 is gated: an entry leaves Redis only once a
//! replica acknowledged it (`Relay::read_bucket_acked`), so a failover to
//! a replica that lacks a grant cannot leave MySQL with a row for it.

pub mod events;
pub mod relay;
pub mod stream;
