//! Checking a run's jobs against what the job system promises (see
//! docs/pipeline.md): every submission became exactly one job, every job
//! reached a terminal status with exactly one terminal event and one
//! announcement, its outputs in S3 are exactly the keys it recorded, and
//! nothing is left queued, running or unsent.
//!
//! Postgres is read directly, not through the API: the audit must not
//! depend on the code it audits.

use std::collections::{BTreeMap, HashMap, HashSet};

use contract::queue::{output_prefix, JobEvent, EVENTS_EXCHANGE};
use futures_util::{stream, StreamExt, TryStreamExt};
use jobs::config::BrokerConfig;
use jobs::s3::Store;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Statuses after which a job never changes; also the names of their events.
const TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

/// S3 listings in flight at once while checking outputs.
const LISTINGS_IN_FLIGHT: usize = 8;

/// One job as the audit sees it.
#[derive(Debug, Clone)]
pub struct AuditedJob {
    pub id: Uuid,
    pub key: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub attempt: i32,
    pub output_keys: Vec<String>,
    /// Rows of the event log that end the job.
    pub terminal_events: i64,
}

/// What the audit found. [`Audit::lost`] and [`Audit::duplicated`] are the
/// headline figures; the lists name the jobs behind them.
#[derive(Debug, Default)]
pub struct Audit {
    /// Submissions the driver made (by idempotency key).
    pub expected: usize,
    /// Keys that no job carries: submissions that were lost.
    pub missing: Vec<String>,
    /// Jobs per status.
    pub statuses: BTreeMap<String, usize>,
    /// Jobs still queued or running.
    pub stuck: Vec<Uuid>,
    /// Terminal jobs that did not succeed, with their error.
    pub failed: Vec<(Uuid, String, String)>,
    /// Jobs with more than one terminal event.
    pub double_finished: Vec<Uuid>,
    /// Terminal jobs without a terminal event.
    pub unrecorded: Vec<Uuid>,
    /// Jobs whose terminal announcement in the outbox is not exactly one
    /// sent row: (job, rows, sent rows).
    pub announcements: Vec<(Uuid, i64, i64)>,
    /// Succeeded jobs whose objects in S3 differ from their recorded
    /// outputs: (job, stored keys, recorded keys).
    pub outputs: Vec<(Uuid, Vec<String>, Vec<String>)>,
    /// Recorded outputs that are empty objects.
    pub empty_outputs: Vec<String>,
    /// Rows of the event log per event name.
    pub events: BTreeMap<String, i64>,
    /// Jobs per number of attempts.
    pub attempts: BTreeMap<i32, usize>,
    /// Outbox rows never confirmed by the broker.
    pub unsent: i64,
}

impl Audit {
    /// Audits the jobs submitted with `keys` in the run's store.
    pub async fn run(pool: &PgPool, store: &Store, keys: &[String]) -> anyhow::Result<Self> {
        let jobs = audited_jobs(pool).await?;
        let mut audit = Audit {
            expected: keys.len(),
            ..Audit::default()
        };

        let found: HashSet<&str> = jobs.iter().filter_map(|j| j.key.as_deref()).collect();
        audit.missing = keys
            .iter()
            .filter(|k| !found.contains(k.as_str()))
            .cloned()
            .collect();

        let announcements = announcements(pool).await?;
        for job in &jobs {
            *audit.statuses.entry(job.status.clone()).or_default() += 1;
            *audit.attempts.entry(job.attempt).or_default() += 1;
            let terminal = TERMINAL.contains(&job.status.as_str());
            if !terminal {
                audit.stuck.push(job.id);
                continue;
            }
            if job.status != "succeeded" {
                let error = job.error.clone().unwrap_or_default();
                audit.failed.push((job.id, job.status.clone(), error));
            }
            match job.terminal_events {
                0 => audit.unrecorded.push(job.id),
                1 => {}
                _ => audit.double_finished.push(job.id),
            }
            let (rows, sent) = announcements.get(&job.id).copied().unwrap_or((0, 0));
            if (rows, sent) != (1, 1) {
                audit.announcements.push((job.id, rows, sent));
            }
        }

        let succeeded: Vec<&AuditedJob> = jobs.iter().filter(|j| j.status == "succeeded").collect();
        let checks = stream::iter(succeeded)
            .map(|job| check_outputs(store, job))
            .buffer_unordered(LISTINGS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        for (mismatch, empty) in checks {
            audit.outputs.extend(mismatch);
            audit.empty_outputs.extend(empty);
        }

        for row in sqlx::query("SELECT event, count(*) AS n FROM job_events GROUP BY event")
            .fetch_all(pool)
            .await?
        {
            audit
                .events
                .insert(row.try_get("event")?, row.try_get("n")?);
        }
        audit.unsent = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await?;
        Ok(audit)
    }

    /// Submissions that did not end as a finished job: no job at all, or a
    /// job still queued or running.
    pub fn lost(&self) -> usize {
        self.missing.len() + self.stuck.len()
    }

    /// Jobs finished more than once: a second terminal event or
    /// announcement, or objects in S3 beyond one set of outputs.
    pub fn duplicated(&self) -> usize {
        let mut jobs: HashSet<Uuid> = self.double_finished.iter().copied().collect();
        jobs.extend(
            self.announcements
                .iter()
                .filter(|(_, rows, _)| *rows > 1)
                .map(|(id, _, _)| *id),
        );
        jobs.extend(
            self.outputs
                .iter()
                .filter(|(_, stored, recorded)| stored.iter().any(|k| !recorded.contains(k)))
                .map(|(id, _, _)| *id),
        );
        jobs.len()
    }

    /// Requeues: attempts that did not finish their job (a lease that
    /// expired, a transient failure that outlasted its retries, a hand-back
    /// at shutdown).
    pub fn retries(&self) -> i64 {
        ["lease_expired", "retry", "handed_back"]
            .iter()
            .map(|e| self.events.get(*e).copied().unwrap_or(0))
            .sum()
    }

    /// Whether every promise held and every job succeeded.
    pub fn passed(&self) -> bool {
        self.lost() == 0
            && self.duplicated() == 0
            && self.failed.is_empty()
            && self.unrecorded.is_empty()
            && self.announcements.is_empty()
            && self.outputs.is_empty()
            && self.empty_outputs.is_empty()
            && self.unsent == 0
    }
}

async fn audited_jobs(pool: &PgPool) -> anyhow::Result<Vec<AuditedJob>> {
    let rows = sqlx::query(
        "SELECT j.id, j.idempotency_key, j.status, j.error, j.attempt, j.output_keys,
                count(e.id) FILTER (WHERE e.event = ANY($1)) AS terminal_events
         FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id
         GROUP BY j.id",
    )
    .bind(TERMINAL)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(AuditedJob {
                id: row.try_get("id")?,
                key: row.try_get("idempotency_key")?,
                status: row.try_get("status")?,
                error: row.try_get("error")?,
                attempt: row.try_get("attempt")?,
                output_keys: row.try_get("output_keys")?,
                terminal_events: row.try_get("terminal_events")?,
            })
        })
        .collect()
}

/// Rows and sent rows of each job's terminal announcement in the outbox.
async fn announcements(pool: &PgPool) -> anyhow::Result<HashMap<Uuid, (i64, i64)>> {
    let rows = sqlx::query(
        "SELECT (payload->>'job_id')::uuid AS job_id, count(*) AS n, count(sent_at) AS sent
         FROM outbox WHERE exchange = $1 GROUP BY 1",
    )
    .bind(EVENTS_EXCHANGE)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                row.try_get("job_id")?,
                (row.try_get("n")?, row.try_get("sent")?),
            ))
        })
        .collect()
}

type OutputCheck = (Option<(Uuid, Vec<String>, Vec<String>)>, Vec<String>);

/// Lists the job's prefix and compares it with its recorded outputs, and
/// checks that no recorded output is empty.
async fn check_outputs(store: &Store, job: &AuditedJob) -> anyhow::Result<OutputCheck> {
    let stored = store.list(&output_prefix(&job.id.to_string())).await?;
    let mut recorded = job.output_keys.clone();
    recorded.sort();
    let mismatch = (stored != recorded).then(|| (job.id, stored, recorded.clone()));
    let mut empty = Vec::new();
    for key in &recorded {
        if store.size(key).await?.unwrap_or(0) == 0 {
            empty.push(key.clone());
        }
    }
    Ok((mismatch, empty))
}

/// A queue bound to every job event, declared before the run starts and
/// read after it: the announcements that actually reached the broker.
pub struct EventTap {
    broker: BrokerConfig,
}

/// Name of the tap's queue in the run's vhost.
const TAP_QUEUE: &str = "driver.events";

impl EventTap {
    /// Declares the tap (a durable quorum queue, so that it keeps its
    /// messages through a broker restart) on `broker`.
    pub async fn declare(broker: &BrokerConfig) -> anyhow::Result<Self> {
        let connection = jobs::broker::connect(broker, "glowline-driver-tap").await?;
        let channel = connection.create_channel().await?;
        jobs::broker::declare_topology(&channel, broker).await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(
                TAP_QUEUE.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                TAP_QUEUE.into(),
                EVENTS_EXCHANGE.into(),
                "job.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        connection.close(0, "declared".into()).await?;
        Ok(Self {
            broker: broker.clone(),
        })
    }

    /// Takes every event the tap holds: how many arrived for each job.
    pub async fn drain(&self) -> anyhow::Result<HashMap<Uuid, usize>> {
        let connection = jobs::broker::connect(&self.broker, "glowline-driver-tap").await?;
        let channel = connection.create_channel().await?;
        let mut counts = HashMap::new();
        let options = BasicGetOptions { no_ack: true };
        while let Some(message) = channel.basic_get(TAP_QUEUE.into(), options).await? {
            let event: JobEvent = serde_json::from_slice(&message.delivery.data)?;
            *counts.entry(event.job_id.parse()?).or_default() += 1;
        }
        connection.close(0, "drained".into()).await?;
        Ok(counts)
    }
}
