//! Running one delivered job: claim it, fetch its inputs, render, store the
//! outputs, commit the terminal status, and only then acknowledge.
//!
//! While the render runs, a heartbeat extends the lease, records progress
//! and watches for a cancel, the deadline, a lost lease and shutdown; any of
//! them stops the render at its next frame. Past the ack hand-off time the
//! message is acknowledged early so that the broker's consumer timeout never
//! cuts a long job off; the lease then guards the job on its own. Each
//! stage's time and the recorded outcome go to the worker's metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use contract::queue::{output_prefix, Dispatch, JobStatus};
use contract::spec::{JobSpec, Operation};
use glow::render::{RenderError, RenderHooks, REPORT_FILE};
use jobs::metrics::{FailureReason, RetryReason};
use jobs::retry::Backoff;
use jobs::s3::{S3Error, Store};
use jobs::shutdown::Shutdown;
use jobs::store::{self, ClaimOutcome, Job, Lease, Outcome, StoreError};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Acker;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::WorkerSettings;
use crate::metrics::{Stage, WorkerMetrics};
use crate::model::ModelPool;

/// What a worker needs to run jobs, shared by all its slots.
pub struct Context {
    pub pool: PgPool,
    pub store: Store,
    pub model: Arc<ModelPool>,
    pub metrics: Arc<WorkerMetrics>,
    pub settings: WorkerSettings,
    pub owner: String,
    /// Fires on SIGTERM; jobs then get `shutdown_grace` to finish.
    pub shutdown: Shutdown,
    /// Fires when the grace is over; running jobs are handed back.
    pub hand_back: Shutdown,
}

/// Why a render was asked to stop early.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Cancelled,
    Deadline,
    LostLease,
    HandBack,
}

/// Progress and stop flags shared between the render thread and the
/// heartbeat.
#[derive(Default)]
struct Watch {
    /// Progress as `f32` bits.
    progress: AtomicU32,
    stop: AtomicBool,
    reason: Mutex<Option<Stop>>,
}

impl Watch {
    fn stop(&self, reason: Stop) {
        let mut slot = self.reason.lock().expect("watch lock");
        slot.get_or_insert(reason);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn reason(&self) -> Option<Stop> {
        *self.reason.lock().expect("watch lock")
    }

    fn progress(&self) -> f32 {
        f32::from_bits(self.progress.load(Ordering::Relaxed))
    }
}

impl RenderHooks for Watch {
    fn progress(&self, fraction: f32) {
        self.progress.store(fraction.to_bits(), Ordering::Relaxed);
    }

    fn should_cancel(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How one attempt went, before it is committed.
enum Attempt {
    Done(Outcome),
    /// The job failed for good, for this reason and with this message.
    Failed(FailureReason, String),
    /// A transient failure outlasted its retries: try again later.
    Retry(String),
    /// The render stopped for a reason that is not the job's outcome.
    Stopped(Stop),
}

/// Acknowledges a delivery once, whoever gets there first (the hand-off
/// timer or the end of the job).
#[derive(Clone)]
struct OnceAck {
    acker: Acker,
    done: Arc<AtomicBool>,
}

impl OnceAck {
    async fn ack(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            if let Err(error) = self.acker.ack(BasicAckOptions::default()).await {
                // The channel is gone; the broker redelivers, and the claim
                // turns the duplicate away.
                tracing::warn!(%error, "cannot acknowledge; the message will be redelivered");
            }
        }
    }
}

/// Handles one delivery from a work queue, start to acknowledgement.
pub async fn handle(ctx: Arc<Context>, delivery: Delivery) {
    let dispatch: Dispatch = match serde_json::from_slice(&delivery.data) {
        Ok(dispatch) => dispatch,
        Err(error) => {
            tracing::error!(%error, "work message is not a dispatch; dead-lettering it");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let Ok(job_id) = Uuid::parse_str(&dispatch.job_id) else {
        tracing::error!(job_id = %dispatch.job_id, "dispatch names no valid job id; dead-lettering it");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let ack = OnceAck {
        acker: delivery.acker.clone(),
        done: Arc::new(AtomicBool::new(false)),
    };

    let backoff = Backoff::default();
    let claim = backoff
        .retry("claim", &ctx.shutdown, StoreError::is_transient, || {
            store::claim(&ctx.pool, job_id, &ctx.owner, ctx.settings.lease())
        })
        .await;
    let job = match claim {
        Ok(ClaimOutcome::Claimed(job)) => *job,
        Ok(ClaimOutcome::Finished(status)) => {
            tracing::info!(%job_id, %status, redelivered = delivery.redelivered, "job already finished; skipping");
            return ack.ack().await;
        }
        Ok(ClaimOutcome::Held) => {
            tracing::info!(%job_id, redelivered = delivery.redelivered, "job is held by another attempt; its lease decides");
            return ack.ack().await;
        }
        Ok(ClaimOutcome::NotFound) => {
            tracing::warn!(%job_id, "dispatch for an unknown job; dropping it");
            return ack.ack().await;
        }
        Err(error) => {
            // The database is unreachable: leave the message to the broker.
            tracing::warn!(%job_id, %error, "cannot claim; requeueing the message");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
            return;
        }
    };

    let lease = Lease {
        job_id,
        attempt: job.attempt,
        owner: ctx.owner.clone(),
    };
    tracing::info!(%job_id, kind = %job.kind, attempt = job.attempt, redelivered = delivery.redelivered, "job claimed");
    let claimed = Instant::now();
    let _running = ctx.metrics.running(job.lane);
    if let Some(started) = job.started_at {
        let waited = (started - job.queued_at).num_milliseconds() as f64 / 1000.0;
        ctx.metrics.waited(job.lane, waited);
    }

    let watch = Arc::new(Watch::default());
    let heartbeat = tokio::spawn(heartbeat(
        ctx.clone(),
        lease.clone(),
        job.deadline_secs,
        watch.clone(),
        ack.clone(),
    ));
    let attempt = run(&ctx, &job, watch.clone()).await;
    heartbeat.abort();

    commit(&ctx, &job, &lease, attempt, claimed).await;
    ack.ack().await;
}

/// Extends the lease and records progress every heartbeat; stops the render
/// on cancel, deadline, a lost lease or the end of the shutdown grace; and
/// acknowledges the message early at the hand-off time.
async fn heartbeat(
    ctx: Arc<Context>,
    lease: Lease,
    deadline_secs: i32,
    watch: Arc<Watch>,
    ack: OnceAck,
) {
    let started = Instant::now();
    let deadline = std::time::Duration::from_secs(deadline_secs.max(1) as u64);
    let mut ticker = tokio::time::interval(ctx.settings.heartbeat());
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.hand_back.wait() => {
                watch.stop(Stop::HandBack);
                return;
            }
        }
        if started.elapsed() >= deadline {
            watch.stop(Stop::Deadline);
        }
        if started.elapsed() >= ctx.settings.ack_handoff() && !ack.done.load(Ordering::SeqCst) {
            tracing::info!(job_id = %lease.job_id, "job outlived the ack hand-off; its lease guards it from here");
            ack.ack().await;
        }
        match store::heartbeat(
            &ctx.pool,
            &lease,
            ctx.settings.lease(),
            Some(watch.progress()),
        )
        .await
        {
            Ok(true) => watch.stop(Stop::Cancelled),
            Ok(false) => {}
            Err(StoreError::Fenced { .. }) => watch.stop(Stop::LostLease),
            Err(error) => {
                tracing::warn!(job_id = %lease.job_id, %error, "heartbeat failed; the lease still runs")
            }
        }
    }
}

/// Fetches, renders and uploads one claimed job.
async fn run(ctx: &Arc<Context>, job: &Job, watch: Arc<Watch>) -> Attempt {
    let spec = match JobSpec::from_json(&job.spec.to_string()) {
        Ok(spec) => spec,
        Err(error) => {
            return Attempt::Failed(FailureReason::InvalidSpec, format!("invalid spec: {error}"))
        }
    };
    if let Operation::Probe {} = spec.operation {
        return probe(ctx, job, &spec).await;
    }
    let dir = ctx
        .settings
        .work_dir
        .join(format!("{}-{}", job.id, job.attempt));
    let result = run_in(ctx, job, spec, &dir, watch).await;
    if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(job_id = %job.id, %error, "cannot remove the job's work folder");
        }
    }
    result
}

/// Answers a probe without the model: stores a small report under the
/// job's prefix, so that S3 is part of what a probe checks, and succeeds.
async fn probe(ctx: &Context, job: &Job, spec: &JobSpec) -> Attempt {
    let report = serde_json::json!({
        "spec": spec,
        "job_id": job.id,
        "attempt": job.attempt,
        "worker": ctx.owner,
        "model_sha256": ctx.model.sha256,
    });
    let body = serde_json::to_vec_pretty(&report).expect("a probe report serializes");
    let key = format!("{}{REPORT_FILE}", output_prefix(&job.id.to_string()));
    let uploading = Instant::now();
    let stored = Backoff::default()
        .retry("upload", &ctx.shutdown, S3Error::is_transient, || {
            ctx.store.put_bytes(&key, body.clone(), "application/json")
        })
        .await;
    ctx.metrics
        .stage(job.lane, Stage::Upload, uploading.elapsed().as_secs_f64());
    match stored {
        Ok(()) => Attempt::Done(Outcome::Succeeded {
            output_keys: vec![key],
            model_hash: ctx.model.sha256.clone(),
        }),
        Err(error) => s3_attempt(error),
    }
}

async fn run_in(
    ctx: &Arc<Context>,
    job: &Job,
    spec: JobSpec,
    dir: &Path,
    watch: Arc<Watch>,
) -> Attempt {
    let downloading = Instant::now();
    let inputs = match download_inputs(ctx, &spec).await {
        Ok(inputs) => inputs,
        Err(attempt) => return attempt,
    };
    ctx.metrics.stage(
        job.lane,
        Stage::Download,
        downloading.elapsed().as_secs_f64(),
    );

    let out_dir = dir.join("out");
    let model = ctx.model.clone();
    let hooks = watch.clone();
    let render_dir = out_dir.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        model.with_model(|m| {
            m.renderer()
                .render(&spec, &inputs, &render_dir, hooks.as_ref())
        })
    })
    .await;
    let report = match rendered {
        Ok(Err(error)) => return Attempt::Failed(FailureReason::Render, error.to_string()),
        Ok(Ok(Ok(report))) => report,
        Ok(Ok(Err(RenderError::Cancelled))) => {
            return match watch.reason() {
                Some(Stop::Cancelled) | None => Attempt::Done(Outcome::Cancelled),
                Some(Stop::Deadline) => Attempt::Done(Outcome::TimedOut(format!(
                    "the job ran past its deadline of {} s",
                    job.deadline_secs
                ))),
                Some(stop) => Attempt::Stopped(stop),
            }
        }
        Ok(Ok(Err(error))) => return Attempt::Failed(render_failure(&error), error.to_string()),
        Err(panic) => {
            return Attempt::Failed(
                FailureReason::Render,
                format!("the renderer panicked: {panic}"),
            )
        }
    };
    ctx.metrics.render_stages(job.lane, &report.timings);
    ctx.metrics.rendered(&job.kind, report.frames.rendered);
    if let Some(stop) = watch
        .reason()
        .filter(|s| matches!(s, Stop::LostLease | Stop::HandBack))
    {
        return Attempt::Stopped(stop);
    }

    let files: Vec<String> = report
        .outputs
        .iter()
        .cloned()
        .chain(std::iter::once(REPORT_FILE.to_owned()))
        .collect();
    let uploading = Instant::now();
    let uploaded = upload_outputs(ctx, job.id, &out_dir, &files).await;
    ctx.metrics
        .stage(job.lane, Stage::Upload, uploading.elapsed().as_secs_f64());
    match uploaded {
        Ok(output_keys) => Attempt::Done(Outcome::Succeeded {
            output_keys,
            model_hash: report.model_sha256,
        }),
        Err(attempt) => attempt,
    }
}

fn s3_attempt(error: S3Error) -> Attempt {
    if error.is_transient() {
        Attempt::Retry(error.to_string())
    } else {
        Attempt::Failed(FailureReason::Storage, error.to_string())
    }
}

/// The metrics' reason for a failed render: the user's input (a photo that
/// is no image or shows no face, a spec the renderer refuses) or the
/// renderer itself.
fn render_failure(error: &RenderError) -> FailureReason {
    match error {
        RenderError::Spec(_) => FailureReason::InvalidSpec,
        RenderError::Input(_) | RenderError::Align(_) => FailureReason::Input,
        _ => FailureReason::Render,
    }
}

/// Downloads every input of `spec`, keyed by its reference (its S3 key).
async fn download_inputs(
    ctx: &Context,
    spec: &JobSpec,
) -> Result<HashMap<String, Vec<u8>>, Attempt> {
    let backoff = Backoff::default();
    let mut inputs = HashMap::new();
    for key in spec.inputs() {
        if inputs.contains_key(key) {
            continue;
        }
        let size = backoff
            .retry("input size", &ctx.shutdown, S3Error::is_transient, || {
                ctx.store.size(key)
            })
            .await
            .map_err(s3_attempt)?;
        match size {
            None => {
                return Err(Attempt::Failed(
                    FailureReason::Input,
                    format!(
                        "input {key:?} does not exist in bucket {:?}",
                        ctx.store.bucket()
                    ),
                ))
            }
            Some(size) if size > ctx.settings.max_input_bytes => {
                return Err(Attempt::Failed(
                    FailureReason::Input,
                    format!(
                        "input {key:?} is {size} bytes; at most {} are accepted",
                        ctx.settings.max_input_bytes
                    ),
                ))
            }
            Some(_) => {}
        }
        let bytes = backoff
            .retry("download", &ctx.shutdown, S3Error::is_transient, || {
                ctx.store.get_bytes(key)
            })
            .await
            .map_err(s3_attempt)?;
        inputs.insert(key.to_owned(), bytes);
    }
    Ok(inputs)
}

/// Uploads `files` (relative to `out_dir`) under the job's output prefix;
/// the keys depend only on the job id and file names, so a retried job
/// overwrites rather than duplicates.
async fn upload_outputs(
    ctx: &Context,
    job_id: Uuid,
    out_dir: &Path,
    files: &[String],
) -> Result<Vec<String>, Attempt> {
    let backoff = Backoff::default();
    let prefix = output_prefix(&job_id.to_string());
    let mut keys = Vec::with_capacity(files.len());
    for file in files {
        let key = format!("{prefix}{file}");
        let path: PathBuf = out_dir.join(file);
        backoff
            .retry("upload", &ctx.shutdown, S3Error::is_transient, || {
                ctx.store.upload(&key, &path, content_type(file))
            })
            .await
            .map_err(s3_attempt)?;
        keys.push(key);
    }
    Ok(keys)
}

fn content_type(file: &str) -> &'static str {
    match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Records how the attempt ended, and counts it once recorded. A fenced
/// write means the attempt lost its claim (reaped or cancelled meanwhile):
/// its result is dropped, and whoever took the job over counts it.
async fn commit(ctx: &Context, job: &Job, lease: &Lease, attempt: Attempt, claimed: Instant) {
    let backoff = Backoff::default();
    let never = Shutdown::new();
    let job_id = lease.job_id;
    let outcomes = &ctx.metrics.outcomes;
    let result = match attempt {
        Attempt::Done(outcome) => {
            let reason = matches!(outcome, Outcome::TimedOut(_)).then_some(FailureReason::Deadline);
            finish(ctx, job, lease, outcome, reason, claimed).await
        }
        Attempt::Failed(reason, message) => {
            finish(ctx, job, lease, Outcome::Failed(message), Some(reason), claimed).await
        }
        Attempt::Retry(reason) => backoff
            .retry("release", &never, StoreError::is_transient, || store::release(&ctx.pool, lease, &reason))
            .await
            .map(|released| {
                if released.status == JobStatus::Queued {
                    outcomes.retried(RetryReason::Transient);
                } else {
                    outcomes.finished(&job.kind, released.status, Some(FailureReason::Storage));
                }
                tracing::warn!(%job_id, attempt = lease.attempt, status = %released.status, %reason, "transient failure outlasted its retries")
            }),
        Attempt::Stopped(Stop::HandBack) => backoff
            .retry("hand back", &never, StoreError::is_transient, || store::hand_back(&ctx.pool, lease))
            .await
            .map(|()| {
                outcomes.retried(RetryReason::Shutdown);
                tracing::info!(%job_id, attempt = lease.attempt, "job handed back for shutdown")
            }),
        Attempt::Stopped(stop) => {
            tracing::warn!(%job_id, attempt = lease.attempt, ?stop, "attempt stopped; its result is dropped");
            Ok(())
        }
    };
    match result {
        Ok(()) => {}
        Err(StoreError::Fenced { .. }) => {
            tracing::warn!(%job_id, attempt = lease.attempt, "attempt lost its lease before committing; result dropped")
        }
        Err(error) => {
            // The lease runs out and the reaper queues the job again.
            tracing::error!(%job_id, attempt = lease.attempt, %error, "cannot record the outcome; the lease will expire")
        }
    }
}

/// Records a final `outcome` (failed or timed out for `reason`), then
/// counts it, with a success's run time since `claimed`.
async fn finish(
    ctx: &Context,
    job: &Job,
    lease: &Lease,
    outcome: Outcome,
    reason: Option<FailureReason>,
    claimed: Instant,
) -> Result<(), StoreError> {
    let finished = Backoff::default()
        .retry("commit", &Shutdown::new(), StoreError::is_transient, || {
            store::finish(&ctx.pool, lease, &outcome)
        })
        .await?;
    ctx.metrics
        .outcomes
        .finished(&job.kind, finished.status, reason);
    if finished.status == JobStatus::Succeeded {
        ctx.metrics
            .succeeded(&job.kind, claimed.elapsed().as_secs_f64());
    }
    tracing::info!(job_id = %lease.job_id, attempt = lease.attempt, status = %finished.status, error = finished.error.as_deref().unwrap_or(""), "job finished");
    Ok(())
}
