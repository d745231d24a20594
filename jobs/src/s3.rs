//! S3 transfers for inputs and outputs: a client built from [`S3Config`]
//! (endpoint, region, path-style addressing, checksum mode), downloads to
//! local files, uploads that switch to multipart for large files, and
//! presigned download URLs that expire.
//!
//! Keys are never taken from users as-is: inputs live under
//! [`contract::queue::INPUT_PREFIX`] and outputs under a job's own prefix
//! ([`contract::queue::output_prefix`]). Every operation of [`Store`] checks
//! its key with [`contract::queue::check_stored_key`] before any request, so
//! even a key that slipped past validation cannot reach the rest of the
//! bucket, and the bucket itself is fixed by the configuration.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
pub use aws_sdk_s3::config::Credentials;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use chrono::{DateTime, Utc};
use contract::queue::{check_stored_key, KeyError};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::config::{ChecksumMode, S3Config};

/// Why an S3 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 object {key:?} does not exist")]
    NotFound { key: String },
    #[error("S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    NoCredentials,
    #[error("refusing S3 {op}: {source}")]
    ForbiddenKey {
        op: &'static str,
        #[source]
        source: KeyError,
    },
    #[error("a presigned URL must last 1 s to 7 days; {secs} s was asked for")]
    Expiry { secs: u64 },
    #[error("S3 {op} {key:?} failed: {message}")]
    Request {
        op: &'static str,
        key: String,
        message: String,
        transient: bool,
    },
    #[error("local file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl S3Error {
    /// Whether a retry may help (the store was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            S3Error::Request {
                transient: true,
                ..
            }
        )
    }
}

fn request_error<E>(op: &'static str, key: &str, error: SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status >= 500 || status == 429
        }
        _ => false,
    };
    let message = match error.code() {
        Some(code) => format!("{code}: {}", error.message().unwrap_or("no message")),
        None => aws_error_chain(&error),
    };
    S3Error::Request {
        op,
        key: key.to_owned(),
        message,
        transient,
    }
}

fn aws_error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads credentials from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
pub fn credentials_from_env() -> Result<Credentials, S3Error> {
    let key = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| S3Error::NoCredentials)?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| S3Error::NoCredentials)?;
    Ok(Credentials::new(key, secret, None, None, "environment"))
}

/// The longest a presigned URL may last: SigV4's limit of seven days.
pub const MAX_PRESIGN_SECS: u64 = 7 * 24 * 3600;

/// Refuses `key` unless it is an input or output key (see the module docs).
fn confined(op: &'static str, key: &str) -> Result<(), S3Error> {
    check_stored_key(key).map_err(|source| S3Error::ForbiddenKey { op, source })
}

/// A time-limited GET URL for one object: whoever holds it may download
/// that object, and nothing else, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Download {
    /// The object's key.
    pub key: String,
    /// The presigned URL; needs no other credentials.
    pub url: String,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
}

/// One bucket of an S3-compatible store.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    bucket: String,
    part_bytes: u64,
}

impl Store {
    /// A store for `config.bucket` with `credentials`.
    pub fn new(config: &S3Config, credentials: Credentials) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let (request, response) = match config.checksum {
            ChecksumMode::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
            ChecksumMode::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
        };
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.path_style)
            .request_checksum_calculation(request)
            .response_checksum_validation(response);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            part_bytes: config.multipart_part_bytes,
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// This store with `interceptor` added to its client's request
    /// pipeline (see [`crate::metrics::S3Metrics`]).
    pub fn with_interceptor(
        self,
        interceptor: impl aws_sdk_s3::config::Intercept + 'static,
    ) -> Self {
        let config = self
            .client
            .config()
            .to_builder()
            .interceptor(interceptor)
            .build();
        Self {
            client: Client::from_conf(config),
            ..self
        }
    }

    /// Whether the bucket exists and these credentials may use it: one
    /// `HeadBucket` request, for readiness probes.
    pub async fn check(&self) -> Result<(), S3Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| request_error("head bucket", &self.bucket, e))?;
        Ok(())
    }

    /// Creates the bucket unless it exists (for local stacks and tests).
    pub async fn ensure_bucket(&self) -> Result<(), S3Error> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(request_error("create bucket", &self.bucket, error)),
        }
    }

    /// Size of object `key`, or `None` if it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, S3Error> {
        confined("head", key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(error) => Err(request_error("head", key, error)),
        }
    }

    /// Keys under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        confined("list", prefix.trim_end_matches('/'))?;
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| request_error("list", prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// The whole object `key`.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, S3Error> {
        confined("get", key)?;
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Err(S3Error::NotFound {
                    key: key.to_owned(),
                })
            }
            Err(error) => return Err(request_error("get", key, error)),
        };
        let body = object.body.collect().await.map_err(|e| S3Error::Request {
            op: "read body of",
            key: key.to_owned(),
            message: e.to_string(),
            transient: true,
        })?;
        Ok(body.into_bytes().to_vec())
    }

    /// Downloads object `key` into the file `path`.
    pub async fn download(&self, key: &str, path: &Path) -> Result<(), S3Error> {
        let bytes = self.get_bytes(key).await?;
        tokio::fs::write(path, bytes)
            .await
            .map_err(|source| S3Error::Io {
                path: path.display().to_string(),
                source,
            })
    }

    /// Stores `bytes` as object `key`.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), S3Error> {
        confined("put", key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| request_error("put", key, e))?;
        Ok(())
    }

    /// Uploads the file `path` as object `key`, in parts when it is larger
    /// than one part.
    pub async fn upload(&self, key: &str, path: &Path, content_type: &str) -> Result<(), S3Error> {
        confined("upload", key)?;
        let io_error = |source| S3Error::Io {
            path: path.display().to_string(),
            source,
        };
        let size = tokio::fs::metadata(path).await.map_err(io_error)?.len();
        if size <= self.part_bytes {
            let bytes = tokio::fs::read(path).await.map_err(io_error)?;
            return self.put_bytes(key, bytes, content_type).await;
        }

        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| request_error("start multipart upload of", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();

        match self.upload_parts(key, path, &upload_id).await {
            Ok(parts) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| request_error("complete multipart upload of", key, e))?;
                Ok(())
            }
            Err(error) => {
                // Leave no orphaned parts behind; the upload is retried whole.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(error)
            }
        }
    }

    /// A GET URL for `key` that works for `expires_in` from now, signed
    /// locally with this store's credentials (no request is made).
    pub async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<Download, S3Error> {
        self.presign_get_from(key, SystemTime::now(), expires_in)
            .await
    }

    /// Like [`Store::presign_get`], but valid from `start` (tests use a
    /// start in the past to get a URL that has already expired).
    pub async fn presign_get_from(
        &self,
        key: &str,
        start: SystemTime,
        expires_in: Duration,
    ) -> Result<Download, S3Error> {
        confined("presign", key)?;
        let secs = expires_in.as_secs();
        if !(1..=MAX_PRESIGN_SECS).contains(&secs) {
            return Err(S3Error::Expiry { secs });
        }
        let config = PresigningConfig::builder()
            .start_time(start)
            .expires_in(expires_in)
            .build()
            .map_err(|_| S3Error::Expiry { secs })?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| request_error("presign", key, e))?;
        Ok(Download {
            key: key.to_owned(),
            url: request.uri().to_owned(),
            expires_at: DateTime::<Utc>::from(start + expires_in),
        })
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>, S3Error> {
        let io_error = |source| S3Error::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
        let mut parts = Vec::new();
        for number in 1.. {
            let mut chunk = Vec::with_capacity(self.part_bytes as usize);
            (&mut file)
                .take(self.part_bytes)
                .read_to_end(&mut chunk)
                .await
                .map_err(io_error)?;
            if chunk.is_empty() {
                break;
            }
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| request_error("upload part of", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(
            &S3Config::default(),
            Credentials::new("id", "secret", None, None, "test"),
        )
    }

    #[tokio::test]
    async fn keys_outside_the_job_folders_are_refused_before_any_request() {
        let store = store();
        for key in [
            "../other-bucket/x",
            "/etc/passwd",
            "s3://other-bucket/uploads/x.png",
            "uploads/%2e%2e/jobs/x",
            "config/secrets.toml",
        ] {
            let err = store.get_bytes(key).await.unwrap_err();
            assert!(
                matches!(err, S3Error::ForbiddenKey { op: "get", .. }),
                "{key}: {err}"
            );
            assert!(err.to_string().starts_with("refusing S3 get: key"), "{err}");
            assert!(!err.is_transient());
        }
        let err = store
            .put_bytes("uploads/../jobs/x/result.png", Vec::new(), "image/png")
            .await
            .unwrap_err();
        assert!(
            matches!(err, S3Error::ForbiddenKey { op: "put", .. }),
            "{err}"
        );
        let err = store.list("").await.unwrap_err();
        assert!(
            matches!(err, S3Error::ForbiddenKey { op: "list", .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn presigned_urls_name_their_bucket_key_and_expiry() {
        let store = store();
        let download = store
            .presign_get("jobs/abc/result.png", Duration::from_secs(600))
            .await
            .unwrap();
        assert!(
            download
                .url
                .starts_with("http://127.0.0.1:8014/glowline/jobs/abc/result.png?"),
            "{}",
            download.url
        );
        assert!(
            download.url.contains("X-Amz-Expires=600"),
            "{}",
            download.url
        );
        assert!(!download.url.contains("secret"), "{}", download.url);
        let left = download.expires_at - Utc::now();
        assert!((590..=600).contains(&left.num_seconds()), "{left}");

        for secs in [0, MAX_PRESIGN_SECS + 1] {
            let err = store
                .presign_get("jobs/abc/result.png", Duration::from_secs(secs))
                .await
                .unwrap_err();
            assert!(matches!(err, S3Error::Expiry { .. }), "{err}");
        }
        let err = store
            .presign_get("jobs/../uploads/x", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(err, S3Error::ForbiddenKey { op: "presign", .. }),
            "{err}"
        );
    }
}
