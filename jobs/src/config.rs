//! Configuration shared by Glowline's binaries: TOML files under
//! `configs/`, overridden by environment variables, with secrets taken only
//! from the environment.
//!
//! An override names a key path below the binary's prefix with `__`
//! between parts: `GLOWLINE_WORKER__S3__BUCKET=frames` sets `[s3] bucket`.
//! Secrets never live in the files: [`DATABASE_PASSWORD_ENV`],
//! [`BROKER_PASSWORD_ENV`] and the standard `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Environment variable holding the Postgres password, if the server wants one.
pub const DATABASE_PASSWORD_ENV: &str = "GLOWLINE_DATABASE_PASSWORD";

/// Environment variable holding the RabbitMQ password, if not guest's.
pub const BROKER_PASSWORD_ENV: &str = "GLOWLINE_BROKER_PASSWORD";

/// Environment variable holding the scheduler API's bearer token, read by
/// the scheduler (which accepts it) and by glowctl (which sends it).
pub const API_TOKEN_ENV: &str = "GLOWLINE_API_TOKEN";

/// Environment variable naming a file of API tokens, one per line (a
/// mounted secret); glowctl sends the first.
pub const API_TOKEN_FILE_ENV: &str = "GLOWLINE_API_TOKEN_FILE";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var} overrides {key}, which is not a table")]
    NotATable { var: String, key: String },
    #[error("invalid configuration (after environment overrides): {0}")]
    Invalid(Box<toml::de::Error>),
    #[error("cannot read the API token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The API tokens configured for this process: [`API_TOKEN_ENV`], then
/// every line of the token file (`file`, else [`API_TOKEN_FILE_ENV`]).
/// Blank lines and lines starting with `#` are skipped; surrounding
/// whitespace is not part of a token.
pub fn api_tokens(file: Option<&Path>) -> Result<Vec<String>, ConfigError> {
    let mut tokens: Vec<String> = std::env::var(API_TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .into_iter()
        .collect();
    let file = file
        .map(Path::to_owned)
        .or_else(|| std::env::var_os(API_TOKEN_FILE_ENV).map(PathBuf::from));
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::TokenFile { path, source })?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned),
        );
    }
    Ok(tokens)
}

/// Loads `T` from the TOML file at `path` (all defaults when `None`), then
/// applies every environment variable starting with `env_prefix` + `__`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    let mut root = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            toml::from_str::<toml::Table>(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?
        }
        None => toml::Table::new(),
    };
    apply_overrides(&mut root, env_prefix, std::env::vars())?;
    toml::Value::Table(root)
        .try_into()
        .map_err(|e| ConfigError::Invalid(Box::new(e)))
}

/// Applies `PREFIX__A__B=value` overrides to `root`. A value keeps the type
/// of the key it replaces when that key is a string; otherwise it is read as
/// a TOML value (`30`, `true`, `["a"]`) and falls back to a string.
pub fn apply_overrides(
    root: &mut toml::Table,
    env_prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let prefix = format!("{env_prefix}__");
    for (var, raw) in vars {
        let Some(path) = var.strip_prefix(&prefix) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        let (last, parents) = keys.split_last().expect("split yields at least one part");

        let mut table = &mut *root;
        for key in parents {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| ConfigError::NotATable {
                var: var.clone(),
                key: key.clone(),
            })?;
        }

        let value = match table.get(last) {
            Some(toml::Value::String(_)) => toml::Value::String(raw),
            _ => parse_scalar(&raw),
        };
        table.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_scalar(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Where the job store lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Postgres URL without a password (see [`DATABASE_PASSWORD_ENV`]).
    pub url: String,
    /// Schema holding Glowline's tables; created if missing. Tests give each
    /// run its own so that they can run in parallel.
    pub schema: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Whether this process applies pending migrations at start.
    pub migrate: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "glowline".into(),
            max_connections: 8,
            migrate: true,
        }
    }
}

/// Classic or quorum queues. Quorum queues replicate and survive a node's
/// loss, but need a broker with the `quorum_queue` feature flag enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Quorum,
    Classic,
}

/// Where the broker is and how the topology is declared.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URL; its password may come from [`BROKER_PASSWORD_ENV`].
    pub url: String,
    /// Type of the submission and work queues.
    pub queue_type: QueueType,
    /// Deliveries of one message (quorum queues) before it is dead-lettered
    /// as poison.
    pub delivery_limit: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_type: QueueType::Quorum,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

/// A message delivered this often crashed its consumer each time (or was
/// handed back by shutting-down workers); past this it is poison. Higher
/// than any job's max attempts, because redeliveries after a crash are
/// normal and each job's attempts are limited in Postgres.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Which checksums aws-sdk-s3 computes and checks. Several S3-compatible
/// stores reject the SDK's default (CRC on every request), so `when_required`
/// is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    WhenSupported,
    WhenRequired,
}

/// Where inputs and outputs are stored. Credentials come from
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible store; AWS's own when empty.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// self-hosted stores need.
    pub path_style: bool,
    pub checksum: ChecksumMode,
    /// Objects larger than this are uploaded in parts of this size.
    pub multipart_part_bytes: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: Some("http://127.0.0.1:8014".into()),
            region: "us-east-1".into(),
            bucket: "glowline".into(),
            path_style: true,
            checksum: ChecksumMode::WhenRequired,
            multipart_part_bytes: DEFAULT_PART_BYTES,
        }
    }
}

/// 8 MiB parts: above S3's 5 MiB minimum part size, and small enough that a
/// failed part is cheap to resend.
pub const DEFAULT_PART_BYTES: u64 = 8 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        database: DatabaseConfig,
        #[serde(default)]
        s3: S3Config,
    }

    #[test]
    fn environment_overrides_nested_keys_and_keeps_string_types() {
        let mut root: toml::Table =
            toml::from_str("[database]\nurl = 'postgres://a'\nschema = 'x'\n[s3]\nbucket = 'b'\n")
                .unwrap();
        let vars = [
            ("APP__DATABASE__MAX_CONNECTIONS".to_owned(), "3".to_owned()),
            ("APP__S3__BUCKET".to_owned(), "123".to_owned()),
            ("APP__S3__PATH_STYLE".to_owned(), "false".to_owned()),
            ("OTHER__S3__BUCKET".to_owned(), "ignored".to_owned()),
        ];
        apply_overrides(&mut root, "APP", vars).unwrap();
        let sample: Sample = toml::Value::Table(root).try_into().unwrap();
        assert_eq!(sample.database.max_connections, 3);
        assert_eq!(sample.database.schema, "x");
        assert_eq!(sample.s3.bucket, "123");
        assert!(!sample.s3.path_style);
    }

    #[test]
    fn override_through_a_scalar_is_an_error() {
        let mut root: toml::Table = toml::from_str("database = 1").unwrap();
        let vars = [("APP__DATABASE__URL".to_owned(), "x".to_owned())];
        assert!(matches!(
            apply_overrides(&mut root, "APP", vars),
            Err(ConfigError::NotATable { .. })
        ));
    }
}
