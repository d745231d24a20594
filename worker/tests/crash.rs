//! A worker killed with SIGKILL in the middle of a render: its job comes
//! back (its message is redelivered and its lease expires), another worker
//! finishes it, and it ends with one success and one set of outputs.

mod common;

use std::process::{Child, Command};

use common::{slow_sweep_spec, tiny_model, write_faces, Stack};
use contract::queue::JobStatus;
use glowctl::{SubmitOptions, Via};
use jobs::testkit::{TEST_S3_ACCESS_KEY, TEST_S3_SECRET_KEY};

/// Starts the worker binary with `stack`'s settings, as a separate process
/// that the test can kill.
fn spawn_worker(stack: &Stack) -> Child {
    let config = stack.worker_config(tiny_model());
    let var = |key: &str| format!("GLOWLINE_WORKER__{key}");
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .env(var("DATABASE__URL"), &config.database.url)
        .env(var("DATABASE__SCHEMA"), &config.database.schema)
        .env(var("BROKER__URL"), &config.broker.url)
        .env(var("S3__ENDPOINT"), config.s3.endpoint.as_deref().unwrap())
        .env(var("S3__BUCKET"), &config.s3.bucket)
        .env(var("WORKER__MODEL"), &config.worker.model)
        .env(var("WORKER__DEVICE"), "cpu")
        .env(
            var("WORKER__LEASE_SECS"),
            config.worker.lease_secs.to_string(),
        )
        .env(
            var("WORKER__HEARTBEAT_SECS"),
            config.worker.heartbeat_secs.to_string(),
        )
        .env(var("WORKER__WORK_DIR"), &config.worker.work_dir)
        .env(var("HTTP__LISTEN"), "127.0.0.1:0")
        .env("AWS_ACCESS_KEY_ID", TEST_S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_S3_SECRET_KEY)
        .spawn()
        .expect("start the worker binary")
}

#[tokio::test]
async fn a_worker_killed_mid_render_leaves_its_job_to_be_finished_once() {
    let mut stack = Stack::start("crash").await;
    let inputs = tempfile::tempdir().unwrap();
    write_faces(inputs.path(), 2);
    let path = inputs.path().join("sweep.json");
    std::fs::write(&path, slow_sweep_spec().to_string()).unwrap();
    let spec = stack.client.prepare(&path).await.unwrap();

    let mut doomed = spawn_worker(&stack);
    let id = stack
        .client
        .submit(&spec, &SubmitOptions::default(), Via::Queue)
        .await
        .unwrap();
    stack
        .wait_for(id, "the first worker to be rendering", |j| {
            j.status == JobStatus::Running && j.progress > 0.0
        })
        .await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();

    let mut survivor = spawn_worker(&stack);
    let job = stack
        .wait_for(id, "the job to finish", |j| j.status.is_terminal())
        .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();

    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.attempt, 2);
    let events = stack.events(id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "succeeded").count(),
        1,
        "{events:?}"
    );
    assert!(events.contains(&"lease_expired".to_owned()), "{events:?}");
    let store = stack.env.store().await;
    let mut stored = store.list(&format!("jobs/{id}/")).await.unwrap();
    let mut recorded = job.output_keys.clone();
    stored.sort();
    recorded.sort();
    assert_eq!(stored, recorded, "exactly one set of outputs");
    stack.stop().await;
}
