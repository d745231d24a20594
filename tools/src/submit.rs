//! Submitting jobs the two ways clients do: a persistent message on the
//! submission queue (confirmed by the broker), or `POST /v1/jobs`.
//!
//! Every submission carries an idempotency key, so a driver that is not
//! sure whether a submission arrived (a confirm lost in a broker restart, a
//! request cut off by a database restart) sends it again and still gets one
//! job.

use std::time::Duration;

use anyhow::{bail, Context as _};
use contract::queue::{SubmitRequest, JOBS_EXCHANGE, SUBMIT_QUEUE};
use jobs::config::BrokerConfig;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Connection, PublisherConfirm};

/// A publisher on the submission queue that reconnects after a failure.
pub struct QueueSubmitter {
    broker: BrokerConfig,
    link: Option<(Connection, Channel)>,
}

impl QueueSubmitter {
    pub fn new(broker: BrokerConfig) -> Self {
        Self { broker, link: None }
    }

    async fn channel(&mut self) -> anyhow::Result<&Channel> {
        if self.link.is_none() {
            let connection = jobs::broker::connect(&self.broker, "glowline-driver").await?;
            let channel = jobs::broker::confirm_channel(&connection).await?;
            self.link = Some((connection, channel));
        }
        Ok(&self.link.as_ref().expect("just connected").1)
    }

    /// Publishes `request` and waits for the broker's confirm. After any
    /// failure the connection is dropped, and the next call opens a new one.
    pub async fn submit(&mut self, request: &SubmitRequest) -> anyhow::Result<()> {
        let body = serde_json::to_vec(request)?;
        let result = async {
            let channel = self.channel().await?;
            jobs::broker::publish_confirmed(
                channel,
                JOBS_EXCHANGE,
                SUBMIT_QUEUE,
                &body,
                jobs::broker::json_properties(),
            )
            .await?;
            anyhow::Ok(())
        }
        .await;
        if result.is_err() {
            self.link = None;
        }
        result
    }

    /// Publishes `request` without waiting for its confirm; the returned
    /// confirm resolves once the broker stored the message. For bursts,
    /// where waiting for each confirm in turn would measure round trips
    /// rather than throughput.
    pub async fn publish(&mut self, request: &SubmitRequest) -> anyhow::Result<PublisherConfirm> {
        let body = serde_json::to_vec(request)?;
        let channel = self.channel().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        Ok(channel
            .basic_publish(
                JOBS_EXCHANGE.into(),
                SUBMIT_QUEUE.into(),
                options,
                &body,
                jobs::broker::json_properties(),
            )
            .await?)
    }

    /// Closes the connection.
    pub async fn close(&mut self) {
        if let Some((connection, _)) = self.link.take() {
            let _ = connection.close(0, "done".into()).await;
        }
    }
}

/// A client of the scheduler's `POST /v1/jobs`.
#[derive(Clone)]
pub struct HttpSubmitter {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// How long one HTTP submission may take: a healthy scheduler answers in
/// milliseconds, one whose database is restarting within seconds.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

impl HttpSubmitter {
    pub fn new(scheduler_url: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("a default HTTP client builds"),
            url: format!("{}/v1/jobs", scheduler_url.trim_end_matches('/')),
            token: token.to_owned(),
        }
    }

    /// Posts `request`; an answer other than 2xx is an error naming it.
    pub async fn submit(&self, request: &SubmitRequest) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(request)
            .send()
            .await
            .context("sending the submission")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("the scheduler answered {status}: {body}");
        }
        Ok(())
    }
}
