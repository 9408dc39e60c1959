//! RabbitMQ: the topology (exchanges and queues), opening a confirmed
//! channel, the bound on every broker call and its errors, and the claims
//! message body. The outbox relay publishes through it and the persist
//! worker consumes through it; neither reaches the other's module for it.

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

/// The body of a claims message: `{"kind":"claims","claims":[record...]}`.
pub fn claims_body(records: &[&str]) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + records.iter().map(|r| r.len() + 1).sum::<usize>());
    body.extend_from_slice(br#"{"kind":"claims","claims":["#);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}
