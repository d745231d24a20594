//! The operational endpoints every Glowline process serves:
//!
//! - `/healthz`: the process runs and answers (a liveness probe);
//! - `/readyz`: the database, every broker connection and, for processes
//!   that use it, the S3 bucket are reachable (a readiness probe), with a
//!   JSON body naming what is not;
//! - `/metrics`: the process's Prometheus metrics (see [`crate::metrics`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sqlx::PgPool;

use crate::metrics::{self, BrokerLinks, Format};
use crate::s3::Store;

/// How long one readiness check may take before it counts as failed: a
/// healthy database or store answers in milliseconds, and a probe that
/// hangs must not outlast the orchestrator's probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Work to do before each scrape, such as sampling gauges from the
/// database.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the endpoints serve and check.
#[derive(Clone)]
pub struct Ops {
    /// The process's metrics.
    pub registry: Arc<Registry>,
    /// The job store, checked with a trivial query.
    pub pool: PgPool,
    /// The broker connections, all of which must be up.
    pub broker: BrokerLinks,
    /// The bucket, when the process uses S3.
    pub store: Option<Store>,
    /// Run before every scrape.
    pub refresh: Option<Refresh>,
}

/// The routes `/healthz`, `/readyz` and `/metrics`.
pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(Arc::new(ops))
}

async fn healthz() -> &'static str {
    "ok"
}

/// The outcome of each readiness check: `ok` or what went wrong.
#[derive(Debug, Serialize)]
struct Readiness {
    database: String,
    broker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    s3: Option<String>,
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let database = within_timeout(async {
        sqlx::query("SELECT 1")
            .execute(&ops.pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let s3 = async {
        match &ops.store {
            Some(store) => {
                Some(within_timeout(async { store.check().await.map_err(|e| e.to_string()) }).await)
            }
            None => None,
        }
    };
    let (database, s3) = tokio::join!(database, s3);
    let down = ops.broker.down();
    let broker = if down.is_empty() {
        Ok(())
    } else {
        Err(format!("not connected: {}", down.join(", ")))
    };

    let ready = database.is_ok() && broker.is_ok() && s3.as_ref().is_none_or(Result::is_ok);
    let body = Readiness {
        database: describe(database),
        broker: describe(broker),
        s3: s3.map(describe),
    };
    if !ready {
        tracing::debug!(?body, "not ready");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn within_timeout(check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

fn describe(result: Result<(), String>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(error) => error,
    }
}

async fn scrape(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Response {
    if let Some(refresh) = &ops.refresh {
        refresh().await;
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    let body = metrics::encode(&ops.registry, format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}
