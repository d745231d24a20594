//! The scheduler's Prometheus metrics: submissions by kind and path, the
//! outbox's backlog and publishing, the HTTP API's requests, and the job
//! outcomes the scheduler decides itself (see `jobs::metrics`). They are
//! served at `/metrics` beside the API.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use jobs::metrics::{
    job_seconds_histogram, kind_label, BrokerLinks, FloatGauge, HistogramFamily, JobOutcomes,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use sqlx::PgPool;

/// The broker link of the submission-queue consumer.
pub const SUBMIT_LINK: &str = "submit";
/// The broker link of the outbox relay.
pub const RELAY_LINK: &str = "relay";

/// Which way a submission came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/jobs`.
    Http,
    /// A batch manifest, `POST /v1/batches`.
    Batch,
    /// The submission queue.
    Queue,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Batch => "batch",
            Source::Queue => "queue",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmitLabels {
    kind: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// Every metric the scheduler keeps.
#[derive(Debug)]
pub struct SchedulerMetrics {
    submitted: Family<SubmitLabels, Counter>,
    rejected: Family<SourceLabels, Counter>,
    /// Jobs the scheduler ends or requeues itself.
    pub outcomes: JobOutcomes,
    outbox_backlog: Gauge,
    outbox_oldest_age: FloatGauge,
    outbox_published: Counter,
    outbox_publish_failures: Counter,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabels>,
    /// The consumer's and the relay's broker connections.
    pub broker: BrokerLinks,
}

impl SchedulerMetrics {
    /// Registers every scheduler metric on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            submitted: Family::default(),
            rejected: Family::default(),
            outcomes: JobOutcomes::register(registry),
            outbox_backlog: Gauge::default(),
            outbox_oldest_age: FloatGauge::default(),
            outbox_published: Counter::default(),
            outbox_publish_failures: Counter::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(job_seconds_histogram),
            broker: BrokerLinks::register(registry, &[SUBMIT_LINK, RELAY_LINK]),
        };
        registry.register(
            "jobs_submitted",
            "Jobs recorded, by kind and the way they came in (resubmissions with a known idempotency key excluded)",
            metrics.submitted.clone(),
        );
        registry.register(
            "submissions_rejected",
            "Submissions refused as invalid, by the way they came in",
            metrics.rejected.clone(),
        );
        registry.register(
            "outbox_backlog_messages",
            "Outbox messages not yet confirmed by the broker, sampled at scrape time",
            metrics.outbox_backlog.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest unsent outbox message (0 when there is none), sampled at scrape time",
            Unit::Seconds,
            metrics.outbox_oldest_age.clone(),
        );
        registry.register(
            "outbox_published",
            "Outbox messages the broker confirmed",
            metrics.outbox_published.clone(),
        );
        registry.register(
            "outbox_publish_failures",
            "Outbox publishes that failed and wait for another try",
            metrics.outbox_publish_failures.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status code",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route template",
            Unit::Seconds,
            metrics.request_seconds.clone(),
        );
        metrics
    }

    /// Counts a new job of `kind` from `source`.
    pub fn submitted(&self, kind: &str, source: Source) {
        self.submitted
            .get_or_create(&SubmitLabels {
                kind: kind_label(kind),
                source: source.as_str(),
            })
            .inc();
    }

    /// Counts a refused submission from `source`.
    pub fn rejected(&self, source: Source) {
        self.rejected
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .inc();
    }

    /// Counts outbox messages the broker confirmed.
    pub fn published(&self, messages: usize) {
        self.outbox_published.inc_by(messages as u64);
    }

    /// Counts a failed outbox publish.
    pub fn publish_failed(&self) {
        self.outbox_publish_failures.inc();
    }

    /// Samples the outbox backlog into its gauges. A failure keeps the last
    /// sample: the database being down shows in readiness instead.
    pub async fn sample_outbox(&self, pool: &PgPool) {
        match jobs::store::outbox_backlog(pool).await {
            Ok(backlog) => {
                self.outbox_backlog.set(backlog.messages);
                self.outbox_oldest_age.set(backlog.oldest_age_secs);
            }
            Err(error) => tracing::warn!(%error, "cannot sample the outbox backlog"),
        }
    }
}

/// Middleware counting and timing every request by its route template
/// (`/v1/jobs/{id}`, never the id itself); requests that match no route
/// share the template `unmatched`.
pub async fn track_http(
    State(metrics): State<Arc<SchedulerMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method()).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;

    metrics
        .request_seconds
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The `method` label: the standard methods by name, anything else (which
/// a client may make up freely) as `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    KNOWN
        .iter()
        .copied()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}
