//! `chaos`: pushes short jobs through the real stack while it kills workers
//! with SIGKILL at random moments, again and again, restarts RabbitMQ once,
//! restarts Postgres once and makes S3 unreachable for a while; then audits
//! every job (see `tools::audit`) and prints the figures.
//!
//! The run is bounded (`--max-secs`), stays on loopback and stops by
//! itself. It exits non-zero when any job was lost, finished twice, failed
//! or is stuck, or when a fault could not be injected. `scripts/chaos.sh`
//! builds what it needs and runs it; `--quick` is the CI preset.
//!
//! The jobs are real renders with the shipped model, kept short (64 px
//! stills, a 4-frame GIF every tenth job), on CPU workers of one libtorch
//! thread each: the point is the plumbing between the renders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use contract::queue::{Lane, SubmitRequest, DEAD_LETTER_QUEUE, SUBMIT_QUEUE};
use jobs::shutdown::Shutdown;
use rand::{Rng, SeedableRng};
use sqlx::{PgPool, Row};
use tokio::task::JoinHandle;
use tools::audit::{Audit, EventTap};
use tools::services::SystemServices;
use tools::stack::{count_in_logs, Binaries, Fleet, S3Server, Stack, StackOptions};
use tools::submit::{HttpSubmitter, QueueSubmitter};

/// Every n-th submission goes over HTTP, the rest over the queue: both
/// paths face the faults.
const HTTP_EVERY: usize = 4;

/// Every n-th job is a short animation, so that the long lane faces the
/// faults too.
const ANIMATION_EVERY: usize = 10;

/// Faces uploaded once and shared by every job.
const FACES: usize = 4;

/// Pause between progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long the stack may take, once every job finished, to publish what is
/// left in the outbox and to consume the spare dispatches still queued.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest pause between two tries of a refused submission.
const MAX_SUBMIT_BACKOFF: Duration = Duration::from_secs(2);

/// Short jobs through the real stack under faults, then an audit.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Jobs to submit [default: 500; 80 with --quick].
    #[arg(long)]
    jobs: Option<usize>,
    /// Bound on the whole run in seconds; past it the run stops, audits what
    /// there is and fails [default: 900; 170 with --quick].
    #[arg(long)]
    max_secs: Option<u64>,
    /// Seconds over which submissions are spread; every fault falls inside
    /// this window [default: 120; 30 with --quick].
    #[arg(long)]
    submit_secs: Option<u64>,
    /// Workers running at any time [default: 3; 2 with --quick].
    #[arg(long)]
    workers: Option<usize>,
    /// Seconds S3 stays unreachable [default: 20; 8 with --quick].
    #[arg(long)]
    s3_outage_secs: Option<u64>,
    /// Shortest pause between two worker kills, in seconds.
    #[arg(long, default_value_t = 2.0)]
    kill_min_secs: f64,
    /// Longest pause between two worker kills, in seconds.
    #[arg(long, default_value_t = 6.0)]
    kill_max_secs: f64,
    /// The preset CI runs: fewer jobs and workers, a shorter outage.
    #[arg(long)]
    quick: bool,
    /// Seed of the kill schedule; random when absent (the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// The model the workers render with.
    #[arg(long, default_value = "models/celeba64.safetensors")]
    model: PathBuf,
    /// Folder of aligned faces; the first few JPEGs become the jobs' inputs.
    #[arg(long, default_value = "examples/faces")]
    faces: PathBuf,
    /// Keep the processes' logs even when the run passes.
    #[arg(long)]
    keep_logs: bool,
}

/// The run's shape, from the arguments and the preset.
#[derive(Debug, Clone)]
struct Plan {
    jobs: usize,
    workers: usize,
    bound: Duration,
    submit_window: Duration,
    s3_outage: Duration,
    kill_pause: (f64, f64),
    seed: u64,
}

impl Plan {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let pick = |given: Option<u64>, full: u64, quick: u64| {
            given.unwrap_or(if args.quick { quick } else { full })
        };
        let plan = Self {
            jobs: pick(args.jobs.map(|j| j as u64), 500, 80) as usize,
            workers: pick(args.workers.map(|w| w as u64), 3, 2) as usize,
            bound: Duration::from_secs(pick(args.max_secs, 900, 170)),
            submit_window: Duration::from_secs(pick(args.submit_secs, 120, 30)),
            s3_outage: Duration::from_secs(pick(args.s3_outage_secs, 20, 8)),
            kill_pause: (args.kill_min_secs, args.kill_max_secs),
            seed: args.seed.unwrap_or_else(rand::random),
        };
        if plan.jobs == 0 || plan.workers == 0 {
            bail!("--jobs and --workers must be at least 1");
        }
        if !(0.1..=plan.kill_pause.1).contains(&plan.kill_pause.0) {
            bail!("kill pauses must satisfy 0.1 <= --kill-min-secs <= --kill-max-secs");
        }
        if plan.fault_at(Fault::S3) + plan.s3_outage > plan.submit_window {
            bail!(
                "the S3 outage ({:?}) must end inside the submission window ({:?}): \
                 lengthen --submit-secs",
                plan.s3_outage,
                plan.submit_window
            );
        }
        Ok(plan)
    }

    /// When each fault starts, as a share of the submission window: one
    /// after the other, so that each one's effect can be told apart in the
    /// logs, and all while jobs are still arriving.
    fn fault_at(&self, fault: Fault) -> Duration {
        let share = match fault {
            Fault::Rabbitmq => 0.2,
            Fault::Postgres => 0.45,
            Fault::S3 => 0.65,
        };
        self.submit_window.mul_f64(share)
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Rabbitmq,
    Postgres,
    S3,
}

/// Counters shared by the run's tasks.
#[derive(Default)]
struct Progress {
    submitted: AtomicUsize,
    submit_retries: AtomicUsize,
    kills: AtomicUsize,
}

/// One injected fault, for the report.
struct FaultRecord {
    what: &'static str,
    /// Seconds from the first submission.
    at: f64,
    /// How long the service was away.
    away: f64,
    error: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::telemetry::init();
    let args = Args::parse();
    let plan = Plan::new(&args)?;
    let services = Arc::new(SystemServices::detect()?);
    let passed = run(&args, &plan, services.clone()).await?;
    drop(services);
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the whole experiment; returns whether the audit passed.
async fn run(args: &Args, plan: &Plan, services: Arc<SystemServices>) -> anyhow::Result<bool> {
    let binaries = Binaries::locate()?;
    let model = std::fs::canonicalize(&args.model)
        .with_context(|| format!("model {}", args.model.display()))?;
    let run_dir = std::env::temp_dir().join(format!(
        "glowline-chaos-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&run_dir)?;
    println!(
        "chaos: {} jobs over {:?}, {} workers, seed {}; logs in {}",
        plan.jobs,
        plan.submit_window,
        plan.workers,
        plan.seed,
        run_dir.display()
    );

    let s3 = S3Server::start(&binaries.s3s_fs, &run_dir.join("s3"), &run_dir).await?;
    let options = StackOptions {
        name: "chaos".into(),
        run_dir: run_dir.clone(),
        model,
        scheduler: vec![
            // Leases expire within seconds of a kill and the reaper looks
            // twice a second, so a killed worker's job is back quickly.
            ("REAPER__INTERVAL_MS".into(), "500".into()),
            ("RELAY__POLL_INTERVAL_MS".into(), "50".into()),
            // The run kills workers far more often than any fleet loses
            // them; the attempt limit (a guard against poison jobs) must not
            // turn the run's own kills into failures.
            ("JOBS__MAX_ATTEMPTS".into(), "20".into()),
        ],
        worker: vec![
            ("WORKER__LEASE_SECS".into(), "3".into()),
            ("WORKER__HEARTBEAT_SECS".into(), "1".into()),
            ("WORKER__THREADS".into(), "1".into()),
            ("WORKER__SHUTDOWN_GRACE_SECS".into(), "5".into()),
        ],
    };
    let mut stack = Stack::start(&binaries, &s3.endpoint(), &options).await?;
    let tap = EventTap::declare(&stack.env.broker).await?;
    let faces = upload_faces(&stack, &args.faces).await?;
    let requests: Vec<SubmitRequest> = (0..plan.jobs).map(|i| request(i, &faces)).collect();
    let keys: Vec<String> = requests
        .iter()
        .filter_map(|r| r.idempotency_key.clone())
        .collect();

    let fleet = Fleet::start(stack.worker_template.clone(), plan.workers)?;
    let progress = Arc::new(Progress::default());
    let stop = Shutdown::new();
    let started = Instant::now();
    let deadline = started + plan.bound;

    let submitter = tokio::spawn(submit_all(
        requests,
        plan.submit_window,
        QueueSubmitter::new(stack.env.broker.clone()),
        HttpSubmitter::new(&stack.scheduler_url, &stack.api_token),
        progress.clone(),
        deadline,
    ));
    let killer = tokio::spawn(kill_again_and_again(
        fleet,
        plan.clone(),
        progress.clone(),
        stop.clone(),
    ));
    let faults = tokio::spawn(inject_faults(plan.clone(), services, s3, started));

    let drained = watch(&stack.pool, plan, &progress, &submitter, &faults, started).await;
    stop.trigger();

    let mut fleet = killer.await??;
    let (mut s3, records) = faults.await?;
    if !submitter.is_finished() {
        submitter.abort();
    }
    let last_submission = match submitter.await {
        Ok(Ok(at)) => Some(at),
        Ok(Err(error)) => {
            println!("submissions failed: {error:#}");
            None
        }
        Err(_) => None,
    };
    settle(&stack).await;
    fleet.stop(Duration::from_secs(10)).await;
    stack.stop().await;

    let published = tap.drain().await?;
    let audit = Audit::run(&stack.pool, &stack.store, &keys).await?;
    let redeliveries = count_in_logs(&run_dir, "worker-", "redelivered=true");
    let dead = stack.env.queue_depth(DEAD_LETTER_QUEUE);
    s3.stop().await;

    let report = Report {
        plan,
        progress: &progress,
        records: &records,
        audit: &audit,
        published: &published,
        redeliveries,
        dead_lettered: dead.0 + dead.1,
        started,
        wall: started.elapsed(),
        drained,
        last_submission,
    };
    let passed = report.print();
    if passed && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        println!("logs kept in {}", run_dir.display());
    }
    Ok(passed)
}

/// Uploads the first [`FACES`] JPEGs of `dir`; returns their keys.
async fn upload_faces(stack: &Stack, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(FACES);
    if photos.len() < 2 {
        bail!("{} holds fewer than two JPEG faces", dir.display());
    }
    let mut keys = Vec::new();
    for (index, photo) in photos.iter().enumerate() {
        let key = format!("uploads/chaos/face{index}.jpg");
        stack.store.upload(&key, photo, "image/jpeg").await?;
        keys.push(key);
    }
    Ok(keys)
}

/// The `index`-th job: an edit, a mix or a sample in turn, and every
/// [`ANIMATION_EVERY`]-th a 4-frame GIF on the long lane. Faces are CelebA
/// crops, so alignment is skipped.
fn request(index: usize, faces: &[String]) -> SubmitRequest {
    let face = |k: usize| faces[(index + k) % faces.len()].clone();
    let spec = if index % ANIMATION_EVERY == ANIMATION_EVERY - 1 {
        serde_json::json!({
            "version": 1,
            "operation": { "kind": "mix_sweep", "from": face(0), "to": face(1), "frames": 4 },
            "output": { "size": 32, "formats": ["gif"] },
            "alignment": { "skip": true },
        })
    } else {
        let operation = match index % 3 {
            0 => serde_json::json!({
                "kind": "edit", "input": face(0),
                "attributes": { "smiling": if index % 2 == 0 { 1.0 } else { -1.0 } },
            }),
            1 => serde_json::json!({ "kind": "mix", "from": face(0), "to": face(1), "alpha": 0.5 }),
            _ => serde_json::json!({ "kind": "sample", "count": 1, "temperature": 0.7 }),
        };
        serde_json::json!({
            "version": 1,
            "operation": operation,
            "output": { "size": 64 },
            "alignment": { "skip": true },
            "seed": index,
        })
    };
    SubmitRequest {
        spec,
        idempotency_key: Some(format!("chaos-{index}")),
        priority: 0,
        deadline_secs: None,
    }
}

/// Submits every request at its moment of the window, each until it is
/// accepted (with the same idempotency key); returns when the last one was.
async fn submit_all(
    requests: Vec<SubmitRequest>,
    window: Duration,
    mut queue: QueueSubmitter,
    http: HttpSubmitter,
    progress: Arc<Progress>,
    deadline: Instant,
) -> anyhow::Result<Instant> {
    let start = tokio::time::Instant::now();
    let count = requests.len() as u32;
    for (index, request) in requests.iter().enumerate() {
        tokio::time::sleep_until(start + window * index as u32 / count).await;
        let over_http = index % HTTP_EVERY == HTTP_EVERY - 1;
        let mut tries = 0u32;
        loop {
            let sent = if over_http {
                http.submit(request).await
            } else {
                queue.submit(request).await
            };
            let Err(error) = sent else { break };
            if Instant::now() > deadline {
                return Err(error.context(format!("submission {index} still refused at the bound")));
            }
            tries += 1;
            progress.submit_retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(index, over_http, %error, "submission refused; sending it again");
            let pause = Duration::from_millis(100 * 2u64.pow(tries.min(5)));
            tokio::time::sleep(pause.min(MAX_SUBMIT_BACKOFF)).await;
        }
        progress.submitted.fetch_add(1, Ordering::Relaxed);
    }
    queue.close().await;
    Ok(Instant::now())
}

/// Kills a random worker with SIGKILL after each random pause, and starts
/// a new one in its place, until `stop`.
async fn kill_again_and_again(
    mut fleet: Fleet,
    plan: Plan,
    progress: Arc<Progress>,
    stop: Shutdown,
) -> anyhow::Result<Fleet> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let (shortest, longest) = plan.kill_pause;
    loop {
        let pause = Duration::from_secs_f64(rng.gen_range(shortest..=longest));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait() => return Ok(fleet),
        }
        let slot = rng.gen_range(0..fleet.len());
        if fleet.kill(slot).await {
            progress.kills.fetch_add(1, Ordering::Relaxed);
        }
        fleet.spawn(slot)?;
    }
}

/// Restarts RabbitMQ, then Postgres, then takes S3 away, each at its time
/// of the plan.
async fn inject_faults(
    plan: Plan,
    services: Arc<SystemServices>,
    mut s3: S3Server,
    started: Instant,
) -> (S3Server, Vec<FaultRecord>) {
    let mut records = Vec::new();
    let start = tokio::time::Instant::from_std(started);
    for (fault, what) in [
        (Fault::Rabbitmq, "RabbitMQ restart"),
        (Fault::Postgres, "Postgres restart"),
    ] {
        tokio::time::sleep_until(start + plan.fault_at(fault)).await;
        let at = started.elapsed().as_secs_f64();
        println!("[{at:6.1}s] {what}");
        let services = services.clone();
        let restarted = tokio::task::spawn_blocking(move || match fault {
            Fault::Rabbitmq => services.restart_rabbitmq(),
            _ => services.restart_postgres(),
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let (away, error) = match restarted {
            Ok(away) => (away.as_secs_f64(), None),
            Err(error) => (0.0, Some(format!("{error:#}"))),
        };
        records.push(FaultRecord {
            what,
            at,
            away,
            error,
        });
    }

    tokio::time::sleep_until(start + plan.fault_at(Fault::S3)).await;
    let at = started.elapsed().as_secs_f64();
    println!("[{at:6.1}s] S3 unreachable for {:?}", plan.s3_outage);
    s3.stop().await;
    tokio::time::sleep(plan.s3_outage).await;
    let error = s3.resume().await.err().map(|e| format!("{e:#}"));
    records.push(FaultRecord {
        what: "S3 unreachable",
        at,
        away: started.elapsed().as_secs_f64() - at,
        error,
    });
    (s3, records)
}

/// Prints progress until every job finished after the last fault, the
/// bound passed or Ctrl-C; returns when the jobs finished, if they did.
async fn watch(
    pool: &PgPool,
    plan: &Plan,
    progress: &Progress,
    submitter: &JoinHandle<anyhow::Result<Instant>>,
    faults: &JoinHandle<(S3Server, Vec<FaultRecord>)>,
    started: Instant,
) -> Option<Instant> {
    let mut printed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted; stopping and auditing");
                return None;
            }
        }
        if started.elapsed() > plan.bound {
            println!("the run reached its bound of {:?}", plan.bound);
            return None;
        }
        if submitter.is_finished() && progress.submitted.load(Ordering::Relaxed) < plan.jobs {
            println!("submissions stopped early");
            return None;
        }
        // The database may be restarting: then this round shows nothing.
        let Ok(counts) = status_counts(pool).await else {
            continue;
        };
        let finished: i64 = counts
            .iter()
            .filter(|(status, _)| !matches!(status.as_str(), "queued" | "running"))
            .map(|(_, n)| n)
            .sum();
        if printed.elapsed() >= PROGRESS_EVERY {
            printed = Instant::now();
            let statuses: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
            println!(
                "[{:6.1}s] submitted {}/{} | {} | kills {}",
                started.elapsed().as_secs_f64(),
                progress.submitted.load(Ordering::Relaxed),
                plan.jobs,
                statuses.join(", "),
                progress.kills.load(Ordering::Relaxed)
            );
        }
        if faults.is_finished() && submitter.is_finished() && finished as usize >= plan.jobs {
            return Some(Instant::now());
        }
    }
}

async fn status_counts(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY 1")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
        .collect()
}

/// Lets the stack finish what follows the last job: the relay publishes
/// the last announcements, and the workers consume the spare dispatches
/// that retries left in the queues (each is acknowledged and skipped).
async fn settle(stack: &Stack) {
    let started = Instant::now();
    while started.elapsed() < SETTLE_TIMEOUT {
        let unsent: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                .fetch_one(&stack.pool)
                .await;
        let queued: u64 = tokio::task::block_in_place(|| {
            [SUBMIT_QUEUE, Lane::Interactive.queue(), Lane::Long.queue()]
                .into_iter()
                .map(|queue| {
                    let (ready, unacked) = stack.env.queue_depth(queue);
                    ready + unacked
                })
                .sum()
        });
        if unsent.is_ok_and(|n| n == 0) && queued == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("the stack did not settle within {SETTLE_TIMEOUT:?}");
}

/// Everything the report prints.
struct Report<'a> {
    plan: &'a Plan,
    progress: &'a Progress,
    records: &'a [FaultRecord],
    audit: &'a Audit,
    published: &'a std::collections::HashMap<uuid::Uuid, usize>,
    redeliveries: usize,
    dead_lettered: u64,
    started: Instant,
    wall: Duration,
    drained: Option<Instant>,
    last_submission: Option<Instant>,
}

impl Report<'_> {
    /// Prints the figures and the verdict; returns whether the run passed.
    fn print(&self) -> bool {
        let audit = self.audit;
        let over_http = self.plan.jobs / HTTP_EVERY;
        println!();
        println!(
            "chaos: {} jobs ({} over the queue, {} over HTTP) in {:.1} s, {} workers, seed {}",
            self.plan.jobs,
            self.plan.jobs - over_http,
            over_http,
            self.wall.as_secs_f64(),
            self.plan.workers,
            self.plan.seed
        );
        println!("faults:");
        let kills = self.progress.kills.load(Ordering::Relaxed);
        println!(
            "  workers killed      {kills} times with SIGKILL, every {}-{} s, each replaced at once",
            self.plan.kill_pause.0, self.plan.kill_pause.1
        );
        for record in self.records {
            match &record.error {
                None => println!(
                    "  {:<19} at {:5.1} s, away {:.1} s",
                    record.what, record.at, record.away
                ),
                Some(error) => println!(
                    "  {:<19} at {:5.1} s FAILED: {error}",
                    record.what, record.at
                ),
            }
        }

        let succeeded = audit.statuses.get("succeeded").copied().unwrap_or(0);
        let event = |name: &str| audit.events.get(name).copied().unwrap_or(0);
        let announced_twice = self.published.values().filter(|n| **n > 1).count();
        let unannounced = audit
            .statuses
            .values()
            .sum::<usize>()
            .saturating_sub(self.published.len());
        let attempts: Vec<String> = audit
            .attempts
            .iter()
            .map(|(attempts, jobs)| format!("{attempts}: {jobs}"))
            .collect();
        println!("figures:");
        println!(
            "  jobs                {} submitted, {succeeded} succeeded, {} failed",
            audit.expected,
            audit.failed.len()
        );
        println!(
            "  lost                {} ({} submissions without a job, {} jobs stuck queued or running)",
            audit.lost(),
            audit.missing.len(),
            audit.stuck.len()
        );
        println!(
            "  duplicated          {} ({} jobs with a second terminal event, {} with other than one set of outputs)",
            audit.duplicated(),
            audit.double_finished.len(),
            audit.outputs.len()
        );
        println!("  kills               {kills}");
        println!(
            "  redeliveries        {} (deliveries the broker flagged as redelivered, counted by the workers)",
            self.redeliveries
        );
        println!(
            "  retries             {} ({} leases expired, {} transient failures outlasted their retries, {} hand-backs)",
            audit.retries(),
            event("lease_expired"),
            event("retry"),
            event("handed_back")
        );
        println!("  attempts per job    {}", attempts.join(", "));
        println!(
            "  submissions resent  {} (same idempotency key, after a refusal or a lost confirm)",
            self.progress.submit_retries.load(Ordering::Relaxed)
        );
        println!(
            "  events published    {} jobs announced, {announced_twice} twice (the relay publishes at least once), {unannounced} never",
            self.published.len()
        );
        println!("  dead-lettered       {}", self.dead_lettered);
        match (self.drained, self.last_submission) {
            (Some(drained), Some(last_submission)) => {
                let last_fault_end = self
                    .records
                    .iter()
                    .map(|r| r.at + r.away)
                    .fold(0.0, f64::max);
                let drained_at = drained.duration_since(self.started).as_secs_f64();
                println!(
                    "  time to drain       {:.1} s after the last fault ended, {:.1} s after the last submission",
                    drained_at - last_fault_end,
                    drained.duration_since(last_submission).as_secs_f64()
                );
            }
            _ => println!("  time to drain       did not drain"),
        }
        for (id, status, error) in audit.failed.iter().take(5) {
            println!("  failed job {id}: {status}: {error}");
        }
        for id in audit.stuck.iter().take(5) {
            println!("  stuck job {id}");
        }
        for (id, stored, recorded) in audit.outputs.iter().take(5) {
            println!("  job {id}: stored {stored:?}, recorded {recorded:?}");
        }

        let faults_ok = self.records.len() == 3 && self.records.iter().all(|r| r.error.is_none());
        let passed = audit.passed() && faults_ok && self.drained.is_some() && unannounced == 0;
        println!("verdict: {}", if passed { "PASS" } else { "FAIL" });
        passed
    }
}
