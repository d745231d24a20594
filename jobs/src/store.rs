//! The job store: every state change of a job, with its event-log row and
//! (where something must be announced) its outbox row, in one transaction.
//!
//! Worker writes are fenced: they name the job, the attempt they claimed and
//! their lease owner, and change nothing once any of those moved on (the
//! lease expired and the job was reaped, or it was cancelled). A stale
//! worker therefore gets [`StoreError::Fenced`] instead of overwriting a
//! newer attempt's result.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use contract::queue::{Dispatch, JobEvent, JobStatus, Lane, EVENTS_EXCHANGE, JOBS_EXCHANGE};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{FromRow, Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("job {job_id} attempt {attempt} no longer holds its lease")]
    Fenced { job_id: Uuid, attempt: i32 },
    #[error("stored row has an invalid {0}")]
    Corrupt(#[from] contract::queue::UnknownName),
}

impl StoreError {
    /// Whether retrying may help (the database was briefly unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Db(e) if crate::db::is_transient(e))
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// The spec's kind (`edit`, `morph`, ...).
    pub kind: String,
    /// The render spec as submitted.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    #[schema(value_type = String)]
    pub lane: Lane,
    #[schema(value_type = String)]
    pub status: JobStatus,
    pub priority: i16,
    /// Claims so far; the current claim's fence.
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Seconds one attempt may run before the job is timed out.
    pub deadline_secs: i32,
    /// Set by a cancel while running; the worker stops at the next frame.
    pub cancel_requested: bool,
    /// 0 to 1.
    pub progress: f32,
    pub error: Option<String>,
    /// S3 keys of the outputs, once succeeded.
    pub output_keys: Vec<String>,
    /// Hash of the model weights that rendered it.
    pub model_hash: Option<String>,
    pub batch_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the job last entered its queue: at submission, and again each
    /// time it was queued for another attempt.
    pub queued_at: DateTime<Utc>,
    /// When the current (or last) attempt was claimed.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl FromRow<'_, PgRow> for Job {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let decode = |column: &str, e: contract::queue::UnknownName| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        };
        let lane: String = row.try_get("lane")?;
        let status: String = row.try_get("status")?;
        Ok(Job {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            spec: row.try_get("spec")?,
            lane: lane.parse().map_err(|e| decode("lane", e))?,
            status: status.parse().map_err(|e| decode("status", e))?,
            priority: row.try_get("priority")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            lease_owner: row.try_get("lease_owner")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
            deadline_secs: row.try_get("deadline_secs")?,
            cancel_requested: row.try_get("cancel_requested")?,
            progress: row.try_get("progress")?,
            error: row.try_get("error")?,
            output_keys: row.try_get("output_keys")?,
            model_hash: row.try_get("model_hash")?,
            batch_id: row.try_get("batch_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            queued_at: row.try_get("queued_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// A validated job, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: String,
    pub spec: serde_json::Value,
    pub lane: Lane,
    pub priority: i16,
    pub max_attempts: i32,
    pub deadline_secs: i32,
    pub batch_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
}

/// AMQP priority of a dispatch: job priorities clamped to the 0..=9 range
/// that RabbitMQ's priority queues honour.
fn message_priority(priority: i16) -> i16 {
    priority.clamp(0, 9)
}

async fn append_event(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    event: &str,
    attempt: i32,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO job_events (job_id, event, attempt, detail) VALUES ($1, $2, $3, $4)")
        .bind(job_id)
        .bind(event)
        .bind(attempt)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn enqueue_message(
    tx: &mut Transaction<'_, Postgres>,
    exchange: &str,
    routing_key: &str,
    payload: &impl Serialize,
    priority: i16,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(payload).expect("message types serialize to JSON");
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, payload, priority) VALUES ($1, $2, $3, $4)",
    )
    .bind(exchange)
    .bind(routing_key)
    .bind(payload)
    .bind(priority)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn enqueue_dispatch(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    kind: &str,
    lane: Lane,
    priority: i16,
) -> Result<(), sqlx::Error> {
    let dispatch = Dispatch {
        job_id: job_id.to_string(),
        kind: kind.to_owned(),
    };
    enqueue_message(
        tx,
        JOBS_EXCHANGE,
        lane.queue(),
        &dispatch,
        message_priority(priority),
    )
    .await
}

async fn enqueue_terminal_event(
    tx: &mut Transaction<'_, Postgres>,
    job: &Job,
) -> Result<(), sqlx::Error> {
    let event = JobEvent {
        job_id: job.id.to_string(),
        status: job.status,
        attempt: job.attempt,
        error: job.error.clone(),
        output_keys: job.output_keys.clone(),
    };
    enqueue_message(
        tx,
        EVENTS_EXCHANGE,
        &job.status.event_routing_key(),
        &event,
        0,
    )
    .await
}

/// Records `job` with its first event and its dispatch. A job whose
/// idempotency key is already taken is not recorded: the earlier job is
/// returned with `false`.
pub async fn insert_job(pool: &PgPool, job: &NewJob) -> Result<(Job, bool), StoreError> {
    let mut tx = pool.begin().await?;
    let result = insert_job_tx(&mut tx, job).await?;
    tx.commit().await?;
    Ok(result)
}

async fn insert_job_tx(
    tx: &mut Transaction<'_, Postgres>,
    job: &NewJob,
) -> Result<(Job, bool), StoreError> {
    let inserted: Option<Job> = sqlx::query_as(
        "INSERT INTO jobs (id, kind, spec, lane, priority, max_attempts, deadline_secs,
                           batch_id, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING *",
    )
    .bind(job.id)
    .bind(&job.kind)
    .bind(&job.spec)
    .bind(job.lane.as_str())
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(job.deadline_secs)
    .bind(job.batch_id)
    .bind(&job.idempotency_key)
    .fetch_optional(&mut **tx)
    .await?;

    let Some(inserted) = inserted else {
        let existing: Job = sqlx::query_as("SELECT * FROM jobs WHERE idempotency_key = $1")
            .bind(&job.idempotency_key)
            .fetch_one(&mut **tx)
            .await?;
        return Ok((existing, false));
    };

    append_event(
        tx,
        job.id,
        "submitted",
        0,
        serde_json::json!({ "lane": job.lane }),
    )
    .await?;
    enqueue_dispatch(tx, job.id, &job.kind, job.lane, job.priority).await?;
    Ok((inserted, true))
}

/// A batch as stored.
#[derive(Debug, Clone, Serialize, Deserialize, FromRow, utoipa::ToSchema)]
pub struct Batch {
    pub id: Uuid,
    pub label: Option<String>,
    pub job_count: i32,
    pub created_at: DateTime<Utc>,
}

/// Records a batch and all its jobs in one transaction: either every job of
/// the manifest exists afterwards, or none does. Returns each job with
/// whether it was new (see [`insert_job`]).
pub async fn insert_batch(
    pool: &PgPool,
    batch_id: Uuid,
    label: Option<&str>,
    jobs: &[NewJob],
) -> Result<(Batch, Vec<(Job, bool)>), StoreError> {
    let mut tx = pool.begin().await?;
    let batch: Batch = sqlx::query_as(
        "INSERT INTO batches (id, label, job_count) VALUES ($1, $2, $3) RETURNING *",
    )
    .bind(batch_id)
    .bind(label)
    .bind(jobs.len() as i32)
    .fetch_one(&mut *tx)
    .await?;
    let mut recorded = Vec::with_capacity(jobs.len());
    for job in jobs {
        recorded.push(insert_job_tx(&mut tx, job).await?);
    }
    tx.commit().await?;
    Ok((batch, recorded))
}

/// Counts and overall state of a batch's jobs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchStatus {
    pub batch: Batch,
    /// Jobs per status name.
    pub counts: BTreeMap<String, i64>,
    /// Mean progress of the batch's jobs, 0 to 1.
    pub progress: f64,
    /// `queued` until a job started, `running` while any job is live,
    /// `succeeded` when all succeeded, else `failed`.
    pub status: String,
}

/// The batch `id` with its jobs' counts, or `None` if there is no such batch.
pub async fn batch_status(pool: &PgPool, id: Uuid) -> Result<Option<BatchStatus>, StoreError> {
    let Some(batch) = sqlx::query_as::<_, Batch>("SELECT * FROM batches WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT status, count(*) AS n, coalesce(sum(progress), 0)::float8 AS progress
         FROM jobs WHERE batch_id = $1 GROUP BY status",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;

    let mut counts = BTreeMap::new();
    let mut progress_sum = 0.0;
    for row in rows {
        let status: String = row.try_get("status")?;
        counts.insert(status, row.try_get::<i64, _>("n")?);
        progress_sum += row.try_get::<f64, _>("progress")?;
    }
    let total: i64 = counts.values().sum();
    let count = |s: JobStatus| counts.get(s.as_str()).copied().unwrap_or(0);
    let status = if count(JobStatus::Queued) == total {
        "queued"
    } else if count(JobStatus::Queued) + count(JobStatus::Running) > 0 {
        "running"
    } else if count(JobStatus::Succeeded) == total {
        "succeeded"
    } else {
        "failed"
    };
    let progress = if total == 0 {
        1.0
    } else {
        progress_sum / total as f64
    };
    Ok(Some(BatchStatus {
        batch,
        counts,
        progress,
        status: status.to_owned(),
    }))
}

/// The job `id`, if it exists.
pub async fn get_job(pool: &PgPool, id: Uuid) -> Result<Option<Job>, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// The job submitted with idempotency key `key`, if any.
pub async fn find_by_idempotency_key(pool: &PgPool, key: &str) -> Result<Option<Job>, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM jobs WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// Filters for [`list_jobs`]; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub batch_id: Option<Uuid>,
    /// Only jobs created before this instant (for paging, newest first).
    pub created_before: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Jobs matching `filter`, newest first.
pub async fn list_jobs(pool: &PgPool, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
    let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM jobs WHERE true");
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(kind) = &filter.kind {
        query.push(" AND kind = ").push_bind(kind);
    }
    if let Some(batch_id) = filter.batch_id {
        query.push(" AND batch_id = ").push_bind(batch_id);
    }
    if let Some(before) = filter.created_before {
        query.push(" AND created_at < ").push_bind(before);
    }
    query
        .push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(filter.limit);
    Ok(query.build_query_as().fetch_all(pool).await?)
}

/// The log of a job's events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, FromRow, utoipa::ToSchema)]
pub struct EventRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub attempt: i32,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The events of job `id`, oldest first.
pub async fn job_events(pool: &PgPool, id: Uuid) -> Result<Vec<EventRecord>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, at, event, attempt, detail FROM job_events WHERE job_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    Cancelled,
    /// The job is running; its worker will stop at the next frame.
    Requested,
    /// The job had already finished with this status.
    AlreadyFinished(JobStatus),
    NotFound,
}

/// Cancels job `id`: at once if queued, through its durable flag if running.
pub async fn cancel_job(pool: &PgPool, id: Uuid) -> Result<CancelOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(job) = sqlx::query_as::<_, Job>("SELECT * FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(CancelOutcome::NotFound);
    };

    let outcome = match job.status {
        JobStatus::Queued => {
            let job: Job = sqlx::query_as(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true,
                        error = 'cancelled while queued', finished_at = now(), updated_at = now()
                 WHERE id = $1 RETURNING *",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            append_event(&mut tx, id, "cancelled", job.attempt, serde_json::json!({})).await?;
            enqueue_terminal_event(&mut tx, &job).await?;
            CancelOutcome::Cancelled
        }
        JobStatus::Running => {
            sqlx::query(
                "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            append_event(
                &mut tx,
                id,
                "cancel_requested",
                job.attempt,
                serde_json::json!({}),
            )
            .await?;
            CancelOutcome::Requested
        }
        finished => CancelOutcome::AlreadyFinished(finished),
    };
    tx.commit().await?;
    Ok(outcome)
}

/// What a worker's claim found.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// The job is now running under this worker's lease; `attempt` is its fence.
    Claimed(Box<Job>),
    /// Another worker holds it (its lease runs, or the reaper will requeue it).
    Held,
    /// It finished already; a redelivered message to acknowledge and skip.
    Finished(JobStatus),
    NotFound,
}

/// Claims queued job `id` for `owner` with a lease of `lease`, moving it to
/// running and counting the attempt.
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<ClaimOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    let claimed: Option<Job> = sqlx::query_as(
        "UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_owner = $2,
                lease_expires_at = now() + make_interval(secs => $3), started_at = now(),
                updated_at = now()
         WHERE id = $1 AND status = 'queued'
         RETURNING *",
    )
    .bind(id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;

    let outcome = match claimed {
        Some(job) => {
            append_event(
                &mut tx,
                id,
                "claimed",
                job.attempt,
                serde_json::json!({ "worker": owner }),
            )
            .await?;
            ClaimOutcome::Claimed(Box::new(job))
        }
        None => {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            match status.map(|s| s.parse::<JobStatus>()).transpose()? {
                None => ClaimOutcome::NotFound,
                Some(JobStatus::Running) | Some(JobStatus::Queued) => ClaimOutcome::Held,
                Some(finished) => ClaimOutcome::Finished(finished),
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The claim a worker holds: the fence for all its writes.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: Uuid,
    pub attempt: i32,
    pub owner: String,
}

/// Extends the lease by `lease` from now and records `progress` when given.
/// Returns whether a cancel was requested.
pub async fn heartbeat(
    pool: &PgPool,
    held: &Lease,
    lease: Duration,
    progress: Option<f32>,
) -> Result<bool, StoreError> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4),
                progress = coalesce($5, progress), updated_at = now()
         WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND status = 'running'
         RETURNING cancel_requested",
    )
    .bind(held.job_id)
    .bind(held.attempt)
    .bind(&held.owner)
    .bind(lease.as_secs_f64())
    .bind(progress.map(|p| p.clamp(0.0, 1.0)))
    .fetch_optional(pool)
    .await?;
    cancel.ok_or(StoreError::Fenced {
        job_id: held.job_id,
        attempt: held.attempt,
    })
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        output_keys: Vec<String>,
        model_hash: String,
    },
    Failed(String),
    Cancelled,
    TimedOut(String),
}

/// Commits the terminal status of the attempt `held`, with its event and its
/// announcement. Fails with [`StoreError::Fenced`] if the attempt lost its
/// claim, and then changes nothing.
pub async fn finish(pool: &PgPool, held: &Lease, outcome: &Outcome) -> Result<Job, StoreError> {
    let (status, error, output_keys, model_hash) = match outcome {
        Outcome::Succeeded {
            output_keys,
            model_hash,
        } => (
            JobStatus::Succeeded,
            None,
            output_keys.clone(),
            Some(model_hash.clone()),
        ),
        Outcome::Failed(reason) => (JobStatus::Failed, Some(reason.clone()), vec![], None),
        Outcome::Cancelled => (
            JobStatus::Cancelled,
            Some("cancelled while running".to_owned()),
            vec![],
            None,
        ),
        Outcome::TimedOut(reason) => (JobStatus::TimedOut, Some(reason.clone()), vec![], None),
    };

    let mut tx = pool.begin().await?;
    let job: Option<Job> = sqlx::query_as(
        "UPDATE jobs SET status = $4, error = $5, output_keys = $6, model_hash = $7,
                progress = CASE WHEN $4 = 'succeeded' THEN 1 ELSE progress END,
                lease_owner = NULL, lease_expires_at = NULL,
                finished_at = now(), updated_at = now()
         WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND status = 'running'
         RETURNING *",
    )
    .bind(held.job_id)
    .bind(held.attempt)
    .bind(&held.owner)
    .bind(status.as_str())
    .bind(&error)
    .bind(&output_keys)
    .bind(&model_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else {
        return Err(StoreError::Fenced {
            job_id: held.job_id,
            attempt: held.attempt,
        });
    };

    let detail = serde_json::json!({ "error": error, "output_keys": output_keys });
    append_event(&mut tx, job.id, status.as_str(), job.attempt, detail).await?;
    enqueue_terminal_event(&mut tx, &job).await?;
    tx.commit().await?;
    Ok(job)
}

/// Gives the attempt `held` back unfinished (its worker is shutting down):
/// the job is queued again with a fresh dispatch, and this attempt does not
/// count against its attempts.
pub async fn hand_back(pool: &PgPool, held: &Lease) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let job: Option<Job> = sqlx::query_as(
        "UPDATE jobs SET status = 'queued', max_attempts = max_attempts + 1,
                lease_owner = NULL, lease_expires_at = NULL, progress = 0, updated_at = now(),
                queued_at = now()
         WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND status = 'running'
         RETURNING *",
    )
    .bind(held.job_id)
    .bind(held.attempt)
    .bind(&held.owner)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else {
        return Err(StoreError::Fenced {
            job_id: held.job_id,
            attempt: held.attempt,
        });
    };
    append_event(
        &mut tx,
        job.id,
        "handed_back",
        held.attempt,
        serde_json::json!({}),
    )
    .await?;
    enqueue_dispatch(&mut tx, job.id, &job.kind, job.lane, job.priority).await?;
    tx.commit().await?;
    Ok(())
}

/// Ends the attempt `held` after a transient failure outlasted its retries
/// (S3 or the database stayed unreachable): the job is queued again for a
/// later attempt, or failed with `reason` if this was its last.
pub async fn release(pool: &PgPool, held: &Lease, reason: &str) -> Result<Job, StoreError> {
    let mut tx = pool.begin().await?;
    let job: Option<Job> = sqlx::query_as(
        "UPDATE jobs SET
                status = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
                error = $4, lease_owner = NULL, lease_expires_at = NULL, progress = 0,
                finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE now() END,
                queued_at = CASE WHEN attempt < max_attempts THEN now() ELSE queued_at END,
                updated_at = now()
         WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND status = 'running'
         RETURNING *",
    )
    .bind(held.job_id)
    .bind(held.attempt)
    .bind(&held.owner)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else {
        return Err(StoreError::Fenced {
            job_id: held.job_id,
            attempt: held.attempt,
        });
    };
    let detail = serde_json::json!({ "error": reason });
    if job.status == JobStatus::Queued {
        append_event(&mut tx, job.id, "retry", job.attempt, detail).await?;
        enqueue_dispatch(&mut tx, job.id, &job.kind, job.lane, job.priority).await?;
    } else {
        append_event(&mut tx, job.id, "failed", job.attempt, detail).await?;
        enqueue_terminal_event(&mut tx, &job).await?;
    }
    tx.commit().await?;
    Ok(job)
}

/// What the reaper did with one expired lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Reaped {
    /// Queued again and re-dispatched.
    Requeued {
        job_id: Uuid,
        kind: String,
        attempt: i32,
    },
    /// Out of attempts: failed with the reason.
    Failed {
        job_id: Uuid,
        kind: String,
        attempt: i32,
    },
}

/// Requeues (or, out of attempts, fails) up to `limit` running jobs whose
/// lease expired: their workers died or lost contact.
pub async fn reap_expired(pool: &PgPool, limit: i64) -> Result<Vec<Reaped>, StoreError> {
    let mut tx = pool.begin().await?;
    let expired: Vec<Job> = sqlx::query_as(
        "SELECT * FROM jobs WHERE status = 'running' AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;

    let mut reaped = Vec::with_capacity(expired.len());
    for job in expired {
        let detail = serde_json::json!({ "worker": job.lease_owner });
        if job.attempt < job.max_attempts {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                        progress = 0, updated_at = now(), queued_at = now()
                 WHERE id = $1",
            )
            .bind(job.id)
            .execute(&mut *tx)
            .await?;
            append_event(&mut tx, job.id, "lease_expired", job.attempt, detail).await?;
            enqueue_dispatch(&mut tx, job.id, &job.kind, job.lane, job.priority).await?;
            reaped.push(Reaped::Requeued {
                job_id: job.id,
                kind: job.kind,
                attempt: job.attempt,
            });
        } else {
            let reason = format!(
                "worker lost: lease expired on attempt {} of {}",
                job.attempt, job.max_attempts
            );
            let failed: Job = sqlx::query_as(
                "UPDATE jobs SET status = 'failed', error = $2, lease_owner = NULL,
                        lease_expires_at = NULL, finished_at = now(), updated_at = now()
                 WHERE id = $1 RETURNING *",
            )
            .bind(job.id)
            .bind(&reason)
            .fetch_one(&mut *tx)
            .await?;
            append_event(
                &mut tx,
                job.id,
                "failed",
                job.attempt,
                serde_json::json!({ "error": reason }),
            )
            .await?;
            enqueue_terminal_event(&mut tx, &failed).await?;
            reaped.push(Reaped::Failed {
                job_id: job.id,
                kind: job.kind,
                attempt: job.attempt,
            });
        }
    }
    tx.commit().await?;
    Ok(reaped)
}

/// An outbox row waiting to be published.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxMessage {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub created_at: DateTime<Utc>,
}

/// Opens a transaction holding up to `limit` unsent outbox rows, oldest
/// first, locked so that other relays skip them. The caller publishes them,
/// then calls [`mark_sent`] / [`mark_failed`] on the same transaction and commits.
pub async fn lock_unsent(
    pool: &PgPool,
    limit: i64,
) -> Result<(Transaction<'static, Postgres>, Vec<OutboxMessage>), StoreError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as(
        "SELECT id, exchange, routing_key, payload, priority, created_at FROM outbox
         WHERE sent_at IS NULL AND next_attempt_at <= now()
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok((tx, rows))
}

/// Marks outbox rows as confirmed by the broker.
pub async fn mark_sent(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Longest wait before a failed outbox row is published again: a message
/// that no queue takes (its queue was deleted) is retried once a minute,
/// not in a tight loop, until an operator restores the queue.
const MAX_OUTBOX_RETRY_SECS: f64 = 60.0;

/// Records a failed publish of an outbox row; it stays unsent and is
/// retried after a delay that doubles with each failure.
pub async fn mark_failed(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                next_attempt_at = now() + make_interval(secs => least(power(2, attempts), $3))
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(MAX_OUTBOX_RETRY_SECS)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Unsent messages in the outbox: a backlog that grows, or an oldest
/// message that keeps ageing, means the relay cannot publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxBacklog {
    /// Rows not yet confirmed by the broker.
    pub messages: i64,
    /// Seconds since the oldest of them was written; 0 when there is none.
    pub oldest_age_secs: f64,
}

/// Samples the outbox's backlog; the partial index of unsent rows keeps
/// this cheap however many sent rows the table holds.
pub async fn outbox_backlog(pool: &PgPool) -> Result<OutboxBacklog, StoreError> {
    let row = sqlx::query(
        "SELECT count(*) AS messages,
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_secs
         FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(OutboxBacklog {
        messages: row.try_get("messages")?,
        oldest_age_secs: row.try_get("oldest_age_secs")?,
    })
}
