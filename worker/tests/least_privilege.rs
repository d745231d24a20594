//! The scheduler, a worker and glowctl run under the least-privilege
//! Postgres roles of `deploy/postgres/least-privilege.sql` and RabbitMQ
//! permissions of `deploy/rabbitmq/least-privilege.sh`, each applied as it
//! is to the test's schema and virtual host: submissions over HTTP and the
//! queue, a batch, a queued and a running cancel all go through, and
//! neither database role may delete jobs or rewrite the event log.

mod common;

use std::process::Command;

use common::{slow_sweep_spec, tiny_model, write_faces, Stack};
use contract::queue::JobStatus;
use glowctl::{SubmitOptions, Via};
use jobs::testkit::{BrokerUser, TestEnv};
use serde_json::json;

/// The grants a deployment applies, read from the file it applies.
const GRANTS: &str = include_str!("../../deploy/postgres/least-privilege.sql");

/// Broker users for the scheduler, a worker and glowctl, with the
/// permissions the deployment script gives them.
struct BrokerUsers {
    scheduler: BrokerUser,
    worker: BrokerUser,
    client: BrokerUser,
}

impl BrokerUsers {
    fn create(env: &TestEnv) -> Self {
        let suffix = &env.vhost[env.vhost.len() - 10..];
        let user = |role: &str| env.add_broker_user(&format!("lp-{suffix}-{role}"), "lp-password");
        let users = BrokerUsers {
            scheduler: user("scheduler"),
            worker: user("worker"),
            client: user("client"),
        };
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/rabbitmq/least-privilege.sh"
        );
        let out = Command::new(script)
            .env("GLOWLINE_VHOST", &env.vhost)
            .env("GLOWLINE_SCHEDULER_USER", &users.scheduler.name)
            .env("GLOWLINE_WORKER_USER", &users.worker.name)
            .env("GLOWLINE_CLIENT_USER", &users.client.name)
            .output()
            .expect("run deploy/rabbitmq/least-privilege.sh");
        assert!(
            out.status.success(),
            "least-privilege.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        users
    }
}

/// `env`'s broker URL with `user` as the credentials.
fn broker_url(env: &TestEnv, user: &BrokerUser) -> String {
    let (_, host) = env.broker.url.split_once('@').unwrap();
    format!("amqp://{}:{}@{host}", user.name, user.password)
}

/// The two roles of the grants file, named for one test and dropped with it.
struct Roles {
    admin_url: String,
    scheduler: String,
    worker: String,
}

impl Roles {
    /// Runs the grants file against `env`'s (migrated) schema as the
    /// administrator, with the role and schema names made the test's own.
    fn create(env: &TestEnv) -> Self {
        let schema = &env.database.schema;
        let suffix = &schema[schema.len() - 10..];
        let roles = Roles {
            admin_url: env.database.url.clone(),
            scheduler: format!("lp_{suffix}_scheduler"),
            worker: format!("lp_{suffix}_worker"),
        };
        let sql = GRANTS
            .replace("glowline_scheduler", &roles.scheduler)
            .replace("glowline_worker", &roles.worker)
            .replace("glowline.", &format!("{schema}."))
            .replace("SCHEMA glowline", &format!("SCHEMA {schema}"));
        roles.psql(&sql);
        roles
    }

    /// Runs `sql` as the administrator, stopping at the first error.
    fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args([&self.admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The administrator's URL with `role` as the user.
    fn url(&self, role: &str) -> String {
        let (scheme, rest) = self.admin_url.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{role}@{host}")
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let (scheduler, worker) = (&self.scheduler, &self.worker);
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE usename IN ('{scheduler}', '{worker}');
                     DROP OWNED BY {scheduler}, {worker};
                     DROP ROLE {scheduler}, {worker};"
                ),
            ])
            .output();
    }
}

#[tokio::test]
async fn the_services_run_under_the_least_privilege_grants() {
    let mut env = TestEnv::new("least_privilege");
    // The owner (here the administrator) migrates; the services do not.
    jobs::db::connect(&env.database)
        .await
        .unwrap()
        .close()
        .await;
    let roles = Roles::create(&env);
    let broker_users = BrokerUsers::create(&env);
    let (scheduler_database, scheduler_broker, worker_broker) = (
        roles.url(&roles.scheduler),
        broker_url(&env, &broker_users.scheduler),
        broker_url(&env, &broker_users.worker),
    );
    // The stack's glowctl client connects as the client user.
    env.broker.url = broker_url(&env, &broker_users.client);
    let mut stack = Stack::start_in(env, |config| {
        config.database.url = scheduler_database;
        config.database.migrate = false;
        config.broker.url = scheduler_broker;
    })
    .await;
    let inputs = tempfile::tempdir().unwrap();
    write_faces(inputs.path(), 2);
    let sweep = inputs.path().join("sweep.json");
    std::fs::write(&sweep, slow_sweep_spec().to_string()).unwrap();
    let sweep = stack.client.prepare(&sweep).await.unwrap();

    // The scheduler cancels a queued job: it updates the job, appends its
    // event and leaves the announcement in the outbox.
    let queued = stack
        .client
        .submit(&sweep, &SubmitOptions::default(), Via::Http)
        .await
        .unwrap();
    assert_eq!(stack.client.cancel(queued).await.unwrap(), "cancelled");

    // The worker claims, reports progress, stops on a cancel request and
    // renders a batch to success.
    let mut config = stack.worker_config(tiny_model());
    config.database.url = roles.url(&roles.worker);
    config.database.migrate = false;
    config.broker.url = worker_broker;
    stack.start_worker(config).await;
    let running = stack
        .client
        .submit(&sweep, &SubmitOptions::default(), Via::Http)
        .await
        .unwrap();
    stack
        .wait_for(running, "the sweep to render", |job| {
            job.status == JobStatus::Running && job.progress > 0.0
        })
        .await;
    assert_eq!(stack.client.cancel(running).await.unwrap(), "requested");
    let job = stack
        .wait_for(running, "the cancel to land", |job| {
            job.status.is_terminal()
        })
        .await;
    assert_eq!(job.status, JobStatus::Cancelled);

    // Over the queue: the scheduler consumes it and replies.
    let edit = inputs.path().join("edit.json");
    let spec = json!({
        "version": 1,
        "alignment": { "skip": true },
        "operation": { "kind": "edit", "input": "face1.png", "attributes": { "beard": 1.0 } },
        "output": { "size": 32 }
    });
    std::fs::write(&edit, spec.to_string()).unwrap();
    let edit = stack.client.prepare(&edit).await.unwrap();
    let by_queue = stack
        .client
        .submit(&edit, &SubmitOptions::default(), Via::Queue)
        .await
        .unwrap();
    let job = stack
        .wait_for(by_queue, "the queued edit", |job| job.status.is_terminal())
        .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);

    let manifest: String = (0..3)
        .map(|i| {
            let spec = json!({
                "version": 1,
                "alignment": { "skip": true },
                "operation": { "kind": "edit", "input": "face0.png", "attributes": { "smiling": f64::from(i) / 2.0 } },
                "output": { "size": 32 }
            });
            format!("{spec}\n")
        })
        .collect();
    let (batch, _) = stack
        .client
        .submit_batch(&manifest, inputs.path(), None)
        .await
        .unwrap();
    let status = stack.client.wait_batch(batch, false).await.unwrap();
    assert_eq!(status.status, "succeeded", "{status:?}");

    // Neither role may erase or forge history, nor change the tables.
    let schema = stack.env.database.schema.clone();
    for role in [&roles.scheduler, &roles.worker] {
        let pool = sqlx::PgPool::connect(&roles.url(role)).await.unwrap();
        for statement in [
            format!("DELETE FROM {schema}.jobs"),
            format!("DELETE FROM {schema}.job_events"),
            format!("UPDATE {schema}.job_events SET event = 'forged'"),
            format!("DROP TABLE {schema}.outbox"),
        ] {
            let error = sqlx::query(&statement).execute(&pool).await.unwrap_err();
            let code = error.as_database_error().and_then(|e| e.code());
            assert!(
                matches!(code.as_deref(), Some("42501" | "P0001")),
                "{role} ran {statement:?}: {error}"
            );
        }
        pool.close().await;
    }
    stack.stop().await;
}
