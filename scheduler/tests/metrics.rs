//! The scheduler's operational endpoints against real Postgres and
//! RabbitMQ: `/healthz`, `/readyz` with its broker links up and down,
//! `/metrics` in both exposition formats (the text one checked by
//! promtool), and counters and gauges that move with submissions, the
//! outbox and the reaper.

mod common;

use std::time::Duration;

use common::{edit, Harness, WAIT};
use jobs::testkit::{eventually, promtool_check, sample, TestEnv};
use serde_json::{json, Value};

/// The scheduler's metrics in Prometheus' text format.
async fn scrape(h: &Harness) -> String {
    let response = h.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

async fn readiness(h: &Harness) -> (u16, Value) {
    let response = h.get("/readyz").await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn submissions_move_the_counters_and_the_scrape_passes_promtool() {
    let mut h = Harness::start("metrics_submit").await;
    let health = h.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = eventually("the scheduler to be ready", WAIT, || async {
        let (status, body) = readiness(&h).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(ready, json!({ "database": "ok", "broker": "ok" }));

    let before = scrape(&h).await;
    let submitted = [("kind", "edit"), ("source", "http")];
    for key in ["m-1", "m-2", "m-2"] {
        let mut body = edit("uploads/m/face.png");
        body["idempotency_key"] = json!(key);
        let response = h.post("/v1/jobs", &body).await;
        assert!(response.status().is_success());
    }
    let refused = h.post("/v1/jobs", &edit("jobs/elsewhere/face.png")).await;
    assert_eq!(refused.status(), 422);

    // The relay publishes both dispatches: the outbox drains to nothing.
    let after = eventually("the outbox to drain", WAIT, || async {
        let text = scrape(&h).await;
        let published = sample(&text, "glowline_outbox_published_total", &[]);
        (published >= 2.0 && sample(&text, "glowline_outbox_backlog_messages", &[]) == 0.0)
            .then_some(text)
    })
    .await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(
        delta("glowline_jobs_submitted_total", &submitted),
        2.0,
        "a repeated idempotency key is not a new job"
    );
    assert_eq!(
        delta("glowline_submissions_rejected_total", &[("source", "http")]),
        1.0
    );
    assert_eq!(
        delta(
            "glowline_http_requests_total",
            &[("route", "/v1/jobs"), ("method", "POST"), ("status", "422")]
        ),
        1.0
    );
    assert_eq!(
        sample(&after, "glowline_outbox_oldest_age_seconds", &[]),
        0.0
    );
    assert_eq!(
        sample(&after, "glowline_broker_connected", &[("link", "relay")]),
        1.0
    );
    assert_eq!(
        sample(&after, "glowline_build_info", &[("service", "scheduler")]),
        1.0
    );
    promtool_check(&after);

    // Prometheus' scraper asks for OpenMetrics and gets it.
    let openmetrics = h
        .http
        .get(h.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        openmetrics.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let openmetrics = openmetrics.text().await.unwrap();
    assert!(openmetrics.contains("# TYPE glowline_jobs_submitted counter\n"));
    assert!(openmetrics.ends_with("# EOF\n"));
    h.stop().await;
}

#[tokio::test]
async fn without_a_broker_the_scheduler_is_not_ready_and_the_outbox_backs_up() {
    // A virtual host that does not exist: every broker connection is refused.
    let env = TestEnv::new("metrics_no_broker");
    let nowhere = env.broker.url.replace(&env.vhost, "no-such-vhost");
    let mut h = Harness::start_with(env, |config| config.broker.url = nowhere).await;

    let (status, body) = readiness(&h).await;
    assert_eq!(status, 503);
    assert_eq!(body["database"], "ok");
    assert_eq!(body["broker"], "not connected: submit, relay");

    let response = h.post("/v1/jobs", &edit("uploads/m/face.png")).await;
    assert_eq!(response.status(), 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = scrape(&h).await;
    assert_eq!(sample(&text, "glowline_outbox_backlog_messages", &[]), 1.0);
    assert!(sample(&text, "glowline_outbox_oldest_age_seconds", &[]) >= 1.0);
    assert_eq!(
        sample(&text, "glowline_broker_connected", &[("link", "submit")]),
        0.0
    );
    h.stop().await;
}

#[tokio::test]
async fn the_reaper_and_queued_cancels_count_as_outcomes() {
    let mut h = Harness::start("metrics_reaper").await;
    let submit = |body: Value| {
        let request = h.http.post(h.url("/v1/jobs")).json(&body);
        async move {
            let response: Value = request.send().await.unwrap().json().await.unwrap();
            response["job"]["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()
        }
    };

    let queued = submit(edit("uploads/m/a.png")).await;
    let cancel: Value = h
        .post_empty(&format!("/v1/jobs/{queued}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancel["outcome"], "cancelled");

    // A claim whose worker never comes back: with one attempt allowed, the
    // reaper fails the job once its short lease runs out.
    let mut body = edit("uploads/m/b.png");
    body["deadline_secs"] = json!(60);
    let lost = submit(body).await;
    sqlx::query("UPDATE jobs SET max_attempts = 1 WHERE id = $1")
        .bind(lost)
        .execute(&h.pool)
        .await
        .unwrap();
    jobs::store::claim(&h.pool, lost, "vanished-worker", Duration::from_millis(100))
        .await
        .unwrap();

    let text = eventually("the reaper to fail the lost job", WAIT, || async {
        let text = scrape(&h).await;
        let failed = [("kind", "edit"), ("reason", "lease_expired")];
        (sample(&text, "glowline_job_failures_total", &failed) == 1.0).then_some(text)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "glowline_jobs_finished_total",
            &[("kind", "edit"), ("outcome", "cancelled")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "glowline_jobs_finished_total",
            &[("kind", "edit"), ("outcome", "failed")]
        ),
        1.0
    );
    h.stop().await;
}
