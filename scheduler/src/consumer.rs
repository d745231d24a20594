//! The submission-queue consumer: clients may publish a [`SubmitRequest`]
//! on [`SUBMIT_QUEUE`] instead of calling HTTP.
//!
//! Each message is validated and recorded like an HTTP submission. A valid
//! one is acknowledged after its job is committed; a refused one is
//! rejected without requeue, so it is dead-lettered and never blocks the
//! queue. Either way the outcome goes back as a [`SubmitReply`] when the
//! message names a `reply_to` queue. The consumer reconnects on its own
//! after a broker or database outage.

use std::sync::Arc;

use contract::queue::{SubmitReply, SUBMIT_QUEUE};
use futures_util::StreamExt;
use jobs::broker;
use jobs::config::BrokerConfig;
use jobs::retry::Backoff;
use jobs::shutdown::Shutdown;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use sqlx::PgPool;

use crate::config::JobLimits;
use crate::metrics::{SchedulerMetrics, Source, SUBMIT_LINK};
use crate::submit::{self, SubmitError};

/// Submissions handled at once: each is a short transaction, so a few in
/// flight keep Postgres busy without one consumer hoarding the queue.
const SUBMIT_PREFETCH: u16 = 16;

/// Runs the consumer until `shutdown`, reconnecting after failures.
pub async fn run(
    pool: PgPool,
    broker_config: BrokerConfig,
    limits: Arc<JobLimits>,
    metrics: Arc<SchedulerMetrics>,
    shutdown: Shutdown,
) {
    let backoff = Backoff::default();
    let mut failures = 0;
    while !shutdown.is_triggered() {
        let consumed = consume(&pool, &broker_config, &limits, &metrics, &shutdown).await;
        metrics.broker.set(SUBMIT_LINK, false);
        match consumed {
            Ok(()) => failures = 0,
            Err(error) => {
                let delay = backoff.delay(failures);
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "submission consumer lost its broker; reconnecting");
                failures = (failures + 1).min(backoff.max_retries);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    }
    tracing::info!("submission consumer stopped");
}

async fn consume(
    pool: &PgPool,
    broker_config: &BrokerConfig,
    limits: &JobLimits,
    metrics: &SchedulerMetrics,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let connection = broker::connect(broker_config, "glowline-scheduler-submit").await?;
    let channel = connection.create_channel().await?;
    broker::declare_topology(&channel, broker_config).await?;
    channel
        .basic_qos(SUBMIT_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            SUBMIT_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = SUBMIT_QUEUE, "consuming submissions");
    metrics.broker.set(SUBMIT_LINK, true);

    loop {
        let delivery = tokio::select! {
            delivery = deliveries.next() => delivery,
            _ = shutdown.wait() => break,
        };
        let Some(delivery) = delivery else {
            anyhow::bail!("the broker cancelled the consumer");
        };
        // Known limit: one submission at a time, each its own transaction,
        // so a queue burst is recorded at about 190 jobs/s here against 890
        // for concurrent HTTP posts (docs/operations.md "Load"). Handling up
        // to the prefetch count concurrently would close the gap; acks and
        // replies are per delivery already.
        handle(pool, limits, metrics, &channel, delivery?).await?;
    }
    let _ = connection.close(0, "shutting down".into()).await;
    Ok(())
}

/// Handles one submission. Errors are the broker's or an unavailable
/// database's: the message is requeued and the consumer reconnects.
async fn handle(
    pool: &PgPool,
    limits: &JobLimits,
    metrics: &SchedulerMetrics,
    channel: &Channel,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let outcome = match submit::parse_message(&delivery.data, limits) {
        Ok(request) => submit::submit(pool, limits, &request).await,
        Err(rejection) => Err(rejection.into()),
    };

    let reply = match outcome {
        Ok((job, created)) => {
            delivery.ack(BasicAckOptions::default()).await?;
            if created {
                metrics.submitted(&job.kind, Source::Queue);
            }
            SubmitReply::Accepted {
                job_id: job.id.to_string(),
                created,
            }
        }
        Err(SubmitError::Rejected(rejection)) => {
            tracing::warn!(reason = %rejection, "submission rejected");
            metrics.rejected(Source::Queue);
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await?;
            SubmitReply::Rejected {
                reason: rejection.to_string(),
            }
        }
        Err(SubmitError::Store(error)) => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
            return Err(error.into());
        }
    };

    if let Some(reply_to) = delivery.properties.reply_to() {
        let mut properties = broker::json_properties();
        if let Some(correlation_id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        send_reply(channel, reply_to.as_str(), &reply, properties).await?;
    }
    Ok(())
}

/// Replies go to the default exchange without confirms: the reply queue may
/// be gone (its client gave up), and the job is recorded either way.
async fn send_reply(
    channel: &Channel,
    reply_to: &str,
    reply: &SubmitReply,
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(reply)?;
    channel
        .basic_publish(
            "".into(),
            reply_to.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?;
    Ok(())
}
