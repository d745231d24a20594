//! The `scheduler` binary: loads its configuration and runs the scheduler
//! until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use clap::Parser;
use jobs::shutdown::Shutdown;
use scheduler::config::{SchedulerConfig, ENV_PREFIX};

/// Glowline's scheduler: HTTP API, submission consumer, outbox relay and
/// lease reaper.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration; GLOWLINE_SCHEDULER__SECTION__KEY variables override it.
    #[arg(long, env = "GLOWLINE_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::telemetry::init();
    let args = Args::parse();
    let config: SchedulerConfig = jobs::config::load(args.config.as_deref(), ENV_PREFIX)?;

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let running = scheduler::start(config, shutdown).await?;
    running.join().await;
    Ok(())
}
