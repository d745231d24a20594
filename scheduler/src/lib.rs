//! Glowline's scheduler: records jobs and dispatches them to GPU workers.
//!
//! Four tasks share one Postgres pool and one [`Shutdown`]: the HTTP API
//! ([`api`], with `/healthz`, `/readyz` and `/metrics` beside it; see
//! [`metrics`]), the submission-queue consumer ([`consumer`]), the outbox
//! relay ([`relay`]) and the lease reaper ([`reaper`]). Submissions over
//! HTTP and over the queue are validated the same way ([`submit`]) and
//! written, with their dispatch, in one transaction; the relay publishes the
//! dispatch afterwards, so a crash between commit and publish loses nothing.
//!
//! This crate never links libtorch: workers do the rendering.

pub mod api;
pub mod config;
pub mod consumer;
pub mod guard;
pub mod metrics;
pub mod reaper;
pub mod relay;
pub mod submit;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use jobs::shutdown::Shutdown;
use tokio::task::JoinHandle;

use crate::config::SchedulerConfig;
use crate::metrics::SchedulerMetrics;

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

/// The scheduler's secrets, kept apart from its configuration so that they
/// never sit in a config file (or in its `Debug` output).
#[derive(Clone)]
pub struct Secrets {
    /// Bearer tokens the API accepts; empty only with
    /// `http.auth.allow_unauthenticated`.
    pub api_tokens: Vec<String>,
    /// The S3 credentials download URLs are signed with.
    pub s3: jobs::s3::Credentials,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets({} API tokens, S3 credentials; redacted)",
            self.api_tokens.len()
        )
    }
}

impl Secrets {
    /// Reads the API tokens (`GLOWLINE_API_TOKEN`, the token file) and the
    /// S3 credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) from
    /// the environment.
    pub fn from_env(config: &SchedulerConfig) -> anyhow::Result<Self> {
        Ok(Self {
            api_tokens: jobs::config::api_tokens(config.http.auth.token_file.as_deref())?,
            s3: jobs::s3::credentials_from_env()
                .context("the scheduler signs download URLs with S3 credentials")?,
        })
    }
}

/// [`start_with`] the secrets in the environment ([`Secrets::from_env`]).
pub async fn start(config: SchedulerConfig, shutdown: Shutdown) -> anyhow::Result<Running> {
    let secrets = Secrets::from_env(&config)?;
    start_with(config, secrets, shutdown).await
}

/// Connects to Postgres (applying migrations if configured), declares the
/// broker topology, binds the HTTP listener and starts every task; they stop
/// when `shutdown` fires. Refuses to start without an API token unless the
/// configuration explicitly allows it.
pub async fn start_with(
    config: SchedulerConfig,
    secrets: Secrets,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let guard = Arc::new(guard::Guard::new(
        &secrets.api_tokens,
        &config.http.auth,
        &config.http.rate_limit,
        config.http.max_body_bytes,
        config.http.max_header_bytes,
    )?);
    let downloads = Arc::new(
        api::Downloads::new(
            jobs::s3::Store::new(&config.s3, secrets.s3),
            config.downloads.url_expiry(),
        )
        .context("downloads.url_expiry_secs")?,
    );
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
    let mut registry = jobs::metrics::registry("scheduler");
    let metrics = Arc::new(SchedulerMetrics::register(&mut registry));

    let router = api::router(api::ApiState {
        pool: pool.clone(),
        limits: limits.clone(),
        metrics: metrics.clone(),
        guard,
        downloads,
    })
    .merge(jobs::ops::router(ops(registry, &pool, &metrics)))
    .layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        metrics::track_http,
    ));
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        // The peer address keys the per-client rate limit.
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, service)
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
            metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(relay::run(
            pool.clone(),
            config.broker.clone(),
            config.relay.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(reaper::run(pool, config.reaper.clone(), metrics, shutdown)),
    ];
    Ok(Running { addr, tasks })
}

/// The health and metrics endpoints. The scheduler never touches S3, so
/// its readiness is the database and its two broker links; the outbox
/// gauges are sampled from Postgres at each scrape.
fn ops(
    registry: prometheus_client::registry::Registry,
    pool: &sqlx::PgPool,
    metrics: &Arc<SchedulerMetrics>,
) -> jobs::ops::Ops {
    let (sample_pool, sample_metrics) = (pool.clone(), metrics.clone());
    jobs::ops::Ops {
        registry: Arc::new(registry),
        pool: pool.clone(),
        broker: metrics.broker.clone(),
        store: None,
        refresh: Some(Arc::new(move || {
            let (pool, metrics) = (sample_pool.clone(), sample_metrics.clone());
            Box::pin(async move { metrics.sample_outbox(&pool).await })
        })),
    }
}

async fn declare_topology(config: &jobs::config::BrokerConfig) -> anyhow::Result<()> {
    let connection = jobs::broker::connect(config, "glowline-scheduler-setup").await?;
    let channel = connection.create_channel().await?;
    jobs::broker::declare_topology(&channel, config).await?;
    connection.close(0, "topology declared".into()).await?;
    Ok(())
}
