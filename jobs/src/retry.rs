//! Exponential backoff with full jitter for transient failures (S3,
//! Postgres or the broker briefly unavailable).

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::shutdown::Shutdown;

/// How long and how often to retry a transient failure.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay ceiling of the first retry.
    pub initial: Duration,
    /// Delay ceiling that later retries never exceed.
    pub max: Duration,
    /// Retries after the first try; the call fails after these.
    pub max_retries: u32,
}

impl Default for Backoff {
    /// Ten retries from 200 ms doubling up to 10 s span about a minute: long
    /// enough to ride out a broker or database restart, short enough that a
    /// real outage surfaces as an error while the job's lease is still held.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            max_retries: 10,
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (0-based): uniform in
    /// `[0, min(max, initial * 2^retry)]`, so that many clients that failed
    /// together do not retry together.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    /// Runs `op` until it succeeds, fails with an error that `is_transient`
    /// rejects, runs out of retries, or `shutdown` fires during a wait.
    pub async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        shutdown: &Shutdown,
        is_transient: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut retry = 0;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if retry < self.max_retries && is_transient(&error) => {
                    let delay = self.delay(retry);
                    tracing::warn!(what, retry, delay_ms = delay.as_millis() as u64, %error, "transient failure; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => return Err(error),
                    }
                    retry += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_ceiling() {
        let backoff = Backoff::default();
        for retry in 0..40 {
            assert!(backoff.delay(retry) <= backoff.max);
        }
        assert!(backoff.delay(0) <= backoff.initial);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let mut calls = 0;
        let result: Result<(), String> = Backoff::default()
            .retry(
                "test",
                &Shutdown::new(),
                |_| false,
                || {
                    calls += 1;
                    async { Err("bad".to_owned()) }
                },
            )
            .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
