//! Test isolation on the real services: each [`TestEnv`] gets its own
//! Postgres schema, RabbitMQ virtual host and S3 bucket, so integration
//! tests run in parallel against the machine's Postgres and RabbitMQ and the
//! loopback S3 server that `scripts/s3.sh` starts.
//!
//! Endpoints come from `GLOWLINE_TEST_DATABASE_URL`, `GLOWLINE_TEST_AMQP_HOST`
//! and `GLOWLINE_TEST_S3_ENDPOINT`, defaulting to the loopback services.

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::Credentials;
use uuid::Uuid;

use crate::config::{BrokerConfig, DatabaseConfig, QueueType, S3Config};

/// Credentials of the loopback S3 server that `scripts/s3.sh` starts; test
/// values, not secrets.
pub const TEST_S3_ACCESS_KEY: &str = "glowline-test";
pub const TEST_S3_SECRET_KEY: &str = "glowline-test-secret";

/// The bearer token test schedulers accept and test clients send; a test
/// value, not a secret.
pub const TEST_API_TOKEN: &str = "glowline-test-api-token";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// One test's private corner of every service; removed on drop.
pub struct TestEnv {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub s3: S3Config,
    /// The RabbitMQ virtual host.
    pub vhost: String,
}

impl TestEnv {
    /// Creates a schema name, a virtual host and a bucket named after `name`
    /// and a random suffix. The schema is created by the first connect.
    pub fn new(name: &str) -> Self {
        let suffix = &Uuid::new_v4().simple().to_string()[..10];
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let id = format!("t_{slug}_{suffix}");

        rabbitmqctl(&["add_vhost", &id]);
        rabbitmqctl(&["set_permissions", "-p", &id, "guest", ".*", ".*", ".*"]);
        let amqp_host = env_or("GLOWLINE_TEST_AMQP_HOST", "127.0.0.1:5672");

        TestEnv {
            database: DatabaseConfig {
                url: env_or(
                    "GLOWLINE_TEST_DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/postgres",
                ),
                schema: id.clone(),
                max_connections: 4,
                migrate: true,
            },
            broker: BrokerConfig {
                url: format!("amqp://guest:guest@{amqp_host}/{id}"),
                queue_type: QueueType::Quorum,
                ..BrokerConfig::default()
            },
            s3: S3Config {
                endpoint: Some(env_or("GLOWLINE_TEST_S3_ENDPOINT", "http://127.0.0.1:8014")),
                bucket: id.replace('_', "-"),
                ..S3Config::default()
            },
            vhost: id,
        }
    }

    /// Credentials of the test S3 server.
    pub fn s3_credentials(&self) -> Credentials {
        Credentials::new(TEST_S3_ACCESS_KEY, TEST_S3_SECRET_KEY, None, None, "test")
    }

    /// The test's bucket, created.
    pub async fn store(&self) -> crate::s3::Store {
        let store = crate::s3::Store::new(&self.s3, self.s3_credentials());
        store.ensure_bucket().await.expect("create the test bucket");
        store
    }

    /// (ready, unacknowledged) messages of `queue` in the test's vhost.
    pub fn queue_depth(&self, queue: &str) -> (u64, u64) {
        let out = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.vhost,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        for line in out.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() == 3 && fields[0] == queue {
                return (
                    fields[1].parse().unwrap_or(0),
                    fields[2].parse().unwrap_or(0),
                );
            }
        }
        (0, 0)
    }
}

/// A RabbitMQ user with full rights on one test's virtual host, deleted on
/// drop: for tests that need a broker password of their own.
pub struct BrokerUser {
    pub name: String,
    pub password: String,
}

impl TestEnv {
    /// Adds user `name` with `password`, allowed everything on this test's
    /// virtual host.
    pub fn add_broker_user(&self, name: &str, password: &str) -> BrokerUser {
        rabbitmqctl(&["add_user", name, password]);
        rabbitmqctl(&["set_permissions", "-p", &self.vhost, name, ".*", ".*", ".*"]);
        BrokerUser {
            name: name.to_owned(),
            password: password.to_owned(),
        }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.vhost]);
        let _ = Command::new("psql")
            .args([
                &self.database.url,
                "-qc",
                &format!(
                    "SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS {} CASCADE",
                    self.database.schema
                ),
            ])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("run rabbitmqctl (is RabbitMQ installed? see scripts/services.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of the samples named `name` in a Prometheus text exposition
/// whose labels include every pair of `labels` (0 when there is none), so
/// that a test can compare a counter before and after.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels.iter().all(|(key, wanted)| {
                    series_labels
                        .split(',')
                        .any(|pair| pair == format!("{key}=\"{wanted}\""))
                });
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Runs `promtool check metrics` on a text exposition and panics with its
/// complaints unless it passes. promtool comes with `scripts/setup.sh`,
/// which puts it in the repository's `.tools/bin` unless it is installed.
pub fn promtool_check(exposition: &str) {
    use std::io::Write;
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/promtool");
    let promtool = if local.exists() {
        local
    } else {
        std::path::PathBuf::from("promtool")
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/promtool.sh installs it)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
