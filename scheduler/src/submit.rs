//! Validating a submission into a job, the same way for HTTP and for the
//! submission queue, and recording it with its dispatch in one transaction.

use contract::queue::{check_input_key, KeyError, Lane, SubmitRequest};
use contract::spec::JobSpec;
use jobs::store::{self, Job, NewJob, StoreError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::JobLimits;

/// Longest idempotency key; longer ones are surely not keys.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Longest batch label: a name to recognise a batch by, not a document.
pub const MAX_LABEL_LEN: usize = 200;

/// Why a submission was refused. Each message names the bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("submission is not valid JSON of the submission shape: {0}")]
    Malformed(String),
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("invalid input: {0}")]
    InputKey(#[from] KeyError),
    #[error("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable characters")]
    IdempotencyKey,
    #[error("deadline_secs {given} is outside 1..={max}")]
    Deadline { given: u32, max: u32 },
    #[error("batch has {given} jobs; at most {max} are allowed")]
    BatchTooLarge { given: usize, max: usize },
    #[error("batch manifest line {line}: {reason}")]
    ManifestLine { line: usize, reason: Box<Rejection> },
    #[error("batch manifest has no jobs")]
    EmptyBatch,
    #[error("submission is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("label must be 1 to {MAX_LABEL_LEN} printable characters")]
    Label,
}

/// Parses a submission from raw bytes (a queue message body).
pub fn parse(body: &[u8]) -> Result<SubmitRequest, Rejection> {
    // serde would also read the struct from an array of its fields in
    // order; a submission is an object, and an array is told so plainly.
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err(Rejection::Malformed(
            "expected a JSON object, found an array".to_owned(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))
}

/// Parses a submission-queue message, refusing one over the size limit
/// before reading it.
pub fn parse_message(body: &[u8], limits: &JobLimits) -> Result<SubmitRequest, Rejection> {
    if body.len() > limits.max_message_bytes {
        return Err(Rejection::TooLarge {
            size: body.len(),
            max: limits.max_message_bytes,
        });
    }
    parse(body)
}

/// Checks a batch label: printable and short.
pub fn check_label(label: &str) -> Result<(), Rejection> {
    if label.is_empty()
        || label.chars().count() > MAX_LABEL_LEN
        || label.chars().any(char::is_control)
    {
        return Err(Rejection::Label);
    }
    Ok(())
}

/// Checks `request` against the spec's rules and `limits`, and turns it into
/// a job under `batch_id`.
pub fn validate(
    request: &SubmitRequest,
    limits: &JobLimits,
    batch_id: Option<Uuid>,
) -> Result<NewJob, Rejection> {
    let spec = JobSpec::from_json(&request.spec.to_string())
        .map_err(|e| Rejection::Spec(e.to_string()))?;
    for key in spec.inputs() {
        check_input_key(key)?;
    }

    if let Some(key) = &request.idempotency_key {
        if key.is_empty()
            || key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN
            || key.chars().any(char::is_control)
        {
            return Err(Rejection::IdempotencyKey);
        }
    }

    let lane = if spec.operation.is_animation() {
        Lane::Long
    } else {
        Lane::Interactive
    };
    let deadline = match request.deadline_secs {
        Some(given) if given == 0 || given > limits.max_deadline_secs => {
            return Err(Rejection::Deadline {
                given,
                max: limits.max_deadline_secs,
            })
        }
        Some(given) => given,
        None => match lane {
            Lane::Interactive => limits.interactive_deadline_secs,
            Lane::Long => limits.long_deadline_secs,
        },
    };

    Ok(NewJob {
        id: Uuid::now_v7(),
        kind: spec.kind().to_owned(),
        spec: serde_json::to_value(&spec).expect("a job spec always serializes"),
        lane,
        priority: request.priority,
        max_attempts: limits.max_attempts,
        deadline_secs: deadline as i32,
        batch_id,
        idempotency_key: request.idempotency_key.clone(),
    })
}

/// Why a submission did not produce a job.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates and records one submission; returns the job and whether it is
/// new (false when its idempotency key matched an earlier job).
pub async fn submit(
    pool: &PgPool,
    limits: &JobLimits,
    request: &SubmitRequest,
) -> Result<(Job, bool), SubmitError> {
    let job = validate(request, limits, None)?;
    let (job, created) = store::insert_job(pool, &job).await?;
    if created {
        tracing::info!(job_id = %job.id, kind = %job.kind, lane = %job.lane, "job submitted");
    }
    Ok((job, created))
}

/// Parses a JSON Lines manifest (one submission per non-blank line) into
/// jobs of a new batch. Any bad line rejects the whole manifest.
pub fn validate_manifest(
    manifest: &str,
    limits: &JobLimits,
    batch_id: Uuid,
) -> Result<Vec<NewJob>, Rejection> {
    let mut jobs = Vec::new();
    for (index, line) in manifest.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_error = |reason| Rejection::ManifestLine {
            line: index + 1,
            reason: Box::new(reason),
        };
        if jobs.len() == limits.max_batch_jobs {
            return Err(Rejection::BatchTooLarge {
                given: manifest.lines().filter(|l| !l.trim().is_empty()).count(),
                max: limits.max_batch_jobs,
            });
        }
        let request = parse(line.as_bytes()).map_err(line_error)?;
        jobs.push(validate(&request, limits, Some(batch_id)).map_err(line_error)?);
    }
    if jobs.is_empty() {
        return Err(Rejection::EmptyBatch);
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edit(input: &str) -> SubmitRequest {
        SubmitRequest {
            spec: json!({
                "version": 1,
                "operation": { "kind": "edit", "input": input, "attributes": { "smiling": 1.0 } }
            }),
            idempotency_key: None,
            priority: 0,
            deadline_secs: None,
        }
    }

    #[test]
    fn an_edit_goes_to_the_interactive_lane() {
        let job = validate(&edit("uploads/a/face.png"), &JobLimits::default(), None).unwrap();
        assert_eq!(job.kind, "edit");
        assert_eq!(job.lane, Lane::Interactive);
        assert_eq!(job.deadline_secs, 300);
    }

    #[test]
    fn inputs_outside_the_upload_prefix_are_rejected() {
        for key in ["jobs/x/out.png", "uploads/../jobs/x", "/etc/passwd"] {
            let err = validate(&edit(key), &JobLimits::default(), None).unwrap_err();
            assert!(matches!(err, Rejection::InputKey { .. }), "{key}: {err}");
        }
    }

    #[test]
    fn wrong_spec_version_is_named() {
        let mut request = edit("uploads/a.png");
        request.spec["version"] = json!(99);
        let err = validate(&request, &JobLimits::default(), None).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[test]
    fn a_bad_manifest_line_is_reported_by_number() {
        let good = serde_json::to_string(&edit("uploads/a.png")).unwrap();
        let manifest = format!("{good}\n\n{good}\nnot json\n");
        let err = validate_manifest(&manifest, &JobLimits::default(), Uuid::nil()).unwrap_err();
        assert!(
            matches!(err, Rejection::ManifestLine { line: 4, .. }),
            "{err}"
        );
    }
}
