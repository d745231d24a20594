//! The scheduler's settings, read from `configs/scheduler.toml` and
//! overridden by `GLOWLINE_SCHEDULER__...` environment variables (see
//! `jobs::config`).

use std::net::SocketAddr;
use std::time::Duration;

use jobs::config::{BrokerConfig, DatabaseConfig};
use serde::{Deserialize, Serialize};

/// Prefix of the scheduler's environment overrides.
pub const ENV_PREFIX: &str = "GLOWLINE_SCHEDULER";

/// Everything the scheduler reads at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub jobs: JobLimits,
    pub relay: RelayConfig,
    pub reaper: ReaperConfig,
}

/// The HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest request body; a batch manifest of the largest allowed batch
    /// of typical specs fits well inside the default.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Defaults and bounds applied to every submitted job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobLimits {
    /// Attempts before a job whose workers keep dying is failed.
    pub max_attempts: i32,
    /// Deadline of an interactive job when the submission names none.
    pub interactive_deadline_secs: u32,
    /// Deadline of a long job when the submission names none.
    pub long_deadline_secs: u32,
    /// Largest deadline a submission may ask for.
    pub max_deadline_secs: u32,
    /// Most jobs in one batch manifest.
    pub max_batch_jobs: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            // A job that killed three workers is more likely the cause than
            // the victim.
            max_attempts: 3,
            // An edit renders in seconds; minutes mean something is stuck.
            interactive_deadline_secs: 300,
            // The largest video (3000 frames at 1024 px) takes about an hour
            // on a CPU worker.
            long_deadline_secs: 2 * 3600,
            max_deadline_secs: 6 * 3600,
            max_batch_jobs: 1000,
        }
    }
}

/// The outbox relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Pause between polls when the outbox is empty.
    pub poll_interval_ms: u64,
    /// Rows published per transaction.
    pub batch_size: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            // Adds at most this much to a job's dispatch latency, at the
            // cost of one cheap indexed query per poll.
            poll_interval_ms: 100,
            // Confirms are awaited per batch; 100 keeps a batch's
            // transaction short while amortizing the round trips.
            batch_size: 100,
        }
    }
}

impl RelayConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// The lease reaper.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaperConfig {
    /// Pause between sweeps for expired leases.
    pub interval_ms: u64,
    /// Jobs handled per sweep.
    pub batch_size: i64,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            // A dead worker's job waits at most its lease plus this before
            // it is queued again.
            interval_ms: 5000,
            batch_size: 100,
        }
    }
}

impl ReaperConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/scheduler.toml");
        let config: SchedulerConfig =
            jobs::config::load(Some(&path), "GLOWLINE_SCHEDULER_UNUSED").unwrap();
        assert_eq!(config.jobs.max_attempts, JobLimits::default().max_attempts);
    }
}
