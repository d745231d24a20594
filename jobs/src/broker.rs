//! RabbitMQ: connecting, declaring Glowline's topology (idempotently, from
//! every process that uses it), and publishing with publisher confirms.
//!
//! Topology: [`JOBS_EXCHANGE`] (direct) routes to [`SUBMIT_QUEUE`] and one
//! work queue per [`Lane`]; those queues are durable (quorum by default) and
//! dead-letter rejected or over-delivered messages to
//! [`DEAD_LETTER_EXCHANGE`]. [`EVENTS_EXCHANGE`] (topic) carries terminal
//! job events to whoever binds a queue to it.

use std::str::FromStr;

use contract::queue::{
    Lane, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, JOBS_EXCHANGE, SUBMIT_QUEUE,
};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{BrokerConfig, QueueType, BROKER_PASSWORD_ENV};

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker URL: {0}")]
    Url(String),
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused message for {exchange}/{routing_key}: {reason}")]
    NotConfirmed {
        exchange: String,
        routing_key: String,
        reason: String,
    },
}

impl BrokerError {
    /// Whether the channel or connection is unusable (as opposed to one
    /// message being refused), so the caller must reconnect.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, BrokerError::Amqp(_))
    }

    /// Whether a retry (after reconnecting) may help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BrokerError::Url(_))
    }
}

/// Connects to the broker named by `config`, as `name` (shown in the
/// broker's connection list).
pub async fn connect(config: &BrokerConfig, name: &str) -> Result<Connection, BrokerError> {
    let mut uri = AMQPUri::from_str(&config.url).map_err(BrokerError::Url)?;
    if let Ok(password) = std::env::var(BROKER_PASSWORD_ENV) {
        uri.authority.userinfo.password = password;
    }
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
    Ok(Connection::connect_uri(uri, properties).await?)
}

fn queue_arguments(config: &BrokerConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    match config.queue_type {
        QueueType::Quorum => {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(config.delivery_limit as i32),
            );
        }
        QueueType::Classic => {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("classic".into()),
            );
            args.insert(
                "x-max-priority".into(),
                AMQPValue::ShortShortUInt(MAX_PRIORITY),
            );
        }
    }
    args
}

/// Priority levels of classic work queues; each level costs the broker
/// memory, and ten cover the clamped job priorities 0..=9.
const MAX_PRIORITY: u8 = 9;

/// Declares exchanges, queues and bindings. Safe to call from every process
/// at every start: declarations with the same arguments are no-ops.
pub async fn declare_topology(channel: &Channel, config: &BrokerConfig) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            JOBS_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            DEAD_LETTER_QUEUE.into(),
            durable_queue,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let work_queues = Lane::ALL.map(Lane::queue);
    for queue in std::iter::once(SUBMIT_QUEUE).chain(work_queues) {
        channel
            .queue_declare(queue.into(), durable_queue, queue_arguments(config))
            .await?;
        channel
            .queue_bind(
                queue.into(),
                JOBS_EXCHANGE.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Opens a channel in confirm mode for [`publish_confirmed`].
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(PERSISTENT)
}

/// Whether messages to `exchange` must reach a queue. Work and submissions
/// must; job events are notifications that nobody may be listening for
/// (Postgres keeps the record), so an unroutable event is not a failure.
pub fn must_route(exchange: &str) -> bool {
    exchange != EVENTS_EXCHANGE
}

/// Publishes `payload` as a persistent message and waits for the broker's
/// confirm; `mandatory` when [`must_route`] says so. A message that the
/// broker nacked, or returned as unroutable, is an error: it was not stored.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let options = BasicPublishOptions {
        mandatory: must_route(exchange),
        ..Default::default()
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            payload,
            properties,
        )
        .await?
        .await?;
    let refused = |reason: String| BrokerError::NotConfirmed {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        reason,
    };
    if confirm.is_nack() {
        return Err(refused("nacked by the broker".into()));
    }
    if let Some(returned) = confirm.take_message() {
        return Err(refused(format!(
            "returned: {} {}",
            returned.reply_code, returned.reply_text
        )));
    }
    Ok(())
}
