//! RabbitMQ names and declarations, shared by the relay, the persist worker
//! and the tests. Everything is durable; the claims queue is a quorum queue
//! (replicated, survives a broker restart) with a dead-letter exchange.
//!
//! ```text
//! <prefix>.claims   direct exchange --"claim"--> <prefix>.claims  quorum queue
//! <prefix>.dlx      fanout exchange -----------> <prefix>.claims.dlq  quorum queue
//! <prefix>.events   fanout exchange: claim (and later redeem/release) events
//!                   for anyone to bind to (e.g. a notification service)
//! ```

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Names derived from the key prefix, so test runs and deployments do not
/// share queues.
#[derive(Debug, Clone)]
pub struct Topology {
    pub claims_exchange: String,
    pub claims_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
}

/// Routing key of claim batches on the claims exchange.
pub const CLAIM_ROUTING_KEY: &str = "claim";

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            claims_exchange: format!("{prefix}.claims"),
            claims_queue: format!("{prefix}.claims"),
            dead_letter_exchange: format!("{prefix}.dlx"),
            dead_letter_queue: format!("{prefix}.claims.dlq"),
            events_exchange: format!("{prefix}.events"),
        }
    }

    /// Declares everything (idempotent: same arguments every time).
    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(self.claims_exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await?;
        ch.exchange_declare(
            self.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(self.events_exchange.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await?;

        let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
        let mut claims_args = FieldTable::default();
        claims_args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
        claims_args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        ch.queue_declare(self.claims_queue.as_str().into(), queue_opts, claims_args).await?;
        let mut dlq_args = FieldTable::default();
        dlq_args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
        ch.queue_declare(self.dead_letter_queue.as_str().into(), queue_opts, dlq_args).await?;

        ch.queue_bind(
            self.claims_queue.as_str().into(),
            self.claims_exchange.as_str().into(),
            CLAIM_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            self.dead_letter_queue.as_str().into(),
            self.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }
}
