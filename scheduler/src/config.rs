//! The scheduler's settings, read from `configs/scheduler.toml` and
//! overridden by `GLOWLINE_SCHEDULER__...` environment variables (see
//! `jobs::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jobs::config::{BrokerConfig, DatabaseConfig, S3Config};
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
    /// The store whose outputs the API hands out as presigned URLs; the
    /// scheduler only signs them, it never reads or writes objects.
    pub s3: S3Config,
    pub downloads: DownloadConfig,
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
    /// Largest total of a request's URI and headers; a real client sends
    /// well under a kilobyte.
    pub max_header_bytes: usize,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// Who may call the API. The token itself is a secret and never lives in
/// this file: it comes from `GLOWLINE_API_TOKEN`, or from the file named
/// here or by `GLOWLINE_API_TOKEN_FILE` (one token per line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of accepted tokens, one per line (a mounted secret).
    pub token_file: Option<PathBuf>,
    /// Serve without any token when none is configured. Only for a stack
    /// on a developer's loopback: without it, a scheduler with no token
    /// refuses to start.
    pub allow_unauthenticated: bool,
}

/// Requests each client (by IP address) may send; both 0 turns the limit
/// off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests a client may send at once before the rate applies.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            // glowctl polls twice a second per job it follows; twenty
            // covers a user following a handful of jobs at once.
            requests_per_second: 20,
            // Enough for a script that submits a few dozen jobs in a loop.
            burst: 50,
        }
    }
}

/// The presigned URLs through which outputs are downloaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadConfig {
    /// How long a URL in a job's status works, 1 s to 7 days.
    pub url_expiry_secs: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            // Long enough to fetch a video over a slow link, short enough
            // that a leaked URL is soon useless; a client asks again for a
            // fresh one.
            url_expiry_secs: 15 * 60,
        }
    }
}

impl DownloadConfig {
    pub fn url_expiry(&self) -> Duration {
        Duration::from_secs(self.url_expiry_secs)
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
    /// Largest message on the submission queue; one job's spec is a few
    /// kilobytes.
    pub max_message_bytes: usize,
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
            max_message_bytes: 1024 * 1024,
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
