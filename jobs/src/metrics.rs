//! Prometheus metrics shared by the scheduler and the workers.
//!
//! Each binary builds one [`Registry`] with [`registry`], which already
//! carries `glowline_build_info`, and registers its own families on it. The
//! families that both sides update live here: job outcomes
//! ([`JobOutcomes`]), broker connections ([`BrokerLinks`]) and S3 request
//! timing ([`S3Metrics`]). [`encode`] writes a scrape in OpenMetrics, or in
//! Prometheus' older text format for clients that ask for it (`promtool`).
//!
//! Names follow Prometheus' conventions: the `glowline_` prefix, base units
//! (seconds), `_total` on counters. Every label takes a few known values
//! (job kind, lane, outcome, reason, stage, S3 operation); job ids never
//! become labels, since each id would start a time series of its own.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use contract::queue::JobStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every Glowline metric name.
pub const PREFIX: &str = "glowline";

/// Upper bounds of the job, stage and queue-wait buckets, in seconds: an
/// edit takes a fraction of a second on a GPU, a long video up to the long
/// lane's two-hour default deadline.
pub const JOB_SECONDS_BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0,
];

/// Upper bounds of the S3 request buckets, in seconds: a small object on a
/// nearby store answers in milliseconds, an 8 MiB part over a slow link in
/// seconds.
pub const S3_SECONDS_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram family whose histograms share one set of buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A gauge holding a fraction (seconds, for instance).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A histogram with [`JOB_SECONDS_BUCKETS`].
pub fn job_seconds_histogram() -> Histogram {
    Histogram::new(JOB_SECONDS_BUCKETS)
}

fn s3_seconds_histogram() -> Histogram {
    Histogram::new(S3_SECONDS_BUCKETS)
}

/// Labels of `glowline_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: &'static str,
    version: &'static str,
}

/// A registry for `service` (`scheduler` or `worker`) in which every metric
/// is named `glowline_...`, holding `glowline_build_info`.
pub fn registry(service: &'static str) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        service,
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register(
        "build_info",
        "The running build: always 1, labelled with the service and its version",
        info,
    );
    registry
}

/// The `kind` label of a job kind: the kind itself when the job contract
/// knows it, else `other`, so that the label can never take unbounded
/// values.
pub fn kind_label(kind: &str) -> &'static str {
    contract::spec::KINDS
        .iter()
        .copied()
        .find(|known| *known == kind)
        .unwrap_or("other")
}

/// A `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// A `lane` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    reason: &'static str,
}

/// Why a job failed (or timed out), as a label: a small fixed set, unlike
/// the job's error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The spec could not be read.
    InvalidSpec,
    /// An input is missing, too large, not an image, or shows no face.
    Input,
    /// S3 refused a transfer, or stayed unreachable past every retry.
    Storage,
    /// The model, the renderer or the video encoder failed.
    Render,
    /// The job ran past its deadline.
    Deadline,
    /// Its worker was lost on the job's last attempt.
    LeaseExpired,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidSpec => "invalid_spec",
            FailureReason::Input => "input",
            FailureReason::Storage => "storage",
            FailureReason::Render => "render",
            FailureReason::Deadline => "deadline",
            FailureReason::LeaseExpired => "lease_expired",
        }
    }
}

/// Why a job went back to its queue for another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Its worker was lost (the lease expired) and the reaper queued it.
    LeaseExpired,
    /// S3 stayed unreachable past the worker's retries.
    Transient,
    /// Its worker shut down before it finished and handed it back.
    Shutdown,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::LeaseExpired => "lease_expired",
            RetryReason::Transient => "transient",
            RetryReason::Shutdown => "shutdown",
        }
    }
}

/// How jobs end and how often they are retried. Workers count the jobs
/// they finish; the scheduler counts the ones it ends itself (a queued job
/// cancelled, a job whose last worker was lost), so the sum over all
/// processes is every job.
#[derive(Clone, Debug)]
pub struct JobOutcomes {
    finished: Family<FinishedLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
}

impl JobOutcomes {
    /// Registers `glowline_jobs_finished_total`,
    /// `glowline_job_failures_total` and `glowline_job_retries_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let outcomes = Self {
            finished: Family::default(),
            failures: Family::default(),
            retries: Family::default(),
        };
        registry.register(
            "jobs_finished",
            "Jobs that reached a final status, by kind and outcome (the status)",
            outcomes.finished.clone(),
        );
        registry.register(
            "job_failures",
            "Jobs that failed or timed out, by kind and reason",
            outcomes.failures.clone(),
        );
        registry.register(
            "job_retries",
            "Attempts that ended without an outcome and sent their job back to its queue, by reason",
            outcomes.retries.clone(),
        );
        outcomes
    }

    /// Counts a job of `kind` that ended with `status`; `reason` says why
    /// when it failed or timed out.
    pub fn finished(&self, kind: &str, status: JobStatus, reason: Option<FailureReason>) {
        let kind = kind_label(kind);
        self.finished
            .get_or_create(&FinishedLabels {
                kind,
                outcome: status.as_str(),
            })
            .inc();
        if let Some(reason) = reason {
            self.failures
                .get_or_create(&FailureLabels {
                    kind,
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    /// Counts a job sent back to its queue.
    pub fn retried(&self, reason: RetryReason) {
        self.retries
            .get_or_create(&RetryLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    link: &'static str,
}

/// Whether each broker connection of a process is up:
/// `glowline_broker_connected{link}` is 1 or 0. A process is ready only
/// when all its links are up, since each one carries work.
#[derive(Clone, Debug)]
pub struct BrokerLinks {
    connected: Family<LinkLabels, Gauge>,
    links: Arc<[&'static str]>,
}

impl BrokerLinks {
    /// Registers the gauge with every link in `links` down.
    pub fn register(registry: &mut Registry, links: &[&'static str]) -> Self {
        let connected = Family::<LinkLabels, Gauge>::default();
        for &link in links {
            connected.get_or_create(&LinkLabels { link }).set(0);
        }
        registry.register(
            "broker_connected",
            "Whether this process's broker connection for a link is up (1) or down (0)",
            connected.clone(),
        );
        Self {
            connected,
            links: links.into(),
        }
    }

    /// Records whether `link` is up.
    pub fn set(&self, link: &'static str, up: bool) {
        self.connected
            .get_or_create(&LinkLabels { link })
            .set(i64::from(up));
    }

    /// The links that are down, in registration order.
    pub fn down(&self) -> Vec<&'static str> {
        self.links
            .iter()
            .copied()
            .filter(|&link| self.connected.get_or_create(&LinkLabels { link }).get() == 0)
            .collect()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3Labels {
    operation: String,
    status: &'static str,
}

/// Time of every S3 request: `glowline_s3_request_duration_seconds`, by
/// SDK operation (`GetObject`, `PutObject`, `UploadPart`, ...) and status
/// class (`2xx`, `4xx`, `5xx`, or `error` when no response came).
#[derive(Clone, Debug)]
pub struct S3Metrics {
    requests: HistogramFamily<S3Labels>,
}

impl S3Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests: HistogramFamily<S3Labels> =
            Family::new_with_constructor(s3_seconds_histogram);
        registry.register_with_unit(
            "s3_request_duration",
            "Time from sending an S3 request to its response (each retry counts as a request), by operation and status class",
            Unit::Seconds,
            requests.clone(),
        );
        Self { requests }
    }

    /// An interceptor for aws-sdk-s3 that records every request attempt.
    pub fn interceptor(&self) -> S3Timer {
        S3Timer {
            requests: self.requests.clone(),
        }
    }
}

/// Times S3 request attempts for [`S3Metrics`]; install it with
/// [`crate::s3::Store::with_interceptor`].
#[derive(Debug)]
pub struct S3Timer {
    requests: HistogramFamily<S3Labels>,
}

/// When the current attempt was sent, kept in the SDK's per-request state.
#[derive(Debug, Clone)]
struct AttemptSent(Instant);

impl Storable for AttemptSent {
    type Storer = StoreReplace<Self>;
}

impl Intercept for S3Timer {
    fn name(&self) -> &'static str {
        "GlowlineS3Timer"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptSent(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // An attempt that failed before it was sent (signing, say) has no
        // transmit time to report.
        let Some(AttemptSent(sent)) = cfg.load::<AttemptSent>().cloned() else {
            return Ok(());
        };
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", Metadata::name)
            .to_owned();
        let status = match context.response() {
            Some(response) => status_class(response.status().as_u16()),
            None => "error",
        };
        self.requests
            .get_or_create(&S3Labels { operation, status })
            .observe(sent.elapsed().as_secs_f64());
        Ok(())
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The exposition formats a scrape may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, which Prometheus' scraper asks for first.
    OpenMetrics,
    /// Prometheus' text format 0.0.4, for older clients such as `promtool`.
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Every metric of `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> String {
    let mut openmetrics = String::new();
    prometheus_client::encoding::text::encode(&mut openmetrics, registry)
        .expect("writing to a String cannot fail");
    match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => openmetrics_to_text(&openmetrics),
    }
}

/// Rewrites an OpenMetrics exposition of counters, gauges and histograms
/// (what Glowline registers) in text format 0.0.4. The two differ in three
/// ways here: a counter's family is named without `_total` in OpenMetrics
/// but with it in 0.0.4 (where a family must be named like its samples),
/// 0.0.4 has no `# UNIT` lines, and no `# EOF` marker.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();

    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|keyword| Some((keyword, line.strip_prefix(keyword)?)));
        if let Some((keyword, rest)) = descriptor {
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(name) {
                let _ = writeln!(text, "{keyword}{name}_total{}", &rest[name.len()..]);
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_text_format() {
        let mut registry = registry("test");
        let outcomes = JobOutcomes::register(&mut registry);
        outcomes.finished("edit", JobStatus::Failed, Some(FailureReason::Input));
        // A family with no samples yet is left out of the exposition.
        let s3 = S3Metrics::register(&mut registry);
        s3.requests
            .get_or_create(&S3Labels {
                operation: "GetObject".to_owned(),
                status: "2xx",
            })
            .observe(0.01);

        let openmetrics = encode(&registry, Format::OpenMetrics);
        assert!(openmetrics.contains("# TYPE glowline_jobs_finished counter"));
        assert!(openmetrics.ends_with("# EOF\n"));

        let text = encode(&registry, Format::Text);
        assert!(text.contains("# TYPE glowline_jobs_finished_total counter\n"));
        assert!(text.contains("# HELP glowline_jobs_finished_total Jobs"));
        assert!(text.contains("glowline_jobs_finished_total{kind=\"edit\",outcome=\"failed\"} 1\n"));
        assert!(text.contains("glowline_job_failures_total{kind=\"edit\",reason=\"input\"} 1\n"));
        assert!(text.contains("# TYPE glowline_s3_request_duration_seconds histogram\n"));
        assert!(text.contains(
            "glowline_s3_request_duration_seconds_count{operation=\"GetObject\",status=\"2xx\"} 1\n"
        ));
        assert!(text.contains("glowline_build_info{service=\"test\""));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn unknown_kinds_share_one_label() {
        assert_eq!(kind_label("nine_way_morph"), "nine_way_morph");
        assert_eq!(kind_label("job-1234"), "other");
    }

    #[test]
    fn broker_links_start_down() {
        let mut registry = registry("test");
        let links = BrokerLinks::register(&mut registry, &["submit", "relay"]);
        assert_eq!(links.down(), ["submit", "relay"]);
        links.set("relay", true);
        assert_eq!(links.down(), ["submit"]);
    }

    #[test]
    fn scrapers_get_openmetrics_only_when_they_ask() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }
}
