//! The worker's Prometheus metrics, served with `/healthz` and `/readyz`
//! on the worker's own HTTP listener (`[http] listen`): how long jobs wait
//! and run, stage by stage, how busy the render slots are, frames rendered,
//! the model's load time and device, S3 request times and the job outcomes
//! this worker records (see `jobs::metrics`).

use contract::queue::Lane;
use glow::render::Timings;
use jobs::metrics::{
    job_seconds_histogram, kind_label, BrokerLinks, FloatGauge, HistogramFamily, JobOutcomes,
    KindLabels, LaneLabels, S3Metrics,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// The worker's one broker link: the consumers of its lanes.
pub const WORK_LINK: &str = "work";

/// A part of a job's run, as the `stage` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Fetching the inputs from S3.
    Download,
    /// Reading, aligning and encoding the inputs (or drawing samples).
    Encode,
    /// Decoding frames, laying them out and writing PNGs.
    Render,
    /// Writing the GIF and the MP4.
    Video,
    /// Storing the outputs in S3.
    Upload,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Encode => "encode",
            Stage::Render => "render",
            Stage::Video => "video",
            Stage::Upload => "upload",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    lane: &'static str,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: &'static str,
}

/// Every metric a worker keeps.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Jobs this worker finished or sent back.
    pub outcomes: JobOutcomes,
    /// The consumers' broker connection.
    pub broker: BrokerLinks,
    /// Time of each S3 request.
    pub s3: S3Metrics,
    stage_seconds: HistogramFamily<StageLabels>,
    job_seconds: HistogramFamily<KindLabels>,
    queue_wait: HistogramFamily<LaneLabels>,
    in_progress: Family<LaneLabels, Gauge>,
    slots: Family<LaneLabels, Gauge>,
    frames: Family<KindLabels, Counter>,
    model_load: FloatGauge,
    device: Family<DeviceLabels, Gauge>,
}

impl WorkerMetrics {
    /// Registers every worker metric on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            outcomes: JobOutcomes::register(registry),
            broker: BrokerLinks::register(registry, &[WORK_LINK]),
            s3: S3Metrics::register(registry),
            stage_seconds: Family::new_with_constructor(job_seconds_histogram),
            job_seconds: Family::new_with_constructor(job_seconds_histogram),
            queue_wait: Family::new_with_constructor(job_seconds_histogram),
            in_progress: Family::default(),
            slots: Family::default(),
            frames: Family::default(),
            model_load: FloatGauge::default(),
            device: Family::default(),
        };
        registry.register_with_unit(
            "job_stage_duration",
            "Time jobs spent in each stage of a run (download, encode, render, video, upload), by lane",
            Unit::Seconds,
            metrics.stage_seconds.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "Time from claiming a job to recording its success, by kind",
            Unit::Seconds,
            metrics.job_seconds.clone(),
        );
        registry.register_with_unit(
            "job_queue_wait",
            "Time jobs waited in their queue before a worker claimed them, by lane",
            Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        registry.register(
            "jobs_in_progress",
            "Jobs this worker is running, by lane",
            metrics.in_progress.clone(),
        );
        registry.register(
            "worker_slots",
            "Render slots of this worker, by lane: jobs in progress over slots is its utilization",
            metrics.slots.clone(),
        );
        registry.register(
            "frames_rendered",
            "Distinct frames (or stills) rendered, by job kind",
            metrics.frames.clone(),
        );
        registry.register_with_unit(
            "model_load_duration",
            "Time this worker took to load its model copies at start",
            Unit::Seconds,
            metrics.model_load.clone(),
        );
        registry.register(
            "worker_device_info",
            "Where this worker renders: always 1, labelled cpu or cuda",
            metrics.device.clone(),
        );
        metrics
    }

    /// Records the model's load time and device, and the lanes' slots.
    pub fn started(&self, load_seconds: f64, device: &'static str, slots: &[(Lane, u16)]) {
        self.model_load.set(load_seconds);
        self.device.get_or_create(&DeviceLabels { device }).set(1);
        for (lane, count) in slots {
            self.slots
                .get_or_create(&lane_labels(*lane))
                .set(i64::from(*count));
        }
    }

    /// Marks a job of `lane` as running until the guard is dropped.
    pub fn running(&self, lane: Lane) -> InProgress {
        let gauge = self.in_progress.get_or_create(&lane_labels(lane)).clone();
        gauge.inc();
        InProgress(gauge)
    }

    /// Records how long a claimed job waited in `lane`'s queue.
    pub fn waited(&self, lane: Lane, seconds: f64) {
        self.queue_wait
            .get_or_create(&lane_labels(lane))
            .observe(seconds.max(0.0));
    }

    /// Records time spent in one stage.
    pub fn stage(&self, lane: Lane, stage: Stage, seconds: f64) {
        self.stage_seconds
            .get_or_create(&StageLabels {
                lane: lane.as_str(),
                stage: stage.as_str(),
            })
            .observe(seconds);
    }

    /// Records the renderer's own stages. The video stage is left out of
    /// jobs that wrote no GIF or MP4, so that its percentiles describe
    /// videos only.
    pub fn render_stages(&self, lane: Lane, timings: &Timings) {
        self.stage(lane, Stage::Encode, timings.read_inputs + timings.encode);
        self.stage(
            lane,
            Stage::Render,
            timings.decode + timings.compose + timings.png,
        );
        let video = timings.gif + timings.mp4;
        if video > 0.0 {
            self.stage(lane, Stage::Video, video);
        }
    }

    /// Counts the frames a render of `kind` made.
    pub fn rendered(&self, kind: &str, frames: usize) {
        self.frames
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .inc_by(frames as u64);
    }

    /// Records the run time of a successful job of `kind`.
    pub fn succeeded(&self, kind: &str, seconds: f64) {
        self.job_seconds
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .observe(seconds);
    }
}

fn lane_labels(lane: Lane) -> LaneLabels {
    LaneLabels {
        lane: lane.as_str(),
    }
}

/// Keeps a lane's in-progress gauge raised while a job runs, and lowers it
/// however the job ends (panics included).
pub struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}
