//! The lease reaper: a running job whose lease expired lost its worker
//! (killed, partitioned, or hung past its lease). The reaper queues it again
//! with a fresh dispatch, or fails it once its attempts are spent.

use std::sync::Arc;

use contract::queue::JobStatus;
use jobs::metrics::{FailureReason, RetryReason};
use jobs::shutdown::Shutdown;
use jobs::store::{self, Reaped};
use sqlx::PgPool;

use crate::config::ReaperConfig;
use crate::metrics::SchedulerMetrics;

/// Sweeps for expired leases every `config.interval()` until `shutdown`.
pub async fn run(
    pool: PgPool,
    config: ReaperConfig,
    metrics: Arc<SchedulerMetrics>,
    shutdown: Shutdown,
) {
    loop {
        match store::reap_expired(&pool, config.batch_size).await {
            Ok(reaped) => {
                for outcome in reaped {
                    match outcome {
                        Reaped::Requeued {
                            job_id, attempt, ..
                        } => {
                            metrics.outcomes.retried(RetryReason::LeaseExpired);
                            tracing::warn!(%job_id, attempt, "lease expired; job queued again")
                        }
                        Reaped::Failed {
                            job_id,
                            kind,
                            attempt,
                        } => {
                            metrics.outcomes.finished(
                                &kind,
                                JobStatus::Failed,
                                Some(FailureReason::LeaseExpired),
                            );
                            tracing::error!(%job_id, attempt, "lease expired on the last attempt; job failed")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "lease sweep failed; retrying next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval()) => {}
            _ = shutdown.wait() => break,
        }
    }
    tracing::info!("lease reaper stopped");
}
