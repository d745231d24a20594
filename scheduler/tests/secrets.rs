//! Secrets never reach logs or answers: the real scheduler binary, logging
//! at debug level, is given an API token, a database password, a broker
//! password and S3 keys, is sent good and bad tokens and bad submissions,
//! and neither its output nor its answers hold any of them.

use std::process::{Command, Stdio};
use std::time::Duration;

use jobs::testkit::{eventually, TestEnv, TEST_S3_ACCESS_KEY, TEST_S3_SECRET_KEY};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// A free loopback port, as the OS hands one out.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn secrets_stay_out_of_logs_and_answers() {
    let env = TestEnv::new("secrets_logs");
    env.store().await;
    let suffix = &env.vhost[env.vhost.len() - 10..];
    let api_token = format!("api-token-{suffix}-never-logged");
    let database_password = format!("db-password-{suffix}");
    let broker_user = env.add_broker_user(
        &format!("secrets-test-{suffix}"),
        &format!("broker-password-{suffix}"),
    );
    // Trust authentication ignores the database password, but the
    // scheduler still carries it in its connect options.
    let broker_url = format!("amqp://{}@127.0.0.1:5672/{}", broker_user.name, env.vhost);
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .env("GLOWLINE_API_TOKEN", &api_token)
        .env("GLOWLINE_DATABASE_PASSWORD", &database_password)
        .env("GLOWLINE_BROKER_PASSWORD", &broker_user.password)
        .env("AWS_ACCESS_KEY_ID", TEST_S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_S3_SECRET_KEY)
        .env(
            "GLOWLINE_SCHEDULER__HTTP__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("GLOWLINE_SCHEDULER__DATABASE__URL", &env.database.url)
        .env("GLOWLINE_SCHEDULER__DATABASE__SCHEMA", &env.database.schema)
        .env("GLOWLINE_SCHEDULER__BROKER__URL", &broker_url)
        .env(
            "GLOWLINE_SCHEDULER__S3__ENDPOINT",
            env.s3.endpoint.as_deref().unwrap(),
        )
        .env("GLOWLINE_SCHEDULER__S3__BUCKET", &env.s3.bucket)
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the scheduler binary");

    let base = format!("http://127.0.0.1:{port}");
    let anonymous = reqwest::Client::new();
    // Ready means the broker accepted the password and S3 the keys.
    eventually("the scheduler to be ready", Duration::from_secs(60), || {
        let request = anonymous.get(format!("{base}/readyz")).send();
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;

    let mut answers = String::new();
    let near_misses = [
        format!("{api_token}x"),
        api_token[..api_token.len() - 1].to_owned(),
        api_token.to_uppercase(),
    ];
    for wrong in &near_misses {
        let response = anonymous
            .get(format!("{base}/v1/jobs"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        answers.push_str(&format!("{:?}", response.headers()));
        answers.push_str(&response.text().await.unwrap());
    }
    let submissions = [
        json!({ "spec": { "version": 1, "operation": { "kind": "edit",
            "input": "uploads/s/face.png", "attributes": { "smiling": 1.0 } } } }),
        json!({ "spec": { "version": 1, "operation": { "kind": "edit",
            "input": "uploads/../jobs/x.png", "attributes": {} } } }),
        json!({ "spec": { "version": 7 } }),
    ];
    for submission in &submissions {
        let response = anonymous
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(&api_token)
            .json(submission)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status == 201 || status == 422, "{status}: {body}");
        if status == 201 {
            let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["job"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let job = anonymous
                .get(format!("{base}/v1/jobs/{id}"))
                .bearer_auth(&api_token)
                .send()
                .await
                .unwrap();
            assert_eq!(job.status(), 200);
            answers.push_str(&job.text().await.unwrap());
        } else {
            answers.push_str(&body);
        }
    }

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "scheduler exited with {status}");
    let output = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        output.contains("DEBUG"),
        "the scheduler logged nothing at debug level:\n{output}"
    );

    let secrets = [
        ("the API token", api_token.as_str()),
        ("the database password", database_password.as_str()),
        ("the broker password", broker_user.password.as_str()),
        ("the S3 secret key", TEST_S3_SECRET_KEY),
    ];
    for (what, secret) in secrets {
        assert!(
            !output.contains(secret),
            "{what} appears in the scheduler's log"
        );
    }
    for wrong in &near_misses {
        assert!(
            !output.contains(wrong.as_str()) && !answers.contains(wrong.as_str()),
            "a refused token appears in the log or an answer"
        );
    }
    for (what, secret) in secrets {
        assert!(!answers.contains(secret), "{what} appears in an answer");
    }
}
