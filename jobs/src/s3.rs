//! S3 transfers for inputs and outputs: a client built from [`S3Config`]
//! (endpoint, region, path-style addressing, checksum mode), downloads to
//! local files, and uploads that switch to multipart for large files.
//!
//! Keys are never taken from users as-is: inputs live under
//! [`contract::queue::INPUT_PREFIX`] and outputs under a job's own prefix
//! ([`contract::queue::output_prefix`]); see [`valid_input_key`].

use std::path::Path;

use aws_sdk_s3::config::http::HttpResponse;
pub use aws_sdk_s3::config::Credentials;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use tokio::io::AsyncReadExt;

use crate::config::{ChecksumMode, S3Config};

/// Why an S3 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 object {key:?} does not exist")]
    NotFound { key: String },
    #[error("S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    NoCredentials,
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

/// Whether `key` is an input key a spec may name: under the input prefix,
/// relative, without `..` or empty segments.
pub fn valid_input_key(key: &str) -> bool {
    key.starts_with(contract::queue::INPUT_PREFIX)
        && key.len() <= 1024
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        && !key.chars().any(|c| c.is_control() || c == '\\')
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

    #[test]
    fn input_keys_stay_under_the_input_prefix() {
        assert!(valid_input_key("uploads/abc/face.png"));
        assert!(!valid_input_key("jobs/abc/out.png"));
        assert!(!valid_input_key("uploads/../jobs/x"));
        assert!(!valid_input_key("uploads//x"));
        assert!(!valid_input_key("/uploads/x"));
        assert!(!valid_input_key("uploads/a\\b"));
    }
}
