//! `glowctl`, Glowline's client: uploads a spec's local input photos to S3,
//! submits the job (on the submission queue by default, or over HTTP),
//! follows it with a progress bar and downloads its outputs; also reads,
//! lists and cancels jobs and submits batches.
//!
//! Every API call carries the bearer token from `GLOWLINE_API_TOKEN` (or
//! the first line of the file named by `GLOWLINE_API_TOKEN_FILE`). Outputs
//! are downloaded through the presigned URLs in the job's status, never
//! with glowctl's own S3 credentials.
//!
//! The binary is a thin shell over [`Client`], which tests drive directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use contract::queue::{JobStatus, SubmitReply, SubmitRequest, JOBS_EXCHANGE, SUBMIT_QUEUE};
use contract::spec::{JobSpec, Operation};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use jobs::config::{BrokerConfig, S3Config};
use jobs::s3::{Download, Store};
use jobs::store::{BatchStatus, Job};
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of glowctl's environment overrides.
pub const ENV_PREFIX: &str = "GLOWCTL";

/// RabbitMQ's direct reply-to pseudo-queue: the scheduler's answer comes back
/// on the publishing channel without a queue of our own.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long to wait for the scheduler to answer a queued submission.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between status polls while waiting: quick enough for a smooth bar,
/// rare enough to cost the scheduler nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Steps of a progress bar (per mille).
const BAR_STEPS: u64 = 1000;

/// Where glowctl finds the scheduler, the broker and the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The scheduler's HTTP API.
    pub scheduler_url: String,
    pub broker: BrokerConfig,
    pub s3: S3Config,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            scheduler_url: "http://127.0.0.1:8080".into(),
            broker: BrokerConfig::default(),
            s3: S3Config::default(),
        }
    }
}

/// How to submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Publish on the submission queue and wait for the scheduler's reply.
    Queue,
    /// POST to the scheduler's HTTP API.
    Http,
}

/// Options of one submission.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub idempotency_key: Option<String>,
    pub priority: i16,
    pub deadline_secs: Option<u32>,
}

/// A client of one Glowline deployment.
pub struct Client {
    config: ClientConfig,
    /// Calls the scheduler's API, with the bearer token when there is one.
    http: reqwest::Client,
    /// Fetches presigned URLs: no token, which is for the scheduler only.
    downloads: reqwest::Client,
    store: Store,
}

impl Client {
    /// A client for `config`, with S3 `credentials` for uploading inputs.
    pub fn new(config: ClientConfig, credentials: jobs::s3::Credentials) -> Self {
        let store = Store::new(&config.s3, credentials);
        Self {
            config,
            http: reqwest::Client::new(),
            downloads: reqwest::Client::new(),
            store,
        }
    }

    /// This client, sending `token` as `Authorization: Bearer` on every API
    /// call (none when `None`).
    pub fn with_api_token(mut self, token: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("the API token holds characters a header cannot"))?;
            // Keeps the token out of reqwest's and hyper's debug output.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        self.http = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        Ok(self)
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.config.scheduler_url.trim_end_matches('/'),
            path
        )
    }

    /// Reads the spec at `path`, uploads its local inputs (relative to the
    /// spec's folder) and rewrites them to their S3 keys.
    pub async fn prepare(&self, path: &Path) -> anyhow::Result<JobSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading spec {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        self.prepare_spec(
            JobSpec::from_json(&text).with_context(|| format!("spec {}", path.display()))?,
            base,
        )
        .await
    }

    /// Uploads the local inputs of `spec` (relative to `base`) and rewrites
    /// them to their S3 keys, all under one new upload folder.
    pub async fn prepare_spec(&self, mut spec: JobSpec, base: &Path) -> anyhow::Result<JobSpec> {
        let folder = format!("{}{}/", contract::queue::INPUT_PREFIX, Uuid::new_v4());
        let mut uploaded: Vec<(String, String)> = Vec::new();
        for (index, reference) in spec.inputs().into_iter().map(str::to_owned).enumerate() {
            if uploaded.iter().any(|(r, _)| *r == reference) {
                continue;
            }
            let local = base.join(&reference);
            let name = local
                .file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_")
                })
                .unwrap_or_else(|| "input".into());
            let key = format!("{folder}{index}-{name}");
            self.store
                .upload(&key, &local, "application/octet-stream")
                .await
                .with_context(|| format!("uploading input {}", local.display()))?;
            uploaded.push((reference, key));
        }
        map_inputs(&mut spec.operation, |reference| {
            uploaded
                .iter()
                .find(|(r, _)| r == reference)
                .map(|(_, key)| key.clone())
                .unwrap_or_else(|| reference.to_owned())
        });
        Ok(spec)
    }

    /// Submits `spec` (inputs already in S3); returns the job id.
    pub async fn submit(
        &self,
        spec: &JobSpec,
        options: &SubmitOptions,
        via: Via,
    ) -> anyhow::Result<Uuid> {
        let request = SubmitRequest {
            spec: serde_json::to_value(spec)?,
            // A key even when none was given: a retried publish then
            // returns the same job instead of making a second one.
            idempotency_key: Some(
                options
                    .idempotency_key
                    .clone()
                    .unwrap_or_else(|| Uuid::new_v4().to_string()),
            ),
            priority: options.priority,
            deadline_secs: options.deadline_secs,
        };
        match via {
            Via::Queue => self.submit_over_queue(&request).await,
            Via::Http => self.submit_over_http(&request).await,
        }
    }

    async fn submit_over_queue(&self, request: &SubmitRequest) -> anyhow::Result<Uuid> {
        let connection = jobs::broker::connect(&self.config.broker, "glowctl").await?;
        let channel = jobs::broker::confirm_channel(&connection).await?;
        let mut replies = channel
            .basic_consume(
                REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let properties = jobs::broker::json_properties().with_reply_to(REPLY_TO.into());
        jobs::broker::publish_confirmed(
            &channel,
            JOBS_EXCHANGE,
            SUBMIT_QUEUE,
            &serde_json::to_vec(request)?,
            properties,
        )
        .await?;

        let reply = tokio::time::timeout(REPLY_TIMEOUT, replies.next())
            .await
            .context("the scheduler did not answer the submission")?
            .context("the reply consumer closed")??;
        let _ = connection.close(0, "submitted".into()).await;
        match serde_json::from_slice::<SubmitReply>(&reply.data)? {
            SubmitReply::Accepted { job_id, .. } => Ok(job_id.parse()?),
            SubmitReply::Rejected { reason } => bail!("submission rejected: {reason}"),
        }
    }

    async fn submit_over_http(&self, request: &SubmitRequest) -> anyhow::Result<Uuid> {
        let response = self
            .http
            .post(self.url("/v1/jobs"))
            .json(request)
            .send()
            .await?;
        let body: serde_json::Value = checked(response).await?;
        Ok(serde_json::from_value::<Job>(body["job"].clone())?.id)
    }

    /// The job `id`.
    pub async fn job(&self, id: Uuid) -> anyhow::Result<Job> {
        checked(
            self.http
                .get(self.url(&format!("/v1/jobs/{id}")))
                .send()
                .await?,
        )
        .await
    }

    /// Jobs matching the `query` string (`status=running&limit=10`).
    pub async fn list(&self, query: &str) -> anyhow::Result<Vec<Job>> {
        let body: serde_json::Value = checked(
            self.http
                .get(self.url(&format!("/v1/jobs?{query}")))
                .send()
                .await?,
        )
        .await?;
        Ok(serde_json::from_value(body["jobs"].clone())?)
    }

    /// Cancels job `id`; returns the scheduler's outcome word.
    pub async fn cancel(&self, id: Uuid) -> anyhow::Result<String> {
        let body: serde_json::Value = checked(
            self.http
                .post(self.url(&format!("/v1/jobs/{id}/cancel")))
                .send()
                .await?,
        )
        .await?;
        Ok(body["outcome"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits until job `id` finishes, showing a progress bar when `bar`.
    pub async fn wait(&self, id: Uuid, bar: bool) -> anyhow::Result<Job> {
        let progress = bar.then(|| new_bar(&format!("job {id}")));
        loop {
            let job = self.job(id).await?;
            if let Some(progress) = &progress {
                progress.set_position((job.progress * BAR_STEPS as f32) as u64);
                progress.set_message(job.status.to_string());
            }
            if job.status.is_terminal() {
                if let Some(progress) = progress {
                    progress.finish();
                }
                return Ok(job);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fresh download URLs for the outputs of job `id`.
    pub async fn download_links(&self, id: Uuid) -> anyhow::Result<Vec<Download>> {
        let body: serde_json::Value = checked(
            self.http
                .get(self.url(&format!("/v1/jobs/{id}")))
                .send()
                .await?,
        )
        .await?;
        Ok(serde_json::from_value(body["outputs"].clone())?)
    }

    /// Downloads the outputs of `job` into `dir` through presigned URLs,
    /// keeping their paths below the job's prefix; returns the files written.
    pub async fn download(&self, job: &Job, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let prefix = contract::queue::output_prefix(&job.id.to_string());
        let mut written = Vec::new();
        for link in self.download_links(job.id).await? {
            let key = &link.key;
            let relative = key
                .strip_prefix(&prefix)
                .context("output key outside the job's prefix")?;
            if relative
                .split('/')
                .any(|part| part == ".." || part == "." || part.is_empty())
            {
                bail!("refusing output key {key:?}");
            }
            let path = dir.join(relative);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let response = self.downloads.get(&link.url).send().await?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                bail!(
                    "downloading {key}: the store answered {status}: {}",
                    s3_error_message(&body)
                );
            }
            tokio::fs::write(&path, response.bytes().await?)
                .await
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Submits a batch: `manifest` has one spec per line (inputs relative to
    /// `base`); returns the batch id and its job ids.
    pub async fn submit_batch(
        &self,
        manifest: &str,
        base: &Path,
        label: Option<&str>,
    ) -> anyhow::Result<(Uuid, Vec<Uuid>)> {
        let mut lines = Vec::new();
        for (number, line) in manifest
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let spec = JobSpec::from_json(line)
                .with_context(|| format!("manifest line {}", number + 1))?;
            let spec = self.prepare_spec(spec, base).await?;
            let request = SubmitRequest {
                spec: serde_json::to_value(&spec)?,
                idempotency_key: None,
                priority: 0,
                deadline_secs: None,
            };
            lines.push(serde_json::to_string(&request)?);
        }
        let mut request = self
            .http
            .post(self.url("/v1/batches"))
            .body(lines.join("\n"));
        if let Some(label) = label {
            request = request.query(&[("label", label)]);
        }
        let body: serde_json::Value = checked(request.send().await?).await?;
        Ok((
            serde_json::from_value(body["batch_id"].clone())?,
            serde_json::from_value(body["job_ids"].clone())?,
        ))
    }

    /// The status of batch `id`.
    pub async fn batch(&self, id: Uuid) -> anyhow::Result<BatchStatus> {
        checked(
            self.http
                .get(self.url(&format!("/v1/batches/{id}")))
                .send()
                .await?,
        )
        .await
    }

    /// Waits until every job of batch `id` finished.
    pub async fn wait_batch(&self, id: Uuid, bar: bool) -> anyhow::Result<BatchStatus> {
        let progress = bar.then(|| new_bar(&format!("batch {id}")));
        loop {
            let status = self.batch(id).await?;
            if let Some(progress) = &progress {
                progress.set_position((status.progress * BAR_STEPS as f64) as u64);
                progress.set_message(status.status.clone());
            }
            if status.status == "succeeded" || status.status == "failed" {
                if let Some(progress) = progress {
                    progress.finish();
                }
                return Ok(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Whether a job ended well, for the exit code.
pub fn succeeded(job: &Job) -> bool {
    job.status == JobStatus::Succeeded
}

fn new_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(BAR_STEPS);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {percent:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// The body of a successful response, or the API's error as an error.
async fn checked<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        bail!(
            "scheduler answered {status}: {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(response.json().await?)
}

/// The `<Message>` of an S3 error document, or a note that it has none.
fn s3_error_message(body: &str) -> &str {
    body.split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map_or("no reason given", |(message, _)| message)
}

/// Rewrites every input reference of `operation` with `rename`.
fn map_inputs(operation: &mut Operation, mut rename: impl FnMut(&str) -> String) {
    match operation {
        Operation::Edit { input, .. } | Operation::EditSweep { input, .. } => {
            *input = rename(input)
        }
        Operation::Mix { from, to, .. } | Operation::MixSweep { from, to, .. } => {
            *from = rename(from);
            *to = rename(to);
        }
        Operation::MorphChain { faces, .. } => faces.iter_mut().for_each(|f| *f = rename(f)),
        Operation::NineWayMorph { base, targets, .. } => {
            *base = rename(base);
            targets.iter_mut().for_each(|t| *t = rename(t));
        }
        Operation::Sample { .. } | Operation::Probe {} => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/glowctl.toml");
        let config: ClientConfig = jobs::config::load(Some(&path), "GLOWCTL_UNUSED").unwrap();
        assert_eq!(config.scheduler_url, ClientConfig::default().scheduler_url);
    }
}
