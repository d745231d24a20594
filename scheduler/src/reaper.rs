//! The lease reaper: a running job whose lease expired lost its worker
//! (killed, partitioned, or hung past its lease). The reaper queues it again
//! with a fresh dispatch, or fails it once its attempts are spent.

use jobs::shutdown::Shutdown;
use jobs::store::{self, Reaped};
use sqlx::PgPool;

use crate::config::ReaperConfig;

/// Sweeps for expired leases every `config.interval()` until `shutdown`.
pub async fn run(pool: PgPool, config: ReaperConfig, shutdown: Shutdown) {
    loop {
        match store::reap_expired(&pool, config.batch_size).await {
            Ok(reaped) => {
                for outcome in reaped {
                    match outcome {
                        Reaped::Requeued { job_id, attempt } => {
                            tracing::warn!(%job_id, attempt, "lease expired; job queued again")
                        }
                        Reaped::Failed { job_id, attempt } => {
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
