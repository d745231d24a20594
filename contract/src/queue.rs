//! The job system's contract: job statuses, the broker topology (exchange
//! and queue names), and the messages that travel on it.
//!
//! A job flows like this: a client submits a [`SubmitRequest`] (over HTTP or
//! on [`SUBMIT_QUEUE`]); the scheduler records it and, through its outbox,
//! publishes a [`Dispatch`] to the work queue of the job's [`Lane`]; a worker
//! renders it and records the terminal status, whose [`JobEvent`] the
//! scheduler's outbox relay publishes on [`EVENTS_EXCHANGE`].
//!
//! Postgres is the source of truth for a job; messages only carry ids and
//! what a consumer needs to route or log them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Direct exchange for submissions and work dispatch; routing keys are the
/// queue names below, so publishing with `mandatory` detects a missing queue.
pub const JOBS_EXCHANGE: &str = "glowline.jobs";

/// Queue that clients may publish [`SubmitRequest`]s to instead of calling HTTP.
pub const SUBMIT_QUEUE: &str = "glowline.submit";

/// Topic exchange for [`JobEvent`]s; routing keys are `job.<status>`.
pub const EVENTS_EXCHANGE: &str = "glowline.events";

/// Fanout exchange that receives rejected and over-delivered messages.
pub const DEAD_LETTER_EXCHANGE: &str = "glowline.dead";

/// Queue bound to [`DEAD_LETTER_EXCHANGE`], kept for inspection.
pub const DEAD_LETTER_QUEUE: &str = "glowline.dead";

/// Header carrying why a message was dead-lettered by Glowline itself.
pub const REJECT_REASON_HEADER: &str = "x-glowline-reason";

/// Which work queue a job goes to, so that interactive edits are never stuck
/// behind long videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Single-image edits and other jobs that finish in seconds.
    Interactive,
    /// Videos and other jobs that may run for many minutes.
    Long,
}

impl Lane {
    /// Every lane, for declaring the topology.
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Long];

    /// The work queue (and routing key on [`JOBS_EXCHANGE`]) of this lane.
    pub fn queue(self) -> &'static str {
        match self {
            Lane::Interactive => "glowline.work.interactive",
            Lane::Long => "glowline.work.long",
        }
    }

    /// The lane's name as stored in Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Long => "long",
        }
    }
}

impl FromStr for Lane {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Lane::Interactive),
            "long" => Ok(Lane::Long),
            other => Err(UnknownName {
                what: "lane",
                name: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status. `Queued` and `Running` are live; the rest are terminal
/// and never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobStatus {
    /// Every status, in the order of the job's life.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
    ];

    /// The status's name as stored in Postgres and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
        }
    }

    /// Whether the job is finished for good.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Routing key of this status's [`JobEvent`] on [`EVENTS_EXCHANGE`].
    pub fn event_routing_key(self) -> String {
        format!("job.{}", self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "job status",
                name: s.to_owned(),
            })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of a closed set (a status, a lane).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// What kind of name was expected.
    pub what: &'static str,
    /// The name that was given.
    pub name: String,
}

/// A job submission, the same over HTTP and on [`SUBMIT_QUEUE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The render job, a [`crate::spec::JobSpec`] document whose input
    /// references are S3 keys under [`INPUT_PREFIX`]. Kept as JSON here so
    /// that the scheduler can reject a bad spec with the spec's own reason.
    pub spec: serde_json::Value,
    /// A resubmission with the same key returns the existing job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Higher runs first within a lane; 0 when absent.
    #[serde(default)]
    pub priority: i16,
    /// Seconds the job may run before it is timed out; the lane's default
    /// when absent.
    #[serde(default)]
    pub deadline_secs: Option<u32>,
}

/// S3 prefix under which clients upload inputs; specs may name nothing else.
pub const INPUT_PREFIX: &str = "uploads/";

/// S3 prefix under which every job's outputs live, one folder per job.
pub const OUTPUTS_PREFIX: &str = "jobs/";

/// The S3 prefix holding a job's outputs: `jobs/<id>/`.
pub fn output_prefix(job_id: &str) -> String {
    format!("{OUTPUTS_PREFIX}{job_id}/")
}

/// Longest object key S3 stores.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a string is not an object key Glowline may read or write.
///
/// Keys are confined to [`INPUT_PREFIX`] and [`OUTPUTS_PREFIX`] of the one
/// configured bucket, and are taken literally: they are never URL-decoded,
/// never name a bucket, and never walk out of their folder. Each message
/// quotes the key (escaped) and says what is allowed instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty; name an object under {prefix:?}")]
    Empty { prefix: &'static str },
    #[error("key is {len} bytes long; S3 keys hold at most {MAX_KEY_BYTES}")]
    TooLong { len: usize },
    #[error(
        "key {key:?} is a URL; name an object key under {prefix:?} of the \
         configured bucket, never another bucket or address"
    )]
    Url { key: String, prefix: &'static str },
    #[error("key {key:?} is an absolute path; keys are relative to the bucket, under {prefix:?}")]
    Absolute { key: String, prefix: &'static str },
    #[error(
        "key {key:?} holds {found:?}; keys are taken literally (never URL-decoded) and may \
         only hold ASCII letters, digits, `-`, `_`, `.` and `/` between segments"
    )]
    Character { key: String, found: char },
    #[error("key {key:?} has a `..`, `.` or empty segment; keys may not leave their folder")]
    Traversal { key: String },
    #[error("key {key:?} does not name an object under {prefix:?}, the only folder it may name")]
    OutsidePrefix { key: String, prefix: &'static str },
}

/// Checks that `key` names an object inside `prefix` (which ends in `/`):
/// plain ASCII segments, no traversal, no URL, at least one segment below
/// the prefix.
pub fn check_key(key: &str, prefix: &'static str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty { prefix });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: key.len() });
    }
    if key.contains("://") {
        return Err(KeyError::Url {
            key: key.to_owned(),
            prefix,
        });
    }
    if key.starts_with('/') || key.starts_with('\\') {
        return Err(KeyError::Absolute {
            key: key.to_owned(),
            prefix,
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if let Some(found) = key.chars().find(|c| !allowed(*c)) {
        return Err(KeyError::Character {
            key: key.to_owned(),
            found,
        });
    }
    // `.` and `..` first, so that `../etc/passwd` is named for what it
    // tries; an empty segment only after the prefix, so that a bare
    // `uploads/` is named as the folder it is.
    let segments = || key.split('/');
    if segments().any(|segment| segment == "." || segment == "..") {
        return Err(KeyError::Traversal {
            key: key.to_owned(),
        });
    }
    let below = key.strip_prefix(prefix);
    if below.is_none_or(str::is_empty) {
        return Err(KeyError::OutsidePrefix {
            key: key.to_owned(),
            prefix,
        });
    }
    if segments().any(str::is_empty) {
        return Err(KeyError::Traversal {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// Checks a job's input reference: an uploaded object under [`INPUT_PREFIX`].
pub fn check_input_key(key: &str) -> Result<(), KeyError> {
    check_key(key, INPUT_PREFIX)
}

/// Checks a key (or a listing prefix without its trailing `/`) that the
/// job system reads or writes: an input under [`INPUT_PREFIX`] or an output
/// under [`OUTPUTS_PREFIX`]. Anything else in the bucket is out of reach.
pub fn check_stored_key(key: &str) -> Result<(), KeyError> {
    if key.starts_with(OUTPUTS_PREFIX) {
        check_key(key, OUTPUTS_PREFIX)
    } else {
        check_key(key, INPUT_PREFIX)
    }
}

/// The scheduler's answer to a submission on [`SUBMIT_QUEUE`], sent to the
/// message's `reply_to` queue when it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubmitReply {
    /// The job exists (new, or found by its idempotency key).
    Accepted {
        /// The job's id.
        job_id: String,
        /// False when the idempotency key matched an earlier job.
        created: bool,
    },
    /// The submission was refused and no job was created.
    Rejected {
        /// Why, naming the bad input.
        reason: String,
    },
}

/// The message on a lane's work queue that asks a worker to run a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    /// The job to run; the worker reads everything else from Postgres.
    pub job_id: String,
    /// The spec's kind, for logs only.
    pub kind: String,
}

/// A job's terminal event, published on [`EVENTS_EXCHANGE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job that finished.
    pub job_id: String,
    /// Its terminal status.
    pub status: JobStatus,
    /// The attempt that finished it.
    pub attempt: i32,
    /// The failure's reason, when it failed.
    pub error: Option<String>,
    /// S3 keys of its outputs, when it succeeded.
    pub output_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn only_queued_and_running_are_live() {
        let live: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(live, [JobStatus::Queued, JobStatus::Running]);
    }

    #[test]
    fn input_keys_stay_inside_the_upload_folder() {
        assert_eq!(check_input_key("uploads/0b1c/0-face_1.png"), Ok(()));
        let reject = |key: &str| check_input_key(key).unwrap_err().to_string();
        assert_eq!(
            reject("uploads/../jobs/x/result.png"),
            r#"key "uploads/../jobs/x/result.png" has a `..`, `.` or empty segment; keys may not leave their folder"#
        );
        assert!(reject("/etc/passwd").contains("is an absolute path"));
        assert!(reject("\\uploads\\x.png").contains("is an absolute path"));
        assert!(reject("s3://other-bucket/uploads/x.png").contains("is a URL"));
        assert!(reject("uploads/%2e%2e/jobs/x").contains("holds '%'"));
        assert!(reject("uploads/a\\b.png").contains("holds '\\\\'"));
        assert!(reject("uploads/f\u{e4}ce.png").contains("holds '\u{e4}'"));
        assert!(reject("uploads/x\u{202e}gnp.exe").contains("holds '\\u{202e}'"));
        assert!(reject("uploads/a\nb").contains("holds '\\n'"));
        assert!(reject("uploads//x.png").contains("empty segment"));
        assert!(reject("uploads/./x.png").contains("empty segment"));
        assert!(reject("uploads/").contains("does not name an object under \"uploads/\""));
        assert!(reject("jobs/x/result.png").contains("does not name an object under \"uploads/\""));
        assert!(reject("other-bucket/uploads/x.png").contains("does not name an object under"));
        assert_eq!(
            reject(&format!("uploads/{}", "a".repeat(1100))),
            "key is 1108 bytes long; S3 keys hold at most 1024"
        );
        assert!(reject("").contains("key is empty"));
    }

    #[test]
    fn stored_keys_are_inputs_or_outputs() {
        assert_eq!(check_stored_key("uploads/a/face.png"), Ok(()));
        assert_eq!(check_stored_key("jobs/0192/frames/frame_0001.png"), Ok(()));
        assert_eq!(check_stored_key("jobs/0192"), Ok(()));
        assert!(check_stored_key("jobs/").is_err());
        assert!(check_stored_key("jobs/../uploads/x").is_err());
        assert!(check_stored_key("secrets/key.pem").is_err());
    }

    #[test]
    fn submit_request_rejects_unknown_fields() {
        let json = r#"{"spec":{},"colour":"red"}"#;
        assert!(serde_json::from_str::<SubmitRequest>(json).is_err());
    }
}
