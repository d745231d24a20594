//! The HTTP API: submit, get, list and cancel jobs, submit a batch as a JSON
//! Lines manifest and read its status, plus the OpenAPI document of it all
//! at `/openapi.json`.
//!
//! Every `/v1` route needs a bearer token and counts against its client's
//! rate limit; every route bounds the size of the request's headers and
//! body ([`crate::guard`]). A job's status carries presigned URLs for its
//! outputs, so clients download without S3 credentials of their own. Every
//! error, the guard's included, is a JSON [`ErrorBody`] naming the problem.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use contract::queue::{JobStatus, SubmitRequest};
use jobs::s3::{Download, S3Error, Store, MAX_PRESIGN_SECS};
use jobs::store::{self, BatchStatus, CancelOutcome, EventRecord, Job, JobFilter};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use uuid::Uuid;

use crate::config::JobLimits;
use crate::guard::{self, Guard};
use crate::metrics::{SchedulerMetrics, Source};
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
    pub metrics: Arc<SchedulerMetrics>,
    /// Token, rate and size checks.
    pub guard: Arc<Guard>,
    /// Signs the download URLs of outputs.
    pub downloads: Arc<Downloads>,
}

/// Presigned download URLs for job outputs.
#[derive(Debug)]
pub struct Downloads {
    store: Store,
    expiry: Duration,
}

impl Downloads {
    /// URLs signed for `store`'s bucket that work for `expiry`.
    pub fn new(store: Store, expiry: Duration) -> Result<Self, S3Error> {
        let secs = expiry.as_secs();
        if !(1..=MAX_PRESIGN_SECS).contains(&secs) {
            return Err(S3Error::Expiry { secs });
        }
        Ok(Self { store, expiry })
    }

    async fn links(&self, job: &Job) -> Result<Vec<Download>, S3Error> {
        let mut links = Vec::with_capacity(job.output_keys.len());
        for key in &job.output_keys {
            links.push(self.store.presign_get(key, self.expiry).await?);
        }
        Ok(links)
    }
}

/// The API's routes. `/v1` routes sit behind the rate limit and the token
/// (the rate limit first, so that guessing tokens is throttled too); the
/// OpenAPI document is public. Every route bounds headers and body.
pub fn router(state: ApiState) -> Router {
    let guard = state.guard.clone();
    let protected = Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/batches", post(submit_batch))
        .route("/v1/batches/{id}", get(batch_status))
        .route_layer(from_fn_with_state(guard.clone(), guard::require_token))
        .route_layer(from_fn_with_state(guard.clone(), guard::limit_rate));
    Router::new()
        .merge(protected)
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(guard.max_body_bytes))
        .layer(from_fn_with_state(guard, guard::limit_headers))
        .with_state(state)
}

/// Declares the bearer token in the OpenAPI document.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Glowline scheduler",
        description = "Submit and follow Glow face-editing jobs. Every /v1 route \
                       needs `Authorization: Bearer <token>`."
    ),
    modifiers(&BearerToken),
    security(("bearer" = [])),
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
        JobView,
        Download,
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
    TooLarge(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            ApiError::BadRequest(e) => (StatusCode::UNPROCESSABLE_ENTITY, e),
            ApiError::NotFound(e) => (StatusCode::NOT_FOUND, e),
            ApiError::TooLarge(e) => (StatusCode::PAYLOAD_TOO_LARGE, e),
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

/// The request body, or why it could not be read.
fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "the request body is larger than the {limit} bytes accepted"
            ))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {rejection}"))
        }
    })
}

/// The query string's parameters, or which one is wrong.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
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
async fn submit_job(
    State(state): State<ApiState>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body(request, state.guard.max_body_bytes)?;
    let request: SubmitRequest =
        submit::parse(&body).inspect_err(|_| state.metrics.rejected(Source::Http))?;
    let (job, created) = submit::submit(&state.pool, &state.limits, &request)
        .await
        .inspect_err(|e| {
            if matches!(e, SubmitError::Rejected(_)) {
                state.metrics.rejected(Source::Http)
            }
        })?;
    let status = if created {
        state.metrics.submitted(&job.kind, Source::Http);
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SubmitResponse { job, created })).into_response())
}

/// A job, with a download URL for each of its outputs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// One presigned GET URL per output key, in the same order; each
    /// expires (`expires_at`), after which the job's status gives new ones.
    pub outputs: Vec<Download>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let job = store::get_job(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let outputs = state
        .downloads
        .links(&job)
        .await
        .map_err(|e| ApiError::Internal(format!("signing the outputs of job {id}: {e}")))?;
    Ok(Json(JobView { job, outputs }))
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
    request: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let query = query(request)?;
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
    if outcome == "cancelled" {
        state
            .metrics
            .outcomes
            .finished(&job.kind, JobStatus::Cancelled, None);
    }
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
    options: Result<Query<BatchQuery>, QueryRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let query = query(options)?;
    if let Some(label) = &query.label {
        submit::check_label(label)?;
    }
    let body = body(request, state.guard.max_body_bytes)?;
    let manifest = std::str::from_utf8(&body)
        .map_err(|e| ApiError::BadRequest(format!("batch manifest is not UTF-8: {e}")))?;
    let batch_id = Uuid::now_v7();
    let jobs = submit::validate_manifest(manifest, &state.limits, batch_id)
        .inspect_err(|_| state.metrics.rejected(Source::Batch))?;
    let (_, recorded) =
        store::insert_batch(&state.pool, batch_id, query.label.as_deref(), &jobs).await?;
    for (job, _) in recorded.iter().filter(|(_, created)| *created) {
        state.metrics.submitted(&job.kind, Source::Batch);
    }
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
