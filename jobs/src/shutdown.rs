//! A shutdown signal shared by every long-lived task of a process.
//!
//! One [`Shutdown`] is created by `main`, cloned into each task, and
//! triggered on SIGTERM or Ctrl-C; tasks `select!` on [`Shutdown::wait`]
//! and finish or hand back their current work.

use tokio_util::sync::CancellationToken;

/// A cloneable handle that is triggered once and observed by many tasks.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that has not fired yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal; every waiter wakes up.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// Triggers this signal on SIGTERM or Ctrl-C, from a background task.
    pub fn trigger_on_signals(&self) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            shutdown.trigger();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
