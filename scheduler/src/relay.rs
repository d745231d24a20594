//! The outbox relay: publishes the messages that transactions left in the
//! `outbox` table (dispatches and job events), and marks a row sent only
//! once the broker confirmed it.
//!
//! Rows are locked with `SKIP LOCKED`, so several schedulers may relay at
//! once. A crash between publish and commit publishes the row again on the
//! next pass: delivery is at least once, and workers' claims make the
//! duplicate harmless.

use jobs::broker;
use jobs::config::BrokerConfig;
use jobs::retry::Backoff;
use jobs::shutdown::Shutdown;
use jobs::store;
use lapin::Channel;
use sqlx::PgPool;

use std::sync::Arc;

use crate::config::RelayConfig;
use crate::metrics::{SchedulerMetrics, RELAY_LINK};

/// How long one publish may wait for the broker's confirm. Confirms come in
/// milliseconds from a healthy broker; past this the channel is taken as
/// broken and rebuilt, and the batch's row locks are released.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the relay until `shutdown`, reconnecting after failures.
pub async fn run(
    pool: PgPool,
    broker_config: BrokerConfig,
    config: RelayConfig,
    metrics: Arc<SchedulerMetrics>,
    shutdown: Shutdown,
) {
    let backoff = Backoff::default();
    let mut failures = 0;
    while !shutdown.is_triggered() {
        let relayed = relay(&pool, &broker_config, &config, &metrics, &shutdown).await;
        metrics.broker.set(RELAY_LINK, false);
        match relayed {
            Ok(()) => failures = 0,
            Err(error) => {
                let delay = backoff.delay(failures);
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "outbox relay failed; retrying");
                failures = (failures + 1).min(backoff.max_retries);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    }
    tracing::info!("outbox relay stopped");
}

async fn relay(
    pool: &PgPool,
    broker_config: &BrokerConfig,
    config: &RelayConfig,
    metrics: &SchedulerMetrics,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let connection = broker::connect(broker_config, "glowline-scheduler-relay").await?;
    let channel = broker::confirm_channel(&connection).await?;
    broker::declare_topology(&channel, broker_config).await?;
    metrics.broker.set(RELAY_LINK, true);

    while !shutdown.is_triggered() {
        let published = relay_batch(pool, &channel, config.batch_size, metrics).await?;
        if published == 0 {
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval()) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    let _ = connection.close(0, "shutting down".into()).await;
    Ok(())
}

/// Publishes one batch of unsent rows; returns how many the broker took.
/// A broker failure marks the remaining rows failed and is returned, so the
/// caller reconnects.
async fn relay_batch(
    pool: &PgPool,
    channel: &Channel,
    batch_size: i64,
    metrics: &SchedulerMetrics,
) -> anyhow::Result<usize> {
    let (mut tx, messages) = store::lock_unsent(pool, batch_size).await?;
    if messages.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }

    let mut sent = Vec::with_capacity(messages.len());
    let mut failure = None;
    // Known limit: each publish waits for its confirm before the next one
    // goes, so the relay tops out near one broker round trip per message
    // (about 220 messages/s on a 2-core machine, docs/operations.md "Load").
    // Publishing the batch and then awaiting its confirms together would
    // lift that; it needs the failure handling below to mark each row by its
    // own confirm.
    for message in &messages {
        let body = serde_json::to_vec(&message.payload)?;
        let properties = broker::json_properties()
            .with_message_id(format!("outbox-{}", message.id).into())
            .with_priority(message.priority.clamp(0, 255) as u8);
        let publish = broker::publish_confirmed(
            channel,
            &message.exchange,
            &message.routing_key,
            &body,
            properties,
        );
        let Ok(outcome) = tokio::time::timeout(CONFIRM_TIMEOUT, publish).await else {
            // The rows stay locked while we wait, so a broker that never
            // answers must not hold them (and the transaction) for ever.
            tracing::warn!(
                outbox_id = message.id,
                "no publisher confirm in time; reconnecting"
            );
            store::mark_failed(&mut tx, message.id, "no publisher confirm in time").await?;
            store::mark_sent(&mut tx, &sent).await?;
            tx.commit().await?;
            metrics.publish_failed();
            metrics.published(sent.len());
            anyhow::bail!("no publisher confirm within {CONFIRM_TIMEOUT:?}");
        };
        match outcome {
            Ok(()) => sent.push(message.id),
            Err(error) => {
                tracing::warn!(outbox_id = message.id, exchange = %message.exchange, routing_key = %message.routing_key, %error, "publish failed");
                store::mark_failed(&mut tx, message.id, &error.to_string()).await?;
                metrics.publish_failed();
                if error.is_connection_lost() {
                    failure = Some(error);
                    break;
                }
            }
        }
    }
    store::mark_sent(&mut tx, &sent).await?;
    tx.commit().await?;
    metrics.published(sent.len());
    tracing::debug!(published = sent.len(), "outbox relayed");

    match failure {
        Some(error) => Err(error.into()),
        None => Ok(sent.len()),
    }
}
