//! Malformed and hostile requests to the HTTP API, against a real
//! scheduler on Postgres and RabbitMQ. Each case asserts the exact status
//! and error message, and is followed by a valid submission that must still
//! succeed: a bad request never takes the API down with it.

mod common;

use common::{client_with_token, edit, Harness};
use jobs::testkit::{TestEnv, TEST_API_TOKEN};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// A request to send: method, path, extra headers and body.
struct Request {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    /// Send without the test token.
    anonymous: bool,
}

impl Request {
    fn post_json(path: &str, body: &Value) -> Self {
        Self::post(path, serde_json::to_vec(body).unwrap())
    }

    fn post(path: &str, body: Vec<u8>) -> Self {
        Self {
            method: Method::POST,
            path: path.to_owned(),
            headers: Vec::new(),
            body,
            anonymous: false,
        }
    }

    fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            ..Self::post(path, Vec::new())
        }
    }

    fn header(mut self, name: HeaderName, value: &str) -> Self {
        self.headers
            .push((name, HeaderValue::from_str(value).unwrap()));
        self
    }

    fn anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }
}

/// A scheduler whose rate limit is out of the way of these tests (the
/// limit has a test of its own).
async fn start(name: &str) -> Harness {
    Harness::start_with(TestEnv::new(name), |config| {
        config.http.rate_limit.requests_per_second = 10_000;
        config.http.rate_limit.burst = 10_000;
    })
    .await
}

/// Sends `request`; returns the status, the headers and the body as JSON
/// (`Value::Null` when it is not JSON).
async fn send(h: &Harness, request: Request) -> (u16, HeaderMap, Value) {
    let client = if request.anonymous {
        reqwest::Client::new()
    } else {
        h.http.clone()
    };
    let mut builder = client
        .request(request.method, h.url(&request.path))
        .body(request.body);
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// A valid submission goes through: the API is still serving.
async fn still_serving(h: &Harness, after: &str) {
    let response = h.post("/v1/jobs", &edit("uploads/ok/face.png")).await;
    assert_eq!(
        response.status(),
        201,
        "a valid submission after {after:?} failed"
    );
}

/// Sends `request`, asserts the status and exact error, then that a valid
/// submission still succeeds.
async fn refused(h: &Harness, case: &str, request: Request, status: u16, error: &str) {
    let (got, _, body) = send(h, request).await;
    assert_eq!(got, status, "{case}: status; body {body}");
    assert_eq!(body["error"].as_str(), Some(error), "{case}: error");
    still_serving(h, case).await;
}

/// A submission whose spec is `spec`.
fn submission(spec: Value) -> Value {
    json!({ "spec": spec })
}

/// An edit of `input` with `attributes`.
fn edit_spec(input: &str, attributes: Value) -> Value {
    json!({
        "version": 1,
        "operation": { "kind": "edit", "input": input, "attributes": attributes }
    })
}

#[tokio::test]
async fn requests_without_a_valid_bearer_token_are_refused() {
    let mut h = start("bad_http_auth").await;
    let jobs = "/v1/jobs";
    let body = serde_json::to_vec(&edit("uploads/a/face.png")).unwrap();

    let (status, headers, error) = send(&h, Request::post(jobs, body.clone()).anonymous()).await;
    assert_eq!(status, 401);
    assert_eq!(
        error["error"],
        "missing bearer token: send `Authorization: Bearer <token>`"
    );
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="glowline""#);
    still_serving(&h, "no token").await;

    let cases = [
        ("a wrong token", "Bearer wrong-token-of-some-length"),
        ("a prefix of the token", "Bearer glowline-test-api-toke"),
        ("the token and more", "Bearer glowline-test-api-tokenX"),
    ];
    for (case, value) in cases {
        let request = Request::post(jobs, body.clone())
            .anonymous()
            .header(AUTHORIZATION, value);
        let (status, headers, error) = send(&h, request).await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(error["error"], "invalid bearer token", "{case}");
        assert_eq!(
            headers["www-authenticate"],
            r#"Bearer realm="glowline", error="invalid_token""#
        );
        still_serving(&h, case).await;
    }

    let malformed = [
        ("basic credentials", "Basic Z2xvd2xpbmU6dG9rZW4="),
        ("an empty bearer token", "Bearer "),
        ("the token without a scheme", TEST_API_TOKEN),
    ];
    for (case, value) in malformed {
        let request = Request::post(jobs, body.clone())
            .anonymous()
            .header(AUTHORIZATION, value);
        refused(
            &h,
            case,
            request,
            401,
            "the Authorization header must be `Bearer <token>`",
        )
        .await;
    }
    // Sent by hand: reqwest's default header would yield to a second one.
    let twice = Request::post(jobs, body.clone())
        .anonymous()
        .header(AUTHORIZATION, &format!("Bearer {TEST_API_TOKEN}"))
        .header(AUTHORIZATION, &format!("Bearer {TEST_API_TOKEN}"));
    refused(
        &h,
        "two Authorization headers",
        twice,
        401,
        "the Authorization header must be `Bearer <token>`",
    )
    .await;

    // The scheme is case-insensitive; reads need the token as much as writes.
    let lower = client_with_token(TEST_API_TOKEN);
    let response = lower.get(h.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, _, _) = send(&h, Request::get("/v1/jobs").anonymous()).await;
    assert_eq!(status, 401);
    let request = Request::get("/v1/jobs")
        .anonymous()
        .header(AUTHORIZATION, &format!("bearer {TEST_API_TOKEN}"));
    assert_eq!(send(&h, request).await.0, 200);

    // Health and the API description stay open to probes and tools.
    for path in ["/healthz", "/openapi.json"] {
        let (status, _, _) = send(&h, Request::get(path).anonymous()).await;
        assert_eq!(status, 200, "{path}");
    }
    h.stop().await;
}

#[tokio::test]
async fn oversized_bodies_headers_and_nesting_are_refused() {
    let mut h = start("bad_http_sizes").await;

    let mut huge = edit("uploads/a/face.png");
    huge["spec"]["padding"] = json!("x".repeat(5 * 1024 * 1024));
    refused(
        &h,
        "a 5 MiB body",
        Request::post_json("/v1/jobs", &huge),
        413,
        "the request body is larger than the 4194304 bytes accepted",
    )
    .await;
    refused(
        &h,
        "a 5 MiB batch manifest",
        Request::post("/v1/batches", vec![b'\n'; 5 * 1024 * 1024]),
        413,
        "the request body is larger than the 4194304 bytes accepted",
    )
    .await;

    let deep = format!(
        r#"{{"spec": {}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    refused(
        &h,
        "JSON nested 100,000 deep",
        Request::post("/v1/jobs", deep.into_bytes()),
        422,
        "submission is not valid JSON of the submission shape: recursion limit exceeded \
         at line 1 column 136",
    )
    .await;

    // 32 KiB of headers: over the API's 16 KiB, under hyper's own limit.
    let (status, _, body) = send(
        &h,
        Request::get("/v1/jobs")
            .header(HeaderName::from_static("x-padding"), &"x".repeat(32 * 1024)),
    )
    .await;
    assert_eq!(status, 431);
    let error = body["error"].as_str().unwrap();
    let total: usize = error
        .strip_prefix("the request's URI and headers total ")
        .and_then(|rest| rest.strip_suffix(" bytes; at most 16384 are accepted"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected error {error:?}"));
    assert!(total > 32 * 1024, "{total}");
    still_serving(&h, "32 KiB of headers").await;

    // A megabyte of headers: hyper refuses it before the API sees it.
    let (status, _, _) = send(
        &h,
        Request::get("/v1/jobs").header(HeaderName::from_static("x-padding"), &"x".repeat(1 << 20)),
    )
    .await;
    assert_eq!(status, 431);
    still_serving(&h, "a megabyte of headers").await;

    let long_label = format!("/v1/batches?label={}", "x".repeat(20_000));
    let (status, _, _) = send(&h, Request::post(&long_label, Vec::new())).await;
    assert_eq!(status, 431);
    still_serving(&h, "a 20 kB query string").await;
    h.stop().await;
}

#[tokio::test]
async fn malformed_json_and_submission_fields_are_named() {
    let mut h = start("bad_http_json").await;
    let jobs = "/v1/jobs";
    let not_json = "submission is not valid JSON of the submission shape";
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "plain text",
            b"make me smile".to_vec(),
            format!("{not_json}: expected value at line 1 column 1"),
        ),
        (
            "an empty body",
            Vec::new(),
            format!("{not_json}: EOF while parsing a value at line 1 column 0"),
        ),
        (
            "bytes that are not UTF-8",
            vec![0xff, 0xfe, 0x00, 0x7b],
            format!("{not_json}: expected value at line 1 column 1"),
        ),
        (
            "a NaN strength",
            br#"{"spec": {"version": 1, "operation": {"kind": "edit", "input": "uploads/a.png", "attributes": {"smiling": NaN}}}}"#.to_vec(),
            format!("{not_json}: expected value at line 1 column 107"),
        ),
        (
            "an infinite strength",
            br#"{"spec": {"version": 1, "operation": {"kind": "edit", "input": "uploads/a.png", "attributes": {"smiling": 1e999}}}}"#.to_vec(),
            format!("{not_json}: number out of range at line 1 column 111"),
        ),
        (
            "a JSON array",
            b"[1, 2, 3]".to_vec(),
            format!("{not_json}: expected a JSON object, found an array"),
        ),
        (
            "an unknown field",
            serde_json::to_vec(&json!({"spec": {}, "colour": "red"})).unwrap(),
            format!("{not_json}: unknown field `colour`, expected one of `spec`, `idempotency_key`, `priority`, `deadline_secs` at line 1 column 9"),
        ),
        (
            "no spec",
            b"{}".to_vec(),
            format!("{not_json}: missing field `spec` at line 1 column 2"),
        ),
        (
            "a priority beyond i16",
            br#"{"spec": {}, "priority": 40000}"#.to_vec(),
            format!("{not_json}: invalid value: integer `40000`, expected i16 at line 1 column 30"),
        ),
        (
            "a negative deadline",
            br#"{"spec": {}, "deadline_secs": -5}"#.to_vec(),
            format!("{not_json}: invalid value: integer `-5`, expected u32 at line 1 column 32"),
        ),
    ];
    for (case, body, error) in cases {
        refused(&h, case, Request::post(jobs, body), 422, &error).await;
    }

    let mut zero_deadline = edit("uploads/a/face.png");
    zero_deadline["deadline_secs"] = json!(0);
    refused(
        &h,
        "a zero deadline",
        Request::post_json(jobs, &zero_deadline),
        422,
        "deadline_secs 0 is outside 1..=21600",
    )
    .await;
    for (case, key) in [
        (
            "a control character in the idempotency key",
            json!("key\u{7}bell"),
        ),
        ("a 201-character idempotency key", json!("k".repeat(201))),
        ("an empty idempotency key", json!("")),
    ] {
        let mut body = edit("uploads/a/face.png");
        body["idempotency_key"] = key;
        refused(
            &h,
            case,
            Request::post_json(jobs, &body),
            422,
            "idempotency_key must be 1 to 200 printable characters",
        )
        .await;
    }
    h.stop().await;
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_field_at_fault() {
    let mut h = start("bad_http_spec").await;
    let input = "uploads/a/face.png";
    let spec_error = "invalid spec: job spec does not match version 1";
    let sweep = |frames: Value| {
        json!({
            "version": 1,
            "operation": { "kind": "edit_sweep", "input": input, "attribute": "smiling",
                           "strength": 1.0, "frames": frames }
        })
    };
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "no version",
            json!({"operation": {"kind": "sample", "count": 1, "temperature": 0.7}}),
            "invalid spec: job spec has no integer `version` field; this build reads version 1".into(),
        ),
        (
            "a future version",
            json!({"version": 2, "operation": {"kind": "sample", "count": 1, "temperature": 0.7}}),
            "invalid spec: job spec version 2 is not supported; this build reads version 1".into(),
        ),
        (
            "an unknown operation",
            json!({"version": 1, "operation": {"kind": "paint", "input": input}}),
            format!("{spec_error}: unknown variant `paint`, expected one of `edit`, `edit_sweep`, `mix`, `mix_sweep`, `morph_chain`, `nine_way_morph`, `sample`, `probe`"),
        ),
        (
            "a negative size",
            json!({"version": 1, "operation": {"kind": "sample", "count": 1, "temperature": 0.7},
                   "output": {"size": -64}}),
            format!("{spec_error}: invalid value: integer `-64`, expected u32"),
        ),
        (
            "a zero size",
            json!({"version": 1, "operation": {"kind": "sample", "count": 1, "temperature": 0.7},
                   "output": {"size": 0}}),
            "invalid spec: output.size is 0; it must be from 16 to 1024".into(),
        ),
        (
            "a frame count beyond u32",
            sweep(json!(4_294_967_296u64)),
            format!("{spec_error}: invalid value: integer `4294967296`, expected u32"),
        ),
        (
            "a million frames",
            sweep(json!(1_000_000)),
            "invalid spec: operation.frames is 1000000; it must be from 2 to 600".into(),
        ),
        (
            "a morph chain of 10 x 600 frames",
            json!({"version": 1, "operation": {"kind": "morph_chain",
                   "faces": vec![input; 10], "frames_per_leg": 600, "hold": 240}}),
            "invalid spec: the morph_chain job would render 7801 frames (loop included); at most 3000 are allowed, so lower the frame or hold counts".into(),
        ),
        (
            "a strength of 11",
            edit_spec(input, json!({"smiling": 11.0})),
            "invalid spec: operation.attributes.smiling is 11; it must be from -10 to 10".into(),
        ),
        (
            "a Unicode attribute name",
            edit_spec(input, json!({"smíling": 1.0})),
            "invalid spec: operation.attributes.smíling: unknown attribute `smíling`; use one of the 40 CelebA names (such as Smiling or Eyeglasses) or a slider (smiling, age, blond_hair, beard, narrow_eyes)".into(),
        ),
        (
            "an emoji attribute name",
            edit_spec(input, json!({"😀": 1.0})),
            "invalid spec: operation.attributes.😀: unknown attribute `😀`; use one of the 40 CelebA names (such as Smiling or Eyeglasses) or a slider (smiling, age, blond_hair, beard, narrow_eyes)".into(),
        ),
        (
            "a misspelt attribute",
            edit_spec(input, json!({"Blond Hair": 1.0})),
            "invalid spec: operation.attributes.Blond Hair: unknown attribute `Blond Hair` (did you mean `blond_hair`?); use one of the 40 CelebA names (such as Smiling or Eyeglasses) or a slider (smiling, age, blond_hair, beard, narrow_eyes)".into(),
        ),
        (
            "a temperature of 100",
            json!({"version": 1, "operation": {"kind": "sample", "count": 1, "temperature": 100}}),
            "invalid spec: operation.temperature is 100; it must be from 0 to 2".into(),
        ),
        (
            "a thousand samples",
            json!({"version": 1, "operation": {"kind": "sample", "count": 1000, "temperature": 0.7}}),
            "invalid spec: operation.count is 1000; it must be from 1 to 64".into(),
        ),
    ];
    for (case, spec, error) in cases {
        refused(
            &h,
            case,
            Request::post_json("/v1/jobs", &submission(spec)),
            422,
            &error,
        )
        .await;
    }
    h.stop().await;
}

#[tokio::test]
async fn input_keys_outside_the_upload_folder_are_refused() {
    let mut h = start("bad_http_keys").await;
    let allowed = "keys are taken literally (never URL-decoded) and may only hold ASCII letters, digits, `-`, `_`, `.` and `/` between segments";
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "a parent segment",
            "uploads/../jobs/0190/result.png",
            r#"invalid input: key "uploads/../jobs/0190/result.png" has a `..`, `.` or empty segment; keys may not leave their folder"#.into(),
        ),
        (
            "an absolute path",
            "/etc/passwd",
            r#"invalid input: key "/etc/passwd" is an absolute path; keys are relative to the bucket, under "uploads/""#.into(),
        ),
        (
            "another bucket",
            "s3://other-bucket/uploads/face.png",
            r#"invalid input: key "s3://other-bucket/uploads/face.png" is a URL; name an object key under "uploads/" of the configured bucket, never another bucket or address"#.into(),
        ),
        (
            "an HTTP URL",
            "http://169.254.169.254/latest/meta-data",
            r#"invalid input: key "http://169.254.169.254/latest/meta-data" is a URL; name an object key under "uploads/" of the configured bucket, never another bucket or address"#.into(),
        ),
        (
            "a URL-encoded parent segment",
            "uploads/%2e%2e/jobs/x.png",
            format!(r#"invalid input: key "uploads/%2e%2e/jobs/x.png" holds '%'; {allowed}"#),
        ),
        (
            "a backslash",
            "uploads\\..\\jobs\\x.png",
            format!(r#"invalid input: key "uploads\\..\\jobs\\x.png" holds '\\'; {allowed}"#),
        ),
        (
            "a Unicode file name",
            "uploads/a/fäce.png",
            format!(r#"invalid input: key "uploads/a/fäce.png" holds 'ä'; {allowed}"#),
        ),
        (
            "a right-to-left override",
            "uploads/a/face\u{202e}gnp.exe",
            format!(r#"invalid input: key "uploads/a/face\u{{202e}}gnp.exe" holds '\u{{202e}}'; {allowed}"#),
        ),
        (
            "a key in the outputs folder",
            "jobs/0190/result.png",
            r#"invalid input: key "jobs/0190/result.png" does not name an object under "uploads/", the only folder it may name"#.into(),
        ),
        (
            "the upload folder itself",
            "uploads/",
            r#"invalid input: key "uploads/" does not name an object under "uploads/", the only folder it may name"#.into(),
        ),
    ];
    for (case, key, error) in cases {
        refused(
            &h,
            case,
            Request::post_json("/v1/jobs", &edit(key)),
            422,
            &error,
        )
        .await;
    }
    refused(
        &h,
        "a 2000-byte key",
        Request::post_json("/v1/jobs", &edit(&format!("uploads/{}", "a".repeat(2000)))),
        422,
        "invalid input: key is 2008 bytes long; S3 keys hold at most 1024",
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn bad_ids_and_query_parameters_are_named_and_never_reach_sql() {
    let mut h = start("bad_http_query").await;
    let unknown = Uuid::now_v7();
    let cases: Vec<(&str, Request, u16, String)> = vec![
        (
            "a job id that is not a UUID",
            Request::get("/v1/jobs/not-a-uuid"),
            422,
            r#""not-a-uuid" is not a job or batch id (a UUID)"#.into(),
        ),
        (
            "an unknown job",
            Request::get(&format!("/v1/jobs/{unknown}")),
            404,
            format!("no job {unknown}"),
        ),
        (
            "cancelling an unknown job",
            Request::post(&format!("/v1/jobs/{unknown}/cancel"), Vec::new()),
            404,
            format!("no job {unknown}"),
        ),
        (
            "an unknown batch",
            Request::get(&format!("/v1/batches/{unknown}")),
            404,
            format!("no batch {unknown}"),
        ),
        (
            "a page of 0 jobs",
            Request::get("/v1/jobs?limit=0"),
            422,
            "limit 0 is outside 1..=500".into(),
        ),
        (
            "a limit that is not a number",
            Request::get("/v1/jobs?limit=all"),
            422,
            "Failed to deserialize query string: limit: invalid digit found in string".into(),
        ),
        (
            "a date that is not a date",
            Request::get("/v1/jobs?before=yesterday"),
            422,
            "Failed to deserialize query string: before: input contains invalid characters".into(),
        ),
        (
            "SQL in the status filter",
            Request::get("/v1/jobs?status=queued%27%3B%20DROP%20TABLE%20jobs%3B--"),
            422,
            r#"unknown job status "queued'; DROP TABLE jobs;--""#.into(),
        ),
    ];
    for (case, request, status, error) in cases {
        refused(&h, case, request, status, &error).await;
    }

    // The kind filter takes any text, and it is a bound parameter: SQL in
    // it matches no job and changes nothing.
    let (status, _, body) = send(
        &h,
        Request::get("/v1/jobs?kind=edit%27%20OR%20%271%27%3D%271"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs"], json!([]));
    let (_, _, all) = send(&h, Request::get("/v1/jobs?kind=edit")).await;
    assert!(!all["jobs"].as_array().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn bad_batch_manifests_are_refused_whole() {
    let mut h = start("bad_http_batch").await;
    let line = |key: &str| serde_json::to_string(&edit(key)).unwrap();
    let good = line("uploads/a/face.png");
    let cases: Vec<(&str, String, Vec<u8>, String)> = vec![
        (
            "an empty manifest",
            "/v1/batches".into(),
            b"\n\n".to_vec(),
            "batch manifest has no jobs".into(),
        ),
        (
            "a manifest that is not UTF-8",
            "/v1/batches".into(),
            vec![0xc3, 0x28],
            "batch manifest is not UTF-8: invalid utf-8 sequence of 1 bytes from index 0".into(),
        ),
        (
            "a bad key on line 3",
            "/v1/batches".into(),
            format!("{good}\n{good}\n{}\n", line("../etc/passwd")).into_bytes(),
            r#"batch manifest line 3: invalid input: key "../etc/passwd" has a `..`, `.` or empty segment; keys may not leave their folder"#.into(),
        ),
        (
            "a line nested 10,000 deep",
            "/v1/batches".into(),
            format!("{good}\n{{\"spec\": {}\n", "[".repeat(10_000)).into_bytes(),
            "batch manifest line 2: submission is not valid JSON of the submission shape: recursion limit exceeded at line 1 column 136".into(),
        ),
        (
            "1001 jobs",
            "/v1/batches".into(),
            vec![good.as_str(); 1001].join("\n").into_bytes(),
            "batch has 1001 jobs; at most 1000 are allowed".into(),
        ),
        (
            "a label with a control character",
            "/v1/batches?label=nightly%1B%5B31m".into(),
            good.clone().into_bytes(),
            "label must be 1 to 200 printable characters".into(),
        ),
        (
            "a 201-character label",
            format!("/v1/batches?label={}", "l".repeat(201)),
            good.clone().into_bytes(),
            "label must be 1 to 200 printable characters".into(),
        ),
    ];
    for (case, path, body, error) in cases {
        refused(&h, case, Request::post(&path, body), 422, &error).await;
    }

    // A Unicode label is a fine label, stored and returned as it came.
    let label = "Ünïcödé 批次 🎉";
    let response = h
        .http
        .post(h.url("/v1/batches"))
        .query(&[("label", label)])
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let batch: Value = response.json().await.unwrap();
    let id = batch["batch_id"].as_str().unwrap();
    let status: Value = h.get_json(&format!("/v1/batches/{id}")).await;
    assert_eq!(status["batch"]["label"], label);
    h.stop().await;
}

#[tokio::test]
async fn a_client_past_its_rate_gets_429_with_retry_after_and_others_go_on() {
    let mut h = Harness::start_with(TestEnv::new("bad_http_rate"), |config| {
        config.http.rate_limit.requests_per_second = 1;
        config.http.rate_limit.burst = 3;
    })
    .await;
    for _ in 0..3 {
        let (status, _, _) = send(&h, Request::get("/v1/jobs")).await;
        assert_eq!(status, 200);
    }
    let (status, headers, body) = send(&h, Request::get("/v1/jobs")).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        body["error"],
        "too many requests from 127.0.0.1: at most 1 per second after a burst of 3; retry in 1 s"
    );
    // Guessing tokens counts against the same bucket.
    let (status, _, _) = send(&h, Request::get("/v1/jobs").anonymous()).await;
    assert_eq!(status, 429);
    // Probes are never limited.
    let (status, _, _) = send(&h, Request::get("/healthz")).await;
    assert_eq!(status, 200);

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, _) = send(&h, Request::get("/v1/jobs")).await;
    assert_eq!(status, 200, "the bucket refills");
    h.stop().await;
}
