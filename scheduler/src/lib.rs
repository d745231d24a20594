//! Glowline's scheduler: records jobs and dispatches them to GPU workers.
//!
//! Four tasks share one Postgres pool and one [`Shutdown`]: the HTTP API
//! ([`api`]), the submission-queue consumer ([`consumer`]), the outbox
//! relay ([`relay`]) and the lease reaper ([`reaper`]). Submissions over
//! HTTP and over the queue are validated the same way ([`submit`]) and
//! written, with their dispatch, in one transaction; the relay publishes the
//! dispatch afterwards, so a crash between commit and publish loses nothing.
//!
//! This crate never links libtorch: workers do the rendering.

pub mod api;
pub mod config;
pub mod consumer;
pub mod reaper;
pub mod relay;
pub mod submit;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use jobs::shutdown::Shutdown;
use tokio::task::JoinHandle;

use crate::config::SchedulerConfig;

/// A started scheduler.
pub struct Running {
    /// Where the HTTP API listens (the configured port, or the one the OS
    /// picked for port 0).
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits until every task has stopped (after the shutdown signal).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "scheduler task panicked");
            }
        }
    }
}

/// Connects to Postgres (applying migrations if configured), declares the
/// broker topology, binds the HTTP listener and starts every task; they stop
/// when `shutdown` fires.
pub async fn start(config: SchedulerConfig, shutdown: Shutdown) -> anyhow::Result<Running> {
    let pool = jobs::db::connect(&config.database)
        .await
        .context("opening the job store")?;
    // Declared before accepting work so that the first submissions find
    // their queues; an unreachable broker is not fatal, the tasks keep
    // reconnecting (and declaring) on their own.
    if let Err(error) = declare_topology(&config.broker).await {
        tracing::warn!(%error, "cannot declare the broker topology yet");
    }
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding the HTTP API to {}", config.http.listen))?;
    let addr = listener.local_addr()?;
    let limits = Arc::new(config.jobs.clone());

    let router = api::router(
        api::ApiState {
            pool: pool.clone(),
            limits: limits.clone(),
        },
        config.http.max_body_bytes,
    );
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.wait().await });
        if let Err(error) = server.await {
            tracing::error!(%error, "HTTP server failed");
        }
    });
    tracing::info!(%addr, "HTTP API listening");

    let tasks = vec![
        http,
        tokio::spawn(consumer::run(
            pool.clone(),
            config.broker.clone(),
            limits,
            shutdown.clone(),
        )),
        tokio::spawn(relay::run(
            pool.clone(),
            config.broker.clone(),
            config.relay.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(reaper::run(pool, config.reaper.clone(), shutdown)),
    ];
    Ok(Running { addr, tasks })
}

async fn declare_topology(config: &jobs::config::BrokerConfig) -> anyhow::Result<()> {
    let connection = jobs::broker::connect(config, "glowline-scheduler-setup").await?;
    let channel = connection.create_channel().await?;
    jobs::broker::declare_topology(&channel, config).await?;
    connection.close(0, "topology declared".into()).await?;
    Ok(())
}
