//! The job pipeline end to end: glowctl submits through the queue, the
//! scheduler records and dispatches, a worker renders with a real Glow
//! model, outputs land in S3 and Postgres records the outcome, while both
//! processes' metrics count it. Also batches, cancellation, bad inputs and
//! long jobs.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{mp4_frames, png_size, scrape, tiny_model, write_faces, Stack, SHIPPED_MODEL, WAIT};
use contract::queue::{JobStatus, Lane, DEAD_LETTER_QUEUE, SUBMIT_QUEUE};
use glowctl::{SubmitOptions, Via};
use jobs::testkit::{eventually, promtool_check, sample};
use serde_json::json;

/// Frames of the nine-way morph the end-to-end tests render.
const MORPH_FRAMES: u64 = 12;

/// Submits a nine-way morph and an edit with glowctl over the queue,
/// renders them with `model`, and checks outputs, statuses, hashes and the
/// scheduler's and worker's metrics.
async fn morph_and_edit(name: &str, model: &Path) {
    let mut stack = Stack::start(name).await;
    let worker = stack.start_worker(stack.worker_config(model)).await;
    let worker_url = format!("http://{worker}");
    let scheduler_before = scrape(&stack.scheduler_url).await;
    let worker_before = scrape(&worker_url).await;
    let inputs = tempfile::tempdir().unwrap();
    write_faces(inputs.path(), 10);

    let morph = json!({
        "version": 1,
        "alignment": { "skip": true },
        "operation": {
            "kind": "nine_way_morph",
            "base": "face0.png",
            "targets": (1..10).map(|i| format!("face{i}.png")).collect::<Vec<_>>(),
            "frames": MORPH_FRAMES,
        },
        "output": { "size": 32, "formats": ["mp4"] }
    });
    let edit = json!({
        "version": 1,
        "alignment": { "skip": true },
        "operation": { "kind": "edit", "input": "face0.png", "attributes": { "smiling": 1.0, "age": -0.5 } },
        "output": { "size": 96 }
    });
    let mut ids = Vec::new();
    for (file, spec) in [("morph.json", morph), ("edit.json", edit)] {
        let path = inputs.path().join(file);
        std::fs::write(&path, spec.to_string()).unwrap();
        let prepared = stack.client.prepare(&path).await.unwrap();
        ids.push(
            stack
                .client
                .submit(&prepared, &SubmitOptions::default(), Via::Queue)
                .await
                .unwrap(),
        );
    }

    let sha = glow::render::sha256_file(model).unwrap();
    let store = stack.env.store().await;
    let mut frames = HashMap::new();
    for (id, lane) in ids.iter().zip([Lane::Long, Lane::Interactive]) {
        let job = stack.client.wait(*id, false).await.unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
        assert_eq!(job.lane, lane);
        assert_eq!(job.progress, 1.0);
        assert_eq!(job.model_hash.as_deref(), Some(sha.as_str()));
        assert_eq!(job.attempt, 1);
        assert_eq!(
            store.list(&format!("jobs/{id}/")).await.unwrap(),
            job.output_keys
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );

        let out = tempfile::tempdir().unwrap();
        let files = stack.client.download(&job, out.path()).await.unwrap();
        assert!(files.iter().any(|f| f.ends_with("report.json")));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap())
                .unwrap();
        frames.insert(
            job.kind.clone(),
            report["frames"]["rendered"].as_f64().unwrap(),
        );
        if job.kind == "nine_way_morph" {
            let mp4 = std::fs::read(out.path().join("animation.mp4")).unwrap();
            assert_eq!(mp4_frames(&mp4), MORPH_FRAMES);
        } else {
            let png = std::fs::read(out.path().join("result.png")).unwrap();
            assert_eq!(png_size(&png), (96, 96));
        }
    }
    assert_eq!(stack.env.queue_depth(SUBMIT_QUEUE), (0, 0));

    // A job is counted right after its status is committed, so the scrape
    // may need a moment to catch up with what glowctl saw.
    let finished = |kind| [("kind", kind), ("outcome", "succeeded")];
    let worker_after = eventually("the worker to count both jobs", WAIT, || async {
        let text = scrape(&worker_url).await;
        let counted = ["nine_way_morph", "edit"].iter().all(|kind| {
            sample(&text, "glowline_jobs_finished_total", &finished(kind))
                > sample(
                    &worker_before,
                    "glowline_jobs_finished_total",
                    &finished(kind),
                )
        });
        counted.then_some(text)
    })
    .await;
    let scheduler_after = scrape(&stack.scheduler_url).await;
    let moved = |before: &str, after: &str, name: &str, labels: &[(&str, &str)]| {
        sample(after, name, labels) - sample(before, name, labels)
    };
    let on_worker =
        |name: &str, labels: &[(&str, &str)]| moved(&worker_before, &worker_after, name, labels);

    for kind in ["nine_way_morph", "edit"] {
        let submitted = [("kind", kind), ("source", "queue")];
        assert_eq!(
            moved(
                &scheduler_before,
                &scheduler_after,
                "glowline_jobs_submitted_total",
                &submitted
            ),
            1.0,
            "{kind} submissions"
        );
        assert_eq!(
            on_worker("glowline_jobs_finished_total", &finished(kind)),
            1.0
        );
        assert_eq!(
            on_worker("glowline_job_duration_seconds_count", &[("kind", kind)]),
            1.0
        );
        assert_eq!(
            on_worker("glowline_frames_rendered_total", &[("kind", kind)]),
            frames[kind],
            "{kind} frames, as its report counts them"
        );
    }
    for (lane, stages) in [
        (
            "long",
            &["download", "encode", "render", "video", "upload"][..],
        ),
        (
            "interactive",
            &["download", "encode", "render", "upload"][..],
        ),
    ] {
        for stage in stages {
            let labels = [("lane", lane), ("stage", *stage)];
            assert_eq!(
                on_worker("glowline_job_stage_duration_seconds_count", &labels),
                1.0,
                "{lane} {stage}"
            );
        }
        let labels = [("lane", lane)];
        assert_eq!(
            on_worker("glowline_job_queue_wait_seconds_count", &labels),
            1.0
        );
        assert_eq!(
            sample(&worker_after, "glowline_jobs_in_progress", &labels),
            0.0
        );
        assert_eq!(sample(&worker_after, "glowline_worker_slots", &labels), 1.0);
    }
    assert_eq!(
        on_worker(
            "glowline_job_stage_duration_seconds_count",
            &[("lane", "interactive"), ("stage", "video")]
        ),
        0.0,
        "an edit writes no video"
    );
    for operation in ["GetObject", "PutObject"] {
        let labels = [("operation", operation), ("status", "2xx")];
        assert!(
            on_worker("glowline_s3_request_duration_seconds_count", &labels) > 0.0,
            "{operation} requests"
        );
    }
    assert_eq!(
        sample(
            &worker_after,
            "glowline_worker_device_info",
            &[("device", "cpu")]
        ),
        1.0
    );
    assert!(sample(&worker_after, "glowline_model_load_duration_seconds", &[]) > 0.0);
    promtool_check(&worker_after);
    promtool_check(&scheduler_after);

    let ready = reqwest::get(format!("{worker_url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        json!({ "database": "ok", "broker": "ok", "s3": "ok" })
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_morph_and_an_edit_render_end_to_end_with_a_tiny_model() {
    morph_and_edit("e2e_tiny", tiny_model()).await;
}

#[tokio::test]
async fn a_morph_and_an_edit_render_end_to_end_with_the_shipped_model() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SHIPPED_MODEL);
    morph_and_edit("e2e_shipped", &model).await;
}

#[tokio::test]
async fn a_batch_of_twenty_edits_runs_to_success() {
    let mut stack = Stack::start("batch").await;
    let mut config = stack.worker_config(tiny_model());
    config.worker.slots.interactive = 2;
    stack.start_worker(config).await;
    let inputs = tempfile::tempdir().unwrap();
    write_faces(inputs.path(), 2);
    let manifest: String = (0..20)
        .map(|i| {
            let spec = json!({
                "version": 1,
                "alignment": { "skip": true },
                "operation": { "kind": "edit", "input": format!("face{}.png", i % 2), "attributes": { "smiling": i as f64 / 10.0 } },
                "output": { "size": 32 }
            });
            format!("{spec}\n")
        })
        .collect();

    let (batch, jobs) = stack
        .client
        .submit_batch(&manifest, inputs.path(), Some("twenty"))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 20);
    let status = stack.client.wait_batch(batch, false).await.unwrap();
    assert_eq!(status.status, "succeeded");
    assert_eq!(status.counts.get("succeeded"), Some(&20));
    assert_eq!(status.progress, 1.0);
    stack.stop().await;
}

/// Writes the faces and spec of a slow sweep into `dir`; returns the spec.
fn slow_sweep(dir: &Path) -> std::path::PathBuf {
    write_faces(dir, 2);
    let path = dir.join("sweep.json");
    std::fs::write(&path, common::slow_sweep_spec().to_string()).unwrap();
    path
}

#[tokio::test]
async fn cancelling_a_queued_and_a_running_job() {
    let mut stack = Stack::start("cancel").await;
    let inputs = tempfile::tempdir().unwrap();
    let spec = stack
        .client
        .prepare(&slow_sweep(inputs.path()))
        .await
        .unwrap();

    // No worker yet: the first job is still queued when cancelled.
    let queued = stack
        .client
        .submit(&spec, &SubmitOptions::default(), Via::Http)
        .await
        .unwrap();
    assert_eq!(stack.client.cancel(queued).await.unwrap(), "cancelled");

    let running = stack
        .client
        .submit(&spec, &SubmitOptions::default(), Via::Http)
        .await
        .unwrap();
    let worker = stack.start_worker(stack.worker_config(tiny_model())).await;
    let worker_url = format!("http://{worker}");
    stack
        .wait_for(running, "the job to render", |j| {
            j.status == JobStatus::Running && j.progress > 0.0
        })
        .await;
    let during = scrape(&worker_url).await;
    let long = [("lane", "long")];
    assert_eq!(sample(&during, "glowline_jobs_in_progress", &long), 1.0);
    assert_eq!(
        sample(&during, "glowline_job_queue_wait_seconds_count", &long),
        1.0
    );
    assert_eq!(stack.client.cancel(running).await.unwrap(), "requested");
    let job = stack
        .wait_for(running, "the cancel to land", |j| j.status.is_terminal())
        .await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.progress < 1.0);

    // The scheduler counts the job it cancelled in the queue, the worker
    // the one it stopped.
    let cancelled = [("kind", "mix_sweep"), ("outcome", "cancelled")];
    eventually("the worker to count the cancel", WAIT, || async {
        let after = scrape(&worker_url).await;
        (sample(&after, "glowline_jobs_finished_total", &cancelled) == 1.0
            && sample(&after, "glowline_jobs_in_progress", &long) == 0.0)
            .then_some(())
    })
    .await;
    let scheduler = scrape(&stack.scheduler_url).await;
    assert_eq!(
        sample(&scheduler, "glowline_jobs_finished_total", &cancelled),
        1.0
    );

    let queued_job = stack.client.job(queued).await.unwrap();
    assert_eq!(queued_job.status, JobStatus::Cancelled);
    assert_eq!(
        queued_job.attempt, 0,
        "a cancelled queued job is never claimed"
    );
    let env = &stack.env;
    jobs::testkit::eventually(
        "the work queue to drain",
        Duration::from_secs(20),
        || async { (env.queue_depth(Lane::Long.queue()) == (0, 0)).then_some(()) },
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn bad_inputs_fail_their_jobs_with_the_reason_and_the_worker_goes_on() {
    let mut stack = Stack::start("bad_inputs").await;
    stack.start_worker(stack.worker_config(tiny_model())).await;
    let store = stack.env.store().await;
    store
        .put_bytes(
            "uploads/bad/notes.png",
            b"this is not an image".to_vec(),
            "image/png",
        )
        .await
        .unwrap();
    store
        .put_bytes("uploads/good/face.png", common::face_png(3), "image/png")
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let submit = |input: &str| {
        let body = json!({ "spec": { "version": 1, "alignment": { "skip": true }, "operation": { "kind": "mix", "from": input, "to": "uploads/good/face.png", "alpha": 0.5 } } });
        let request = http
            .post(format!("{}/v1/jobs", stack.scheduler_url))
            .bearer_auth(jobs::testkit::TEST_API_TOKEN)
            .json(&body);
        async move {
            let response: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            response["job"]["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()
        }
    };
    let missing = submit("uploads/nowhere/face.png").await;
    let not_image = submit("uploads/bad/notes.png").await;
    let good = submit("uploads/good/face.png").await;

    for (id, reason) in [
        (missing, "does not exist"),
        (not_image, "uploads/bad/notes.png"),
    ] {
        let job = stack
            .wait_for(id, "the bad job to fail", |j| j.status.is_terminal())
            .await;
        assert_eq!(job.status, JobStatus::Failed);
        let error = job.error.unwrap();
        assert!(error.contains(reason), "{error:?} should say {reason:?}");
        assert_eq!(job.attempt, 1, "a permanent error is not retried");
    }
    let job = stack
        .wait_for(good, "the good job", |j| j.status.is_terminal())
        .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(stack.env.queue_depth(Lane::Interactive.queue()), (0, 0));
    assert_eq!(stack.env.queue_depth(DEAD_LETTER_QUEUE).0, 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_job_longer_than_the_ack_handoff_is_neither_cut_off_nor_run_twice() {
    let mut stack = Stack::start("handoff").await;
    let mut config = stack.worker_config(tiny_model());
    config.worker.ack_handoff_secs = 1;
    stack.start_worker(config).await;
    let inputs = tempfile::tempdir().unwrap();
    let spec = stack
        .client
        .prepare(&slow_sweep(inputs.path()))
        .await
        .unwrap();
    let id = stack
        .client
        .submit(&spec, &SubmitOptions::default(), Via::Queue)
        .await
        .unwrap();

    stack
        .wait_for(id, "the job to run past the hand-off", |j| {
            j.status == JobStatus::Running && j.progress > 0.0
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let running = stack.client.job(id).await.unwrap();
    if running.status == JobStatus::Running {
        assert_eq!(
            stack.env.queue_depth(Lane::Long.queue()),
            (0, 0),
            "the message was acknowledged early"
        );
    }
    let job = stack
        .wait_for(id, "the job to finish", |j| j.status.is_terminal())
        .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.attempt, 1);
    let events = stack.events(id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "claimed").count(),
        1,
        "{events:?}"
    );
    stack.stop().await;
}
