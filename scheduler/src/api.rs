//! The HTTP API: submit, get, list and cancel jobs, submit a batch as a JSON
//! Lines manifest and read its status, plus the OpenAPI document of it all
//! at `/openapi.json`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use contract::queue::{JobStatus, SubmitRequest};
use jobs::store::{self, BatchStatus, CancelOutcome, EventRecord, Job, JobFilter};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::config::JobLimits;
use crate::submit::{self, Rejection, SubmitError};

/// Jobs per page of a listing when the request names no limit.
const DEFAULT_PAGE: i64 = 50;
/// Most jobs per page of a listing.
const MAX_PAGE: i64 = 500;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub limits: Arc<JobLimits>,
}

/// The API's routes, with a body limit of `max_body_bytes`.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/batches", post(submit_batch))
        .route("/v1/batches/{id}", get(batch_status))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Glowline scheduler",
        description = "Submit and follow Glow face-editing jobs."
    ),
    paths(
        submit_job,
        list_jobs,
        get_job,
        cancel_job,
        job_events,
        submit_batch,
        batch_status
    ),
    components(schemas(
        SubmitRequestDoc,
        SubmitResponse,
        JobList,
        CancelResponse,
        BatchResponse,
        ErrorBody,
        Job,
        BatchStatus,
        EventRecord,
        store::Batch
    ))
)]
pub struct ApiDoc;

/// A job submission (the same document goes on the submission queue).
#[derive(ToSchema)]
#[schema(as = SubmitRequest)]
#[allow(dead_code)] // Describes `contract::queue::SubmitRequest` for the document only.
struct SubmitRequestDoc {
    /// A job spec (see `contract::spec::JobSpec`); inputs are S3 keys under `uploads/`.
    #[schema(value_type = Object)]
    spec: serde_json::Value,
    /// Resubmitting with the same key returns the same job.
    idempotency_key: Option<String>,
    /// Higher runs first within a lane.
    priority: Option<i16>,
    /// Seconds the job may run; a per-lane default when absent.
    deadline_secs: Option<u32>,
}

/// An error, with the reason naming the bad input.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// An API failure and the status it maps to.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            ApiError::BadRequest(e) => (StatusCode::UNPROCESSABLE_ENTITY, e),
            ApiError::NotFound(e) => (StatusCode::NOT_FOUND, e),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<Rejection> for ApiError {
    fn from(e: Rejection) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Rejected(r) => r.into(),
            SubmitError::Store(s) => s.into(),
        }
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a job or batch id (a UUID)")))
}

/// A recorded submission.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    pub job: Job,
    /// False when the idempotency key matched an earlier job.
    pub created: bool,
}

#[utoipa::path(post, path = "/v1/jobs", request_body = SubmitRequestDoc,
    responses((status = 201, body = SubmitResponse, description = "job created"),
              (status = 200, body = SubmitResponse, description = "idempotency key matched an earlier job"),
              (status = 422, body = ErrorBody)))]
async fn submit_job(State(state): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let request: SubmitRequest = submit::parse(&body)?;
    let (job, created) = submit::submit(&state.pool, &state.limits, &request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SubmitResponse { job, created })).into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    store::get_job(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Filters of a job listing.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only jobs with this status.
    pub status: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs of this batch.
    pub batch_id: Option<Uuid>,
    /// Only jobs created before this instant (the last page's `next_before`).
    pub before: Option<DateTime<Utc>>,
    /// Jobs per page, 1 to 500.
    pub limit: Option<i64>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/v1/jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 422, body = ErrorBody)))]
async fn list_jobs(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is outside 1..={MAX_PAGE}"
        )));
    }
    let filter = JobFilter {
        status,
        kind: query.kind,
        batch_id: query.batch_id,
        created_before: query.before,
        limit,
    };
    let jobs = store::list_jobs(&state.pool, &filter).await?;
    let next_before = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| j.created_at))
        .flatten();
    Ok(Json(JobList { jobs, next_before }))
}

/// What a cancel did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// `cancelled` (it was queued), `requested` (running; stops at the next
    /// frame) or `already_finished`.
    pub outcome: String,
    pub job: Job,
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = Uuid, Path)),
    responses((status = 200, body = CancelResponse), (status = 404, body = ErrorBody)))]
async fn cancel_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CancelResponse>, ApiError> {
    let id = parse_id(&id)?;
    let outcome = match store::cancel_job(&state.pool, id).await? {
        CancelOutcome::NotFound => return Err(ApiError::NotFound(format!("no job {id}"))),
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Requested => "requested",
        CancelOutcome::AlreadyFinished(_) => "already_finished",
    };
    tracing::info!(job_id = %id, outcome, "cancel");
    let job = store::get_job(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(CancelResponse {
        outcome: outcome.to_owned(),
        job,
    }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<EventRecord>)))]
async fn job_events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EventRecord>>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(store::job_events(&state.pool, id).await?))
}

/// Options of a batch submission.
#[derive(Debug, Deserialize, IntoParams)]
pub struct BatchQuery {
    /// A name for the batch, shown in its status.
    pub label: Option<String>,
}

/// A recorded batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub batch_id: Uuid,
    /// The batch's jobs in manifest order.
    pub job_ids: Vec<Uuid>,
}

#[utoipa::path(post, path = "/v1/batches", params(BatchQuery),
    request_body(content = String, content_type = "application/x-ndjson",
                 description = "one SubmitRequest per line"),
    responses((status = 201, body = BatchResponse), (status = 422, body = ErrorBody)))]
async fn submit_batch(
    State(state): State<ApiState>,
    Query(query): Query<BatchQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let manifest = std::str::from_utf8(&body)
        .map_err(|e| ApiError::BadRequest(format!("batch manifest is not UTF-8: {e}")))?;
    let batch_id = Uuid::now_v7();
    let jobs = submit::validate_manifest(manifest, &state.limits, batch_id)?;
    let (_, recorded) =
        store::insert_batch(&state.pool, batch_id, query.label.as_deref(), &jobs).await?;
    tracing::info!(batch_id = %batch_id, jobs = recorded.len(), "batch submitted");
    Ok((
        StatusCode::CREATED,
        Json(BatchResponse {
            batch_id,
            job_ids: recorded.into_iter().map(|(job, _)| job.id).collect(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/batches/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = BatchStatus), (status = 404, body = ErrorBody)))]
async fn batch_status(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BatchStatus>, ApiError> {
    let id = parse_id(&id)?;
    store::batch_status(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no batch {id}")))
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn healthz() -> &'static str {
    "ok"
}
