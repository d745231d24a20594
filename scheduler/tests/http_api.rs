//! The HTTP API against real Postgres and RabbitMQ: submit (with
//! idempotency), get, list with filters, cancel, batches, the OpenAPI
//! document, and the dispatch each submission leads to.

mod common;

use common::{edit, take_message, Harness};
use contract::queue::Lane;
use serde_json::{json, Value};

#[tokio::test]
async fn submit_get_list_and_cancel_a_job() {
    let mut h = Harness::start("http_submit").await;

    let mut body = edit("uploads/a/face.png");
    body["idempotency_key"] = json!("key-1");
    let response = h.post("/v1/jobs", &body).await;
    assert_eq!(response.status(), 201);
    let first: Value = response.json().await.unwrap();
    let id = first["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(first["job"]["status"], "queued");
    assert_eq!(first["job"]["lane"], "interactive");

    let again = h.post("/v1/jobs", &body).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job"]["id"], id.as_str());
    assert_eq!(again["created"], false);

    let dispatch = take_message(&h.env, Lane::Interactive.queue()).await;
    assert_eq!(dispatch["job_id"], id.as_str());
    assert_eq!(dispatch["kind"], "edit");

    let job: Value = h.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["kind"], "edit");

    let list: Value = h.get_json("/v1/jobs?status=queued&kind=edit").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let none: Value = h.get_json("/v1/jobs?status=running").await;
    assert!(none["jobs"].as_array().unwrap().is_empty());
    let bad = h.get("/v1/jobs?status=done").await;
    assert_eq!(bad.status(), 422);

    let cancel: Value = h
        .post_empty(&format!("/v1/jobs/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancel["outcome"], "cancelled");
    assert_eq!(cancel["job"]["status"], "cancelled");
    let twice: Value = h
        .post_empty(&format!("/v1/jobs/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(twice["outcome"], "already_finished");

    let events: Value = h.get_json(&format!("/v1/jobs/{id}/events")).await;
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["submitted", "cancelled"]);

    let missing = h.get(&format!("/v1/jobs/{}", uuid::Uuid::nil())).await;
    assert_eq!(missing.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn invalid_submissions_name_the_bad_input() {
    let mut h = Harness::start("http_invalid").await;
    let cases = [
        (
            json!({"spec": {"version": 1, "operation": {"kind": "paint"}}}),
            "paint",
        ),
        (
            json!({"spec": {"version": 7, "operation": {"kind": "edit"}}}),
            "version 7",
        ),
        (edit("../secrets/face.png"), "../secrets/face.png"),
        (json!({"spec": {}, "colour": "red"}), "colour"),
    ];
    for (body, named) in cases {
        let response = h.post("/v1/jobs", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(named), "{message:?} should name {named:?}");
    }
    let not_json = h.post_body("/v1/jobs", "{").await;
    assert_eq!(not_json.status(), 422);
    h.stop().await;
}

#[tokio::test]
async fn a_batch_manifest_becomes_jobs_under_one_batch() {
    let mut h = Harness::start("http_batch").await;
    let manifest: String = (0..20)
        .map(|i| format!("{}\n", edit(&format!("uploads/b/{i}.png"))))
        .collect();
    let response = h.post_body("/v1/batches?label=faces", manifest).await;
    assert_eq!(response.status(), 201);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["job_ids"].as_array().unwrap().len(), 20);
    let batch_id = batch["batch_id"].as_str().unwrap();

    let status: Value = h.get_json(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(status["status"], "queued");
    assert_eq!(status["counts"]["queued"], 20);
    assert_eq!(status["batch"]["label"], "faces");

    let listed: Value = h
        .get_json(&format!("/v1/jobs?batch_id={batch_id}&limit=5"))
        .await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 5);
    assert!(listed["next_before"].is_string());

    let bad = format!("{}\nnot json\n", edit("uploads/b/x.png"));
    let response = h.post_body("/v1/batches", bad).await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("line 2"));
    let all: Value = h.get_json("/v1/jobs?limit=500").await;
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        20,
        "a rejected manifest creates no job"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let mut h = Harness::start("http_openapi").await;
    let doc: Value = h.get_json("/openapi.json").await;
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/batches",
        "/v1/batches/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    let submit = &doc["components"]["schemas"]["SubmitRequest"]["properties"];
    let request = contract::queue::SubmitRequest {
        spec: json!({}),
        idempotency_key: None,
        priority: 0,
        deadline_secs: None,
    };
    for field in serde_json::to_value(request)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
    {
        assert!(
            submit[field].is_object(),
            "document lacks SubmitRequest.{field}"
        );
    }
    h.stop().await;
}
