//! The `glowctl` binary: Glowline's command-line client.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use glowctl::{Client, ClientConfig, SubmitOptions, Via, ENV_PREFIX};
use uuid::Uuid;

/// Submit Glow face-editing jobs to Glowline, follow them and fetch their outputs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration; GLOWCTL__SECTION__KEY variables override it.
    #[arg(long, env = "GLOWCTL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload a spec's input photos, submit it, wait and download the outputs.
    Submit {
        /// The job spec (JSON); inputs are paths relative to it.
        spec: PathBuf,
        /// How to submit.
        #[arg(long, value_enum, default_value = "queue")]
        via: Via,
        /// Return once submitted instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// Where to download the outputs (default: ./<job id>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Resubmitting with the same key returns the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Higher runs first within a lane.
        #[arg(long, default_value_t = 0)]
        priority: i16,
        /// Seconds the job may run.
        #[arg(long)]
        deadline_secs: Option<u32>,
    },
    /// Show a job.
    Status { id: Uuid },
    /// List jobs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        batch: Option<Uuid>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a job (at once if queued, at the next frame if running).
    Cancel { id: Uuid },
    /// Submit a JSON Lines manifest of specs as one batch and follow it.
    Batch {
        manifest: PathBuf,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// Show a batch's progress.
    BatchStatus { id: Uuid },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::telemetry::init();
    let args = Args::parse();
    let config: ClientConfig = jobs::config::load(args.config.as_deref(), ENV_PREFIX)?;
    let token = jobs::config::api_tokens(None)?.into_iter().next();
    let client =
        Client::new(config, jobs::s3::credentials_from_env()?).with_api_token(token.as_deref())?;

    match args.command {
        Command::Submit {
            spec,
            via,
            no_wait,
            out,
            idempotency_key,
            priority,
            deadline_secs,
        } => {
            let prepared = client.prepare(&spec).await?;
            let options = SubmitOptions {
                idempotency_key,
                priority,
                deadline_secs,
            };
            let id = client.submit(&prepared, &options, via).await?;
            println!("{id}");
            if no_wait {
                return Ok(());
            }
            let job = client.wait(id, true).await?;
            if !glowctl::succeeded(&job) {
                anyhow::bail!("job {id} {}: {}", job.status, job.error.unwrap_or_default());
            }
            let dir = out.unwrap_or_else(|| PathBuf::from(id.to_string()));
            for path in client.download(&job, &dir).await? {
                println!("{}", path.display());
            }
        }
        Command::Status { id } => print_json(&client.job(id).await?)?,
        Command::List {
            status,
            kind,
            batch,
            limit,
        } => {
            let mut query = format!("limit={limit}");
            for (name, value) in [
                ("status", status),
                ("kind", kind),
                ("batch_id", batch.map(|b| b.to_string())),
            ] {
                if let Some(value) = value {
                    query.push_str(&format!("&{name}={value}"));
                }
            }
            for job in client.list(&query).await? {
                println!(
                    "{}  {:<10} {:<15} {:>4.0}%  {}",
                    job.id,
                    job.status,
                    job.kind,
                    job.progress * 100.0,
                    job.created_at
                );
            }
        }
        Command::Cancel { id } => println!("{}", client.cancel(id).await?),
        Command::Batch {
            manifest,
            label,
            no_wait,
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let base = manifest.parent().unwrap_or(std::path::Path::new("."));
            let (batch, jobs) = client.submit_batch(&text, base, label.as_deref()).await?;
            println!("{batch} ({} jobs)", jobs.len());
            if !no_wait {
                let status = client.wait_batch(batch, true).await?;
                print_json(&status)?;
                anyhow::ensure!(
                    status.status == "succeeded",
                    "batch {batch} {}",
                    status.status
                );
            }
        }
        Command::BatchStatus { id } => print_json(&client.batch(id).await?)?,
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
