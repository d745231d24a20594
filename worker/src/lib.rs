//! Glowline's worker: renders queued jobs with the Glow model.
//!
//! It loads the model once, then consumes each lane's work queue with
//! manual acknowledgements and a prefetch equal to that lane's render slots
//! ([`config::LaneSlots`]); every delivery is run by [`job::handle`]. After a
//! broker outage it reconnects on its own; jobs already running carry on,
//! since they need only Postgres and S3. On SIGTERM it stops consuming,
//! gives running jobs a grace period to finish, hands back the rest and
//! exits. A small HTTP listener serves `/healthz`, `/readyz` and
//! `/metrics` ([`metrics`]) until the worker has stopped.

pub mod config;
pub mod job;
pub mod metrics;
pub mod model;

use std::collections::HashMap;
use std::net::SocketAddr;
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
use tokio::task::{JoinHandle, JoinSet};

use crate::config::WorkerConfig;
use crate::job::Context;
use crate::metrics::{WorkerMetrics, WORK_LINK};
use crate::model::ModelPool;

/// Runs the worker with an already loaded `model` and S3 `store` until
/// `shutdown`, then drains its jobs.
pub async fn run(
    config: WorkerConfig,
    model: Arc<ModelPool>,
    store: Store,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    start(config, model, store, shutdown).await?.join().await
}

/// A started worker.
pub struct Running {
    /// Where `/healthz`, `/readyz` and `/metrics` are served (the
    /// configured port, or the one the OS picked for port 0).
    pub http_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the worker has stopped and drained its jobs (after the
    /// shutdown signal).
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("the worker task panicked")?
    }
}

/// Connects to Postgres, binds the HTTP listener and starts consuming
/// work with an already loaded `model` and S3 `store`; the worker stops
/// when `shutdown` fires and its jobs are drained.
pub async fn start(
    config: WorkerConfig,
    model: Arc<ModelPool>,
    store: Store,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let pool = jobs::db::connect(&config.database)
        .await
        .context("opening the job store")?;
    tokio::fs::create_dir_all(&config.worker.work_dir)
        .await
        .with_context(|| format!("creating work folder {}", config.worker.work_dir.display()))?;
    let mut registry = jobs::metrics::registry("worker");
    let metrics = Arc::new(WorkerMetrics::register(&mut registry));
    let store = store.with_interceptor(metrics.s3.interceptor());
    let owner = config.worker.owner();
    let hand_back = Shutdown::new();
    let ctx = Arc::new(Context {
        pool: pool.clone(),
        store: store.clone(),
        model,
        metrics: metrics.clone(),
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
    metrics.started(ctx.model.load_seconds, ctx.model.device_kind, &lanes);

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let router = jobs::ops::router(jobs::ops::Ops {
        registry: Arc::new(registry),
        pool,
        broker: metrics.broker.clone(),
        store: Some(store),
        refresh: None,
    });
    // The listener outlives the shutdown signal: metrics and probes stay
    // up while running jobs drain, and stop with the worker.
    let http_stop = Shutdown::new();
    let http_shutdown = http_stop.clone();
    let http = tokio::spawn(async move {
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.wait().await });
        if let Err(error) = server.await {
            tracing::error!(%error, "HTTP listener failed");
        }
    });
    tracing::info!(%owner, device = %ctx.model.device, model_sha256 = %ctx.model.sha256, ?lanes, %http_addr, "worker ready");

    let task = tokio::spawn(async move {
        let result = work(ctx, config, lanes, semaphores, hand_back).await;
        http_stop.trigger();
        let _ = http.await;
        result
    });
    Ok(Running { http_addr, task })
}

/// Consumes and renders until the shutdown signal, then drains.
async fn work(
    ctx: Arc<Context>,
    config: WorkerConfig,
    lanes: Vec<(Lane, u16)>,
    semaphores: HashMap<Lane, Arc<Semaphore>>,
    hand_back: Shutdown,
) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let mut tasks = JoinSet::new();
    let backoff = Backoff::default();
    let mut failures = 0;
    let mut connection = None;
    while !shutdown.is_triggered() {
        let consumed = consume(&ctx, &config, &lanes, &semaphores, &mut tasks).await;
        ctx.metrics.broker.set(WORK_LINK, false);
        match consumed {
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
    ctx.metrics.broker.set(WORK_LINK, true);

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
