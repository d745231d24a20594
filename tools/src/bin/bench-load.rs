//! `bench-load`: how fast the job system's plumbing is, measured on the real
//! binaries with `probe` jobs, which a worker answers without rendering.
//!
//! Three phases run side by side in one stack: a burst of submissions on
//! the submission queue (published as fast as the broker confirms them), a
//! burst over `POST /v1/jobs` from concurrent clients, and a steady rate
//! alternating the two, well under capacity, for latency without a
//! backlog. For each phase it prints submissions accepted per second, jobs
//! finished per second, end-to-end latency percentiles, where that time
//! went (from the timestamps Postgres records at each step), and the CPU
//! time each process spent. The scheduler and workers run with their
//! shipped defaults (relay poll, leases, pool sizes).
//!
//! It is a benchmark, not a test: it asserts nothing about speed and saves
//! nothing. It stays on loopback and is bounded by `--max-secs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use clap::Parser;
use contract::queue::{SubmitRequest, EVENTS_EXCHANGE, JOBS_EXCHANGE};
use sqlx::{PgPool, Row};
use tokio::sync::Mutex;
use tools::measure::{CpuGroups, CpuSnapshot, Millis, Summary, OTHER_GROUP};
use tools::stack::{wait_for_log, Binaries, Fleet, S3Server, Stack, StackOptions};
use tools::submit::{HttpSubmitter, QueueSubmitter};

/// Pause between polls of the job store while a phase drains.
const POLL: Duration = Duration::from_millis(100);

/// Submissions, end-to-end latency and where the time goes, with jobs that
/// render nothing.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Jobs of the queue burst.
    #[arg(long, default_value_t = 2000)]
    queue_jobs: usize,
    /// Jobs of the HTTP burst.
    #[arg(long, default_value_t = 2000)]
    http_jobs: usize,
    /// Clients posting at once in the HTTP burst.
    #[arg(long, default_value_t = 16)]
    http_clients: usize,
    /// Jobs per second of the steady phase.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of the steady phase.
    #[arg(long, default_value_t = 20)]
    steady_secs: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Interactive slots per worker (probes are interactive).
    #[arg(long, default_value_t = 4)]
    slots: u16,
    /// Bound on the whole run in seconds.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// The model the workers load (probes never use it).
    #[arg(long, default_value = "models/celeba64.safetensors")]
    model: PathBuf,
    /// Keep the processes' logs.
    #[arg(long)]
    keep_logs: bool,
}

/// One phase's submissions: the idempotency-key prefix of its jobs, and when
/// the client sent each one (key to time).
struct Phase {
    name: String,
    prefix: String,
    sent: BTreeMap<String, DateTime<Utc>>,
    started: DateTime<Utc>,
    /// When the last submission was confirmed (queue) or answered (HTTP).
    submitted: DateTime<Utc>,
    cpu: BTreeMap<String, f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::telemetry::init();
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let binaries = Binaries::locate()?;
    let model = std::fs::canonicalize(&args.model)
        .with_context(|| format!("model {}", args.model.display()))?;
    let run_dir = std::env::temp_dir().join(format!(
        "glowline-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&run_dir)?;

    let mut s3 = S3Server::start(&binaries.s3s_fs, &run_dir.join("s3"), &run_dir).await?;
    let options = StackOptions {
        name: "bench".into(),
        run_dir: run_dir.clone(),
        model,
        scheduler: Vec::new(),
        worker: vec![
            ("WORKER__THREADS".into(), "1".into()),
            ("WORKER__SLOTS__INTERACTIVE".into(), args.slots.to_string()),
            ("WORKER__SLOTS__LONG".into(), "0".into()),
        ],
    };
    let mut stack = Stack::start(&binaries, &s3.endpoint(), &options).await?;
    let mut fleet = Fleet::start(stack.worker_template.clone(), args.workers)?;
    for slot in 0..args.workers {
        wait_for_log(
            &run_dir.join(format!("worker-{slot}.1.log")),
            "consuming work",
        )
        .await?;
    }
    let groups = CpuGroups::new(vec![
        (
            "scheduler".into(),
            stack.scheduler_pid().into_iter().collect(),
        ),
        ("workers".into(), fleet.pids()),
        ("s3 (s3s-fs)".into(), s3.pid().into_iter().collect()),
        ("bench client".into(), vec![std::process::id()]),
    ]);
    println!(
        "bench-load: probe jobs, {} workers x {} slots, scheduler and workers at their defaults; logs in {}",
        args.workers,
        args.slots,
        run_dir.display()
    );

    let mut queue = QueueSubmitter::new(stack.env.broker.clone());
    let http = HttpSubmitter::new(&stack.scheduler_url, &stack.api_token);
    let mut phases = Vec::new();

    let cpu = CpuSnapshot::take();
    let mut phase = queue_burst(&mut queue, args.queue_jobs).await?;
    drain(&stack.pool, &phase, deadline).await?;
    phase.cpu = groups.spent(&cpu, &CpuSnapshot::take());
    phases.push(phase);

    let cpu = CpuSnapshot::take();
    let mut phase = http_burst(&http, args.http_jobs, args.http_clients).await?;
    drain(&stack.pool, &phase, deadline).await?;
    phase.cpu = groups.spent(&cpu, &CpuSnapshot::take());
    phases.push(phase);

    let cpu = CpuSnapshot::take();
    let mut phase = steady(&mut queue, &http, args.rate, args.steady_secs).await?;
    drain(&stack.pool, &phase, deadline).await?;
    phase.cpu = groups.spent(&cpu, &CpuSnapshot::take());
    phases.push(phase);

    let mut results = Vec::new();
    for phase in &phases {
        results.push(Timeline::load(&stack.pool, phase).await?);
    }
    queue.close().await;
    fleet.stop(Duration::from_secs(10)).await;
    stack.stop().await;
    s3.stop().await;

    print_report(&phases, &results);
    if !args.keep_logs {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

fn probe(key: String) -> SubmitRequest {
    SubmitRequest {
        spec: serde_json::json!({ "version": 1, "operation": { "kind": "probe" } }),
        idempotency_key: Some(key),
        priority: 0,
        deadline_secs: None,
    }
}

/// Publishes `count` probes on the submission queue as fast as the client
/// can write them, then waits for every confirm.
async fn queue_burst(queue: &mut QueueSubmitter, count: usize) -> anyhow::Result<Phase> {
    let prefix = "queue-".to_owned();
    let started = Utc::now();
    let mut sent = BTreeMap::new();
    let mut confirms = Vec::with_capacity(count);
    for index in 0..count {
        let key = format!("{prefix}{index}");
        sent.insert(key.clone(), Utc::now());
        confirms.push(queue.publish(&probe(key)).await?);
    }
    for confirm in confirms {
        let confirmation = confirm.await?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            bail!("the broker refused a submission");
        }
    }
    Ok(Phase {
        name: "queue burst".into(),
        prefix,
        sent,
        started,
        submitted: Utc::now(),
        cpu: BTreeMap::new(),
    })
}

/// Posts `count` probes from `clients` concurrent clients.
async fn http_burst(http: &HttpSubmitter, count: usize, clients: usize) -> anyhow::Result<Phase> {
    let prefix = "http-".to_owned();
    let started = Utc::now();
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (http, next, sent, prefix) = (http.clone(), next.clone(), sent.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return anyhow::Ok(());
                }
                let key = format!("{prefix}{index}");
                sent.lock().await.insert(key.clone(), Utc::now());
                http.submit(&probe(key)).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let sent = std::mem::take(&mut *sent.lock().await);
    Ok(Phase {
        name: "HTTP burst".into(),
        prefix,
        sent,
        started,
        submitted: Utc::now(),
        cpu: BTreeMap::new(),
    })
}

/// Submits `rate` probes a second for `secs` seconds, alternating the queue
/// (each confirm awaited) and HTTP.
async fn steady(
    queue: &mut QueueSubmitter,
    http: &HttpSubmitter,
    rate: f64,
    secs: u64,
) -> anyhow::Result<Phase> {
    if !(rate > 0.0 && rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let prefix = "steady-".to_owned();
    let count = (rate * secs as f64).round() as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let started = Utc::now();
    let mut sent = BTreeMap::new();
    for index in 0..count {
        ticker.tick().await;
        let key = format!("{prefix}{index}");
        sent.insert(key.clone(), Utc::now());
        if index % 2 == 0 {
            queue.submit(&probe(key)).await?;
        } else {
            http.submit(&probe(key)).await?;
        }
    }
    Ok(Phase {
        name: format!("steady {rate}/s"),
        prefix,
        sent,
        started,
        submitted: Utc::now(),
        cpu: BTreeMap::new(),
    })
}

/// Waits until every job of `phase` finished and the relay picked up its
/// terminal event, the last step the timeline reads.
async fn drain(pool: &PgPool, phase: &Phase, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let finished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs j WHERE j.idempotency_key LIKE $1
             AND j.status NOT IN ('queued', 'running')
             AND EXISTS (SELECT 1 FROM outbox o WHERE o.exchange = $2
                         AND o.payload->>'job_id' = j.id::text AND o.sent_at IS NOT NULL)",
        )
        .bind(format!("{}%", phase.prefix))
        .bind(EVENTS_EXCHANGE)
        .fetch_one(pool)
        .await?;
        if finished as usize >= phase.sent.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: {finished} of {} jobs finished and announced by the bound",
                phase.name,
                phase.sent.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The steps of one job, as Postgres recorded them (each the start of the
/// transaction that took the step) and as the client sent it.
struct Steps {
    sent: DateTime<Utc>,
    /// The scheduler recorded the job and its dispatch (`jobs.created_at`).
    recorded: DateTime<Utc>,
    /// The relay picked the dispatch up to publish it (`outbox.sent_at`).
    relayed: DateTime<Utc>,
    /// A worker claimed it (`jobs.started_at`).
    claimed: DateTime<Utc>,
    /// The worker committed its success (`jobs.finished_at`).
    finished: DateTime<Utc>,
    /// The relay picked the terminal event up.
    announced: DateTime<Utc>,
}

/// Seconds from `a` to `b`.
fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// What one phase's jobs went through.
struct Timeline {
    jobs: Vec<Steps>,
    succeeded: usize,
    /// When the last job was recorded and finished.
    last_recorded: DateTime<Utc>,
    last_finished: DateTime<Utc>,
}

impl Timeline {
    async fn load(pool: &PgPool, phase: &Phase) -> anyhow::Result<Self> {
        let rows = sqlx::query(
            "WITH dispatch AS (
                 SELECT payload->>'job_id' AS id, min(sent_at) AS at FROM outbox
                 WHERE exchange = $2 GROUP BY 1),
             announcement AS (
                 SELECT payload->>'job_id' AS id, min(sent_at) AS at FROM outbox
                 WHERE exchange = $3 GROUP BY 1)
             SELECT j.idempotency_key, j.status, j.created_at, j.started_at, j.finished_at,
                    d.at AS relayed, a.at AS announced
             FROM jobs j
             JOIN dispatch d ON d.id = j.id::text
             JOIN announcement a ON a.id = j.id::text
             WHERE j.idempotency_key LIKE $1",
        )
        .bind(format!("{}%", phase.prefix))
        .bind(JOBS_EXCHANGE)
        .bind(EVENTS_EXCHANGE)
        .fetch_all(pool)
        .await?;

        let mut jobs = Vec::with_capacity(rows.len());
        let mut succeeded = 0;
        for row in rows {
            let key: String = row.try_get("idempotency_key")?;
            let status: String = row.try_get("status")?;
            succeeded += usize::from(status == "succeeded");
            let (Some(claimed), Some(finished)) = (
                row.try_get::<Option<DateTime<Utc>>, _>("started_at")?,
                row.try_get::<Option<DateTime<Utc>>, _>("finished_at")?,
            ) else {
                continue;
            };
            jobs.push(Steps {
                sent: *phase
                    .sent
                    .get(&key)
                    .context("a job the bench did not send")?,
                recorded: row.try_get("created_at")?,
                relayed: row.try_get("relayed")?,
                claimed,
                finished,
                announced: row.try_get("announced")?,
            });
        }
        let last = |pick: fn(&Steps) -> DateTime<Utc>| {
            jobs.iter().map(pick).max().unwrap_or(phase.started)
        };
        Ok(Self {
            last_recorded: last(|s| s.recorded),
            last_finished: last(|s| s.finished),
            jobs,
            succeeded,
        })
    }

    fn summary(&self, step: Segment) -> Option<Summary> {
        Summary::of(self.jobs.iter().map(step).collect())
    }
}

/// Seconds between two of a job's recorded steps.
type Segment = fn(&Steps) -> f64;

/// The segments a job's time is split into, in order, with what happens in
/// each.
const SEGMENTS: [(&str, Segment); 5] = [
    (
        "submitted -> recorded   (client, broker or HTTP, scheduler's transaction)",
        |s| secs(s.sent, s.recorded),
    ),
    (
        "recorded -> relayed     (waiting for the outbox relay's next poll)",
        |s| secs(s.recorded, s.relayed),
    ),
    (
        "relayed -> claimed      (publish and confirm, delivery, a free slot, the claim)",
        |s| secs(s.relayed, s.claimed),
    ),
    (
        "claimed -> finished     (the worker: report to S3, then the commit)",
        |s| secs(s.claimed, s.finished),
    ),
    ("submitted -> finished   (end to end)", |s| {
        secs(s.sent, s.finished)
    }),
];

fn print_report(phases: &[Phase], results: &[Timeline]) {
    println!();
    println!(
        "{:<16} {:>6} {:>10} {:>14} {:>14} {:>12}",
        "phase", "jobs", "succeeded", "submitted/s", "recorded/s", "finished/s"
    );
    for (phase, timeline) in phases.iter().zip(results) {
        let n = phase.sent.len() as f64;
        let rate = |until: DateTime<Utc>| n / secs(phase.started, until).max(1e-9);
        println!(
            "{:<16} {:>6} {:>10} {:>14.0} {:>14.0} {:>12.0}",
            phase.name,
            phase.sent.len(),
            timeline.succeeded,
            rate(phase.submitted),
            rate(timeline.last_recorded),
            rate(timeline.last_finished),
        );
    }
    println!(
        "  submitted/s: accepted by the broker (queue) or answered (HTTP); recorded/s: jobs the"
    );
    println!("  scheduler committed; finished/s: jobs workers completed; all from the phase's first send.");

    for (phase, timeline) in phases.iter().zip(results) {
        println!();
        println!(
            "{} ({} jobs), milliseconds:    {:>8} {:>8} {:>8} {:>8}",
            phase.name,
            timeline.jobs.len(),
            "p50",
            "p90",
            "p99",
            "max"
        );
        for (name, step) in SEGMENTS {
            if let Some(s) = timeline.summary(step) {
                println!(
                    "  {name:<78} {:8} {:8} {:8} {:8}",
                    Millis(s.p50),
                    Millis(s.p90),
                    Millis(s.p99),
                    Millis(s.max)
                );
            }
        }
        if let Some(s) = timeline.summary(|s| secs(s.finished, s.announced)) {
            println!(
                "  {:<78} {:8} {:8} {:8} {:8}",
                "finished -> announced    (the relay picks up the terminal event)",
                Millis(s.p50),
                Millis(s.p90),
                Millis(s.p99),
                Millis(s.max)
            );
        }
        let total: f64 = phase.cpu.values().sum();
        let per_job = |seconds: f64| seconds * 1000.0 / phase.sent.len().max(1) as f64;
        let mut shares: Vec<(&String, &f64)> = phase.cpu.iter().collect();
        shares.sort_by(|a, b| b.1.total_cmp(a.1));
        let shares: Vec<String> = shares
            .iter()
            .filter(|(name, _)| name.as_str() != OTHER_GROUP)
            .map(|(name, seconds)| format!("{name} {:.2}", per_job(**seconds)))
            .collect();
        println!(
            "  CPU ms per job: {}; {} {:.2} (of {:.1} CPU s in the phase)",
            shares.join(", "),
            OTHER_GROUP,
            per_job(phase.cpu.get(OTHER_GROUP).copied().unwrap_or(0.0)),
            total
        );
    }
}
