//! Glowline's worker: renders queued jobs with the Glow model.
//!
//! It loads the model once, then consumes each lane's work queue with
//! manual acknowledgements and a prefetch equal to that lane's render slots
//! ([`config::LaneSlots`]); every delivery is run by [`job::handle`]. After a
//! broker outage it reconnects on its own; jobs already running carry on,
//! since they need only Postgres and S3. On SIGTERM it stops consuming,
//! gives running jobs a grace period to finish, hands back the rest and
//! exits.

pub mod config;
pub mod job;
pub mod model;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use contract::queue::Lane;
use futures_util::stream::{SelectAll, StreamExt};
use jobs::broker;
use jobs::retry::Backoff;
use jobs::s3::Store;
use jobs::shutdown::Shutdown;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::WorkerConfig;
use crate::job::Context;
use crate::model::ModelPool;

/// Runs the worker with an already loaded `model` and S3 `store` until
/// `shutdown`, then drains its jobs.
pub async fn run(
    config: WorkerConfig,
    model: Arc<ModelPool>,
    store: Store,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = jobs::db::connect(&config.database)
        .await
        .context("opening the job store")?;
    tokio::fs::create_dir_all(&config.worker.work_dir)
        .await
        .with_context(|| format!("creating work folder {}", config.worker.work_dir.display()))?;
    let owner = config.worker.owner();
    let hand_back = Shutdown::new();
    let ctx = Arc::new(Context {
        pool,
        store,
        model,
        settings: config.worker.clone(),
        owner: owner.clone(),
        shutdown: shutdown.clone(),
        hand_back: hand_back.clone(),
    });

    let slots = config.worker.slots;
    let lanes: Vec<(Lane, u16)> = [
        (Lane::Interactive, slots.interactive),
        (Lane::Long, slots.long),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    anyhow::ensure!(
        !lanes.is_empty(),
        "every lane has 0 slots: this worker would take no job"
    );
    let semaphores: HashMap<Lane, Arc<Semaphore>> = lanes
        .iter()
        .map(|(lane, n)| (*lane, Arc::new(Semaphore::new(*n as usize))))
        .collect();
    tracing::info!(%owner, device = %ctx.model.device, model_sha256 = %ctx.model.sha256, ?lanes, "worker ready");

    let mut tasks = JoinSet::new();
    let backoff = Backoff::default();
    let mut failures = 0;
    let mut connection = None;
    while !shutdown.is_triggered() {
        match consume(&ctx, &config, &lanes, &semaphores, &mut tasks).await {
            Ok(open) => connection = Some(open),
            Err(error) => {
                let delay = backoff.delay(failures);
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "lost the broker; reconnecting");
                failures = (failures + 1).min(backoff.max_retries);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    }

    drain(&mut tasks, &config, &hand_back).await;
    if let Some(connection) = connection {
        let _ = connection.close(0, "worker stopped".into()).await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Consumes every lane until shutdown (returning the still-open connection,
/// so that running jobs can acknowledge) or until the broker fails.
async fn consume(
    ctx: &Arc<Context>,
    config: &WorkerConfig,
    lanes: &[(Lane, u16)],
    semaphores: &HashMap<Lane, Arc<Semaphore>>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Connection> {
    let connection =
        broker::connect(&config.broker, &format!("glowline-worker-{}", ctx.owner)).await?;
    let mut consumers = SelectAll::new();
    let mut cancel = Vec::new();
    for (index, (lane, slots)) in lanes.iter().copied().enumerate() {
        let channel = connection.create_channel().await?;
        if index == 0 {
            broker::declare_topology(&channel, &config.broker).await?;
        }
        channel.basic_qos(slots, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                lane.queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        cancel.push((channel, consumer.tag()));
        consumers.push(consumer.map(move |delivery| (lane, delivery)));
    }
    tracing::info!("consuming work");

    loop {
        tokio::select! {
            next = consumers.next() => match next {
                Some((lane, Ok(delivery))) => {
                    let permit = semaphores[&lane].clone().acquire_owned().await?;
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        job::handle(ctx, delivery).await;
                        drop(permit);
                    });
                }
                Some((_, Err(error))) => return Err(error.into()),
                None => anyhow::bail!("the broker cancelled the consumers"),
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "a job task panicked");
                }
            }
            _ = ctx.shutdown.wait() => break,
        }
    }

    // Stop taking work but keep the channels: running jobs still ack on them.
    for (channel, tag) in cancel {
        let _ = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
    }
    Ok(connection)
}

/// Waits for running jobs up to the shutdown grace, then asks the rest to
/// hand their jobs back and waits for that.
async fn drain(tasks: &mut JoinSet<()>, config: &WorkerConfig, hand_back: &Shutdown) {
    if tasks.is_empty() {
        return;
    }
    tracing::info!(running = tasks.len(), "waiting for running jobs");
    let finished = tokio::time::timeout(config.worker.shutdown_grace(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::info!(
            running = tasks.len(),
            "shutdown grace over; handing jobs back"
        );
        hand_back.trigger();
        while tasks.join_next().await.is_some() {}
    }
}
