//! Shared setup of the scheduler's integration tests: a scheduler started
//! in-process against the test's own schema, virtual host and bucket.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::SocketAddr;
use std::time::Duration;

use jobs::broker;
use jobs::shutdown::Shutdown;
use jobs::testkit::{eventually, TestEnv, TEST_API_TOKEN};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use scheduler::config::SchedulerConfig;
use serde_json::json;
use sqlx::PgPool;

/// How long a test waits for something asynchronous before failing.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Harness {
    pub env: TestEnv,
    pub pool: PgPool,
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    /// Sends the test API token with every request.
    pub http: reqwest::Client,
    running: Option<scheduler::Running>,
}

/// The secrets of a test scheduler: the test token and S3 credentials.
pub fn secrets(env: &TestEnv) -> scheduler::Secrets {
    scheduler::Secrets {
        api_tokens: vec![TEST_API_TOKEN.to_owned()],
        s3: env.s3_credentials(),
    }
}

/// An HTTP client that sends `token` as its bearer token.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A scheduler config for `env` on an OS-picked port, with fast sweeps.
pub fn config(env: &TestEnv) -> SchedulerConfig {
    let mut config = SchedulerConfig::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.database = env.database.clone();
    config.broker = env.broker.clone();
    config.s3 = env.s3.clone();
    config.reaper.interval_ms = 200;
    config.relay.poll_interval_ms = 50;
    config
}

impl Harness {
    pub async fn start(name: &str) -> Self {
        Self::start_with(TestEnv::new(name), |_| {}).await
    }

    pub async fn start_with(env: TestEnv, tweak: impl FnOnce(&mut SchedulerConfig)) -> Self {
        let mut config = config(&env);
        tweak(&mut config);
        let shutdown = Shutdown::new();
        let running = scheduler::start_with(config, secrets(&env), shutdown.clone())
            .await
            .expect("start scheduler");
        let pool = jobs::db::connect(&env.database).await.unwrap();
        Harness {
            addr: running.addr,
            env,
            pool,
            shutdown,
            http: client_with_token(TEST_API_TOKEN),
            running: Some(running),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GETs `path` with the test token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// GETs `path` with the test token and parses the answer as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.unwrap()
    }

    /// POSTs `body` as JSON to `path` with the test token.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` as it is (JSON or not) to `path` with the test token.
    pub async fn post_body(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs to `path` with no body, as cancel is sent.
    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.unwrap()
    }

    /// Stops the scheduler and waits for its tasks.
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(running) = self.running.take() {
            running.join().await;
        }
    }
}

/// A valid edit submission of `input`.
pub fn edit(input: &str) -> serde_json::Value {
    json!({
        "spec": {
            "version": 1,
            "operation": { "kind": "edit", "input": input, "attributes": { "smiling": 1.0 } }
        }
    })
}

/// Takes one message off `queue` of `env`, waiting for it to arrive.
pub async fn take_message(env: &TestEnv, queue: &str) -> serde_json::Value {
    let connection = broker::connect(&env.broker, "test-reader").await.unwrap();
    let data = eventually(&format!("a message on {queue}"), WAIT, || async {
        // A fresh channel per try: a quorum queue still electing its leader
        // answers with a channel error.
        let channel = connection.create_channel().await.ok()?;
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .ok()??;
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .ok()?;
        Some(message.delivery.data)
    })
    .await;
    let _ = connection.close(0, "done".into()).await;
    serde_json::from_slice(&data).unwrap()
}
