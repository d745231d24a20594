//! The `worker` binary: loads its configuration and the model, then renders
//! jobs until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use jobs::shutdown::Shutdown;
use worker::config::{WorkerConfig, ENV_PREFIX};
use worker::model::ModelPool;

/// Glowline's render worker.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration; GLOWLINE_WORKER__SECTION__KEY variables override it.
    #[arg(long, env = "GLOWLINE_WORKER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::telemetry::init();
    let args = Args::parse();
    let config: WorkerConfig = jobs::config::load(args.config.as_deref(), ENV_PREFIX)?;

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();

    let settings = config.worker.clone();
    let copies = usize::from(settings.slots.interactive) + usize::from(settings.slots.long);
    let model = tokio::task::spawn_blocking(move || ModelPool::load(&settings, copies))
        .await
        .context("loading the model")??;
    let store = jobs::s3::Store::new(&config.s3, jobs::s3::credentials_from_env()?);
    worker::run(config, Arc::new(model), store, shutdown).await
}
