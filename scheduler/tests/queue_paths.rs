//! Submissions over the queue, the outbox relay and the lease reaper,
//! against real Postgres and RabbitMQ.

mod common;

use std::time::Duration;

use common::{edit, take_message, Harness, WAIT};
use contract::queue::{
    JobStatus, Lane, SubmitReply, DEAD_LETTER_QUEUE, JOBS_EXCHANGE, SUBMIT_QUEUE,
};
use futures_util::StreamExt;
use jobs::broker;
use jobs::store::{self, ClaimOutcome, Lease, Reaped};
use jobs::testkit::{eventually, TestEnv};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::json;

/// RabbitMQ's direct reply-to pseudo-queue: replies come back on the
/// publishing channel without declaring a queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Publishes each body on the submission queue and collects the replies in order.
async fn submit_over_queue(env: &TestEnv, bodies: &[Vec<u8>]) -> Vec<SubmitReply> {
    let connection = broker::connect(&env.broker, "test-client").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut replies = channel
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for body in bodies {
        let properties = BasicProperties::default().with_reply_to(REPLY_TO.into());
        channel
            .basic_publish(
                JOBS_EXCHANGE.into(),
                SUBMIT_QUEUE.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
        let reply = tokio::time::timeout(WAIT, replies.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        out.push(serde_json::from_slice(&reply.data).unwrap());
    }
    let _ = connection.close(0, "done".into()).await;
    out
}

#[tokio::test]
async fn bad_submissions_are_rejected_with_reasons_and_the_consumer_keeps_going() {
    let mut h = Harness::start("queue_bad").await;
    let spec = |s: serde_json::Value| serde_json::to_vec(&json!({ "spec": s })).unwrap();
    let bodies = vec![
        b"this is not json".to_vec(),
        spec(json!({"version": 1, "operation": {"kind": "paint", "input": "uploads/x.png"}})),
        spec(
            json!({"version": 2, "operation": {"kind": "edit", "input": "uploads/x.png", "attributes": {}}}),
        ),
        serde_json::to_vec(&edit("s3://other-bucket/x.png")).unwrap(),
        serde_json::to_vec(&edit("uploads/ok.png")).unwrap(),
    ];
    let replies = submit_over_queue(&h.env, &bodies).await;

    let reasons: Vec<String> = replies[..4]
        .iter()
        .map(|r| match r {
            SubmitReply::Rejected { reason } => reason.clone(),
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert!(reasons[0].contains("not valid JSON"), "{}", reasons[0]);
    assert!(reasons[1].contains("paint"), "{}", reasons[1]);
    assert!(reasons[2].contains("version 2"), "{}", reasons[2]);
    assert!(
        reasons[3].contains("s3://other-bucket/x.png"),
        "{}",
        reasons[3]
    );
    let SubmitReply::Accepted {
        job_id,
        created: true,
    } = &replies[4]
    else {
        panic!(
            "the good submission after four bad ones was not accepted: {:?}",
            replies[4]
        );
    };

    let dispatch = take_message(&h.env, Lane::Interactive.queue()).await;
    assert_eq!(dispatch["job_id"], job_id.as_str());

    let env = &h.env;
    eventually(
        "the rejected messages dead-lettered and nothing unacked",
        WAIT,
        || async {
            let submit = env.queue_depth(SUBMIT_QUEUE);
            let dead = env.queue_depth(DEAD_LETTER_QUEUE);
            (submit == (0, 0) && dead.0 == 4).then_some(())
        },
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_queue_resubmission_with_the_same_key_returns_the_same_job() {
    let mut h = Harness::start("queue_idem").await;
    let mut body = edit("uploads/a.png");
    body["idempotency_key"] = json!("same");
    let body = serde_json::to_vec(&body).unwrap();
    let replies = submit_over_queue(&h.env, &[body.clone(), body]).await;
    match (&replies[0], &replies[1]) {
        (
            SubmitReply::Accepted {
                job_id: a,
                created: true,
            },
            SubmitReply::Accepted {
                job_id: b,
                created: false,
            },
        ) => assert_eq!(a, b),
        other => panic!("unexpected replies {other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn the_relay_delivers_what_was_committed_before_a_crash() {
    // A scheduler that committed a job and died before publishing leaves
    // only the database rows; recording the job without any scheduler
    // running reproduces exactly that state.
    let env = TestEnv::new("relay_crash");
    let pool = jobs::db::connect(&env.database).await.unwrap();
    let request = serde_json::from_value(edit("uploads/a.png")).unwrap();
    let job = scheduler::submit::validate(&request, &Default::default(), None).unwrap();
    let (job, _) = store::insert_job(&pool, &job).await.unwrap();

    let mut h = Harness::start_with(env, |_| {}).await;
    let dispatch = take_message(&h.env, Lane::Interactive.queue()).await;
    assert_eq!(dispatch["job_id"], job.id.to_string());
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unsent, 0);
    h.stop().await;
}

#[tokio::test]
async fn an_unroutable_message_is_a_failed_publish() {
    let mut h = Harness::start("relay_unroutable").await;
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, 'no.such.queue', '{}')",
    )
    .bind(JOBS_EXCHANGE)
    .execute(&h.pool)
    .await
    .unwrap();
    let pool = h.pool.clone();
    let error: String = eventually("the publish to be recorded as failed", WAIT, || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT last_error FROM outbox WHERE routing_key = 'no.such.queue' AND sent_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await;
    assert!(error.contains("NO_ROUTE"), "{error}");
    h.stop().await;
}

#[tokio::test]
async fn the_reaper_requeues_a_lost_job_then_fails_it_when_attempts_run_out() {
    let mut h = Harness::start_with(TestEnv::new("reaper"), |c| c.jobs.max_attempts = 2).await;
    let response: serde_json::Value = h
        .post("/v1/jobs", &edit("uploads/a.png"))
        .await
        .json()
        .await
        .unwrap();
    let id: uuid::Uuid = response["job"]["id"].as_str().unwrap().parse().unwrap();
    take_message(&h.env, Lane::Interactive.queue()).await;

    let short = Duration::from_millis(300);
    for attempt in 1..=2 {
        let ClaimOutcome::Claimed(job) = store::claim(&h.pool, id, "doomed-worker", short)
            .await
            .unwrap()
        else {
            panic!("attempt {attempt}: the job was not claimable");
        };
        assert_eq!(job.attempt, attempt);
        let lease = Lease {
            job_id: id,
            attempt,
            owner: "doomed-worker".into(),
        };
        let pool = h.pool.clone();
        let status = eventually("the reaper to act", WAIT, || async {
            let job = store::get_job(&pool, id).await.unwrap().unwrap();
            (job.status != JobStatus::Running).then_some(job)
        })
        .await;
        assert!(matches!(
            store::heartbeat(&h.pool, &lease, short, None).await,
            Err(store::StoreError::Fenced { .. })
        ));
        if attempt == 1 {
            assert_eq!(status.status, JobStatus::Queued);
            let redispatch = take_message(&h.env, Lane::Interactive.queue()).await;
            assert_eq!(redispatch["job_id"], id.to_string());
        } else {
            assert_eq!(status.status, JobStatus::Failed);
            assert!(status
                .error
                .unwrap()
                .contains("lease expired on attempt 2 of 2"));
        }
    }
    assert!(store::reap_expired(&h.pool, 10)
        .await
        .unwrap()
        .iter()
        .all(|r| !matches!(r, Reaped::Requeued { .. })));
    h.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_job_sets_its_flag_and_the_worker_commits_cancelled() {
    let mut h = Harness::start("cancel_running").await;
    let response: serde_json::Value = h
        .post("/v1/jobs", &edit("uploads/a.png"))
        .await
        .json()
        .await
        .unwrap();
    let id: uuid::Uuid = response["job"]["id"].as_str().unwrap().parse().unwrap();
    let ClaimOutcome::Claimed(job) = store::claim(&h.pool, id, "w", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("not claimed");
    };
    let lease = Lease {
        job_id: id,
        attempt: job.attempt,
        owner: "w".into(),
    };
    assert!(
        !store::heartbeat(&h.pool, &lease, Duration::from_secs(30), Some(0.5))
            .await
            .unwrap()
    );

    let cancel: serde_json::Value = h
        .post_empty(&format!("/v1/jobs/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancel["outcome"], "requested");
    assert_eq!(cancel["job"]["status"], "running");
    assert!(
        store::heartbeat(&h.pool, &lease, Duration::from_secs(30), None)
            .await
            .unwrap()
    );
    let job = store::finish(&h.pool, &lease, &store::Outcome::Cancelled)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.progress, 0.5);
    h.stop().await;
}
