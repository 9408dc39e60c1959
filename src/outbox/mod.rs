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
pub mod topology;

/// Default bound of one RabbitMQ call (`FLASHGRAB_AMQP_TIMEOUT_MS`).
pub const DEFAULT_AMQP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bounds one RabbitMQ call (connect, channel, declare, publish, ack): a
/// broker that accepts the TCP connection and then hangs must not stall the
/// relay or the worker forever; the timeout becomes an error and the
/// session reconnects with backoff.
pub async fn amqp_call<T>(
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(timeout, call).await.map_err(|_| QueueError::Timeout(timeout))?.map_err(QueueError::Amqp)
}

/// Connects to the broker, opens a channel in publisher-confirm mode and
/// declares the topology, each step bounded by `timeout`: the start of every
/// session of the relay, the persist worker and the event publisher.
pub async fn open_confirmed_channel(
    amqp: &crate::backend::AmqpTarget,
    topology: &topology::Topology,
    timeout: std::time::Duration,
) -> Result<(lapin::Connection, lapin::Channel), QueueError> {
    let conn = amqp_call(timeout, amqp.connect()).await?;
    let ch = amqp_call(timeout, conn.create_channel()).await?;
    amqp_call(timeout, ch.confirm_select(lapin::options::ConfirmSelectOptions::default())).await?;
    amqp_call(timeout, topology.declare(&ch)).await?;
    Ok((conn, ch))
}

/// Errors of the AMQP side, with their source.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("rabbitmq did not confirm within {0:?}")]
    Timeout(std::time::Duration),
    #[error("rabbitmq refused the message ({0})")]
    Nacked(String),
}
