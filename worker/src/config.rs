//! The worker's settings, read from `configs/worker.toml` and overridden by
//! `GLOWLINE_WORKER__...` environment variables (see `jobs::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jobs::config::{BrokerConfig, DatabaseConfig, S3Config};
use serde::{Deserialize, Serialize};

/// Prefix of the worker's environment overrides.
pub const ENV_PREFIX: &str = "GLOWLINE_WORKER";

/// Everything the worker reads at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub worker: WorkerSettings,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub s3: S3Config,
}

/// The worker's HTTP listener, serving `/healthz`, `/readyz` and
/// `/metrics` only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to listen; port 0 lets the OS pick one (tests do).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            // Beside the scheduler's 8080, and clear of Prometheus' own 9090.
            listen: "127.0.0.1:8081".parse().expect("valid address"),
        }
    }
}

/// Render slots per lane: how many jobs of that lane run at once. Each
/// lane has its own, so an edit never waits behind a video on one worker;
/// 0 leaves the lane to other workers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaneSlots {
    pub interactive: u16,
    pub long: u16,
}

impl Default for LaneSlots {
    fn default() -> Self {
        Self {
            interactive: 1,
            long: 1,
        }
    }
}

/// How this worker renders and holds its jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Lease owner name; host name and process id when empty.
    pub id: String,
    /// The model file.
    pub model: PathBuf,
    /// Attribute directions of the model; `NAME.directions.safetensors`
    /// beside it when empty. Without them only non-edit jobs render.
    pub directions: Option<PathBuf>,
    /// `auto` (CUDA when there is one, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// libtorch CPU threads; 0 keeps libtorch's default.
    pub threads: usize,
    pub slots: LaneSlots,
    /// How long a claim holds without a heartbeat.
    pub lease_secs: u64,
    /// How often a running job extends its lease and records progress.
    pub heartbeat_secs: u64,
    /// How long a job may keep its message unacknowledged. Past this the
    /// message is acknowledged and the lease alone guards the job, so a
    /// long job is never cut off by the broker's consumer timeout.
    pub ack_handoff_secs: u64,
    /// On SIGTERM, how long running jobs may take to finish before they are
    /// handed back to the queue.
    pub shutdown_grace_secs: u64,
    /// Where jobs' inputs and outputs live while they run.
    pub work_dir: PathBuf,
    /// Largest input file; larger ones fail the job.
    pub max_input_bytes: u64,
    /// The ffmpeg program used for MP4 output.
    pub ffmpeg: PathBuf,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: String::new(),
            model: PathBuf::from("models/celeba64.safetensors"),
            directions: None,
            device: "auto".into(),
            threads: 0,
            slots: LaneSlots::default(),
            // A dead worker's job is picked up again within a minute; a
            // live one renews every 10 s, so two missed heartbeats in a row
            // (a database blip) cost nothing.
            lease_secs: 60,
            heartbeat_secs: 10,
            // RabbitMQ closes a channel whose delivery stays unacknowledged
            // for 30 minutes (its consumer_timeout default); hand off well
            // before that.
            ack_handoff_secs: 20 * 60,
            // Kubernetes' default termination grace is 30 s; leave time to
            // hand back and exit.
            shutdown_grace_secs: 20,
            work_dir: std::env::temp_dir().join("glowline-worker"),
            // Camera photos are a few MB; 50 MB leaves room for PNGs of a
            // large scan while refusing absurd uploads before download.
            max_input_bytes: 50 * 1024 * 1024,
            ffmpeg: PathBuf::from("ffmpeg"),
        }
    }
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    pub fn ack_handoff(&self) -> Duration {
        Duration::from_secs(self.ack_handoff_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The lease owner name: the configured id, or host and process id.
    pub fn owner(&self) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/worker.toml");
        let config: WorkerConfig =
            jobs::config::load(Some(&path), "GLOWLINE_WORKER_UNUSED").unwrap();
        assert_eq!(
            config.worker.lease_secs,
            WorkerSettings::default().lease_secs
        );
        assert!(config.worker.ack_handoff() < std::time::Duration::from_secs(30 * 60));
    }
}
