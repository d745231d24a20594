//! A whole Glowline stack of real processes on loopback, in a corner of the
//! machine's services that no one else uses.
//!
//! The scheduler and the workers are the binaries cargo built (found beside
//! the driver's own executable); they are configured only through their
//! `GLOWLINE_*` environment overrides, exactly as a deployment would. Each
//! run gets its own Postgres schema and RabbitMQ virtual host (from
//! [`jobs::testkit::TestEnv`], dropped with the stack) and its own S3 server
//! ([`S3Server`]), so that a driver may stop the store without disturbing
//! anything else on the machine. Every process writes its log to a file of
//! the run's folder, one file per start.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use jobs::s3::Store;
use jobs::testkit::{TestEnv, TEST_S3_ACCESS_KEY, TEST_S3_SECRET_KEY};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sqlx::PgPool;
use tokio::process::{Child, Command};

/// How long a started process may take to answer before the driver gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between readiness checks of a starting process.
const READY_POLL: Duration = Duration::from_millis(100);

/// Where the programs of a run live.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub scheduler: PathBuf,
    pub worker: PathBuf,
    /// The S3 server (`s3s-fs`, which `scripts/s3.sh` installs).
    pub s3s_fs: PathBuf,
}

impl Binaries {
    /// The scheduler and worker that cargo built beside this program (every
    /// binary of a workspace lands in one folder), and `s3s-fs` from `PATH`
    /// or cargo's own bin folder.
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this program")?;
        let dir = exe.parent().context("this program has no folder")?;
        let beside = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} is missing: build it first (cargo build -p {name})",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Self {
            scheduler: beside("scheduler")?,
            worker: beside("worker")?,
            s3s_fs: find_s3s_fs()?,
        })
    }
}

fn find_s3s_fs() -> anyhow::Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(cargo_bin)
        .map(|dir| dir.join("s3s-fs"))
        .find(|path| path.is_file())
        .context("s3s-fs is not installed: run scripts/s3.sh once")
}

/// A port on loopback that nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until `ready` holds, or fails naming `what` after [`START_TIMEOUT`].
async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > START_TIMEOUT {
            bail!("{what} did not come up within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Ok(())
}

/// A program with its arguments and environment, started as often as a
/// driver likes; each start logs to `<log_dir>/<name>.log`.
#[derive(Debug, Clone)]
pub struct ProcessTemplate {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

impl ProcessTemplate {
    /// Starts the program as `name`; it is killed if its [`Child`] is
    /// dropped, so that a failing driver leaves nothing running.
    pub fn spawn(&self, name: &str) -> anyhow::Result<Child> {
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))
    }
}

/// Asks `child` to stop with SIGTERM, and kills it if it has not exited
/// within `grace`.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// The run's own S3 server: `s3s-fs` on a loopback port of its own, which a
/// driver may stop (clients then find the port refusing connections, as
/// when a store crashes or a link is cut) and start again on the same port
/// and data.
pub struct S3Server {
    template: ProcessTemplate,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl S3Server {
    /// Starts `s3s-fs` serving the folder `data` and waits until it answers.
    pub async fn start(program: &Path, data: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data)?;
        let port = free_port()?;
        let template = ProcessTemplate {
            program: program.to_owned(),
            args: vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--access-key".into(),
                TEST_S3_ACCESS_KEY.into(),
                "--secret-key".into(),
                TEST_S3_SECRET_KEY.into(),
                data.display().to_string(),
            ],
            env: Vec::new(),
            log_dir: log_dir.to_owned(),
        };
        let mut server = Self {
            template,
            port,
            child: None,
            starts: 0,
        };
        server.resume().await?;
        Ok(server)
    }

    /// The endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs, for CPU accounting.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the server: from now on its port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and data, and waits until
    /// it answers.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let child = self.template.spawn(&format!("s3-{}", self.starts))?;
        self.child = Some(child);
        let port = self.port;
        wait_until("the S3 server", || answers(port)).await
    }
}

/// Settings of the stack's processes beyond where the services are.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Name of the run, part of its schema and vhost names.
    pub name: String,
    /// Folder for the processes' logs and the workers' scratch space.
    pub run_dir: PathBuf,
    /// The model file the workers load.
    pub model: PathBuf,
    /// Extra `GLOWLINE_SCHEDULER__...` overrides (key path after the prefix).
    pub scheduler: Vec<(String, String)>,
    /// Extra `GLOWLINE_WORKER__...` overrides (key path after the prefix).
    pub worker: Vec<(String, String)>,
}

/// A running scheduler on the run's own schema, vhost and bucket, with what
/// a driver needs to start workers and read the results.
pub struct Stack {
    pub env: TestEnv,
    /// The run's job store, for audits.
    pub pool: PgPool,
    /// The run's bucket.
    pub store: Store,
    /// The scheduler's HTTP API.
    pub scheduler_url: String,
    /// The bearer token the scheduler accepts.
    pub api_token: String,
    /// How workers of this stack are started.
    pub worker_template: ProcessTemplate,
    scheduler: Child,
}

impl Stack {
    /// Creates the run's schema, vhost and bucket on the services (S3 at
    /// `s3_endpoint`), starts the scheduler and waits until it serves.
    pub async fn start(
        binaries: &Binaries,
        s3_endpoint: &str,
        options: &StackOptions,
    ) -> anyhow::Result<Self> {
        let mut env = TestEnv::new(&options.name);
        env.s3.endpoint = Some(s3_endpoint.to_owned());
        let store = env.store().await;
        let api_token = uuid::Uuid::new_v4().simple().to_string();
        let port = free_port()?;
        let scheduler_url = format!("http://127.0.0.1:{port}");

        let mut scheduler_env = service_env("GLOWLINE_SCHEDULER", &env);
        scheduler_env.extend([
            ("GLOWLINE_API_TOKEN".into(), api_token.clone()),
            var(
                "GLOWLINE_SCHEDULER",
                "HTTP__LISTEN",
                format!("127.0.0.1:{port}"),
            ),
            // A driver is one client sending as fast as it can.
            var(
                "GLOWLINE_SCHEDULER",
                "HTTP__RATE_LIMIT__REQUESTS_PER_SECOND",
                "0",
            ),
            var("GLOWLINE_SCHEDULER", "HTTP__RATE_LIMIT__BURST", "0"),
        ]);
        scheduler_env.extend(overrides("GLOWLINE_SCHEDULER", &options.scheduler));
        let scheduler_template = ProcessTemplate {
            program: binaries.scheduler.clone(),
            args: Vec::new(),
            env: scheduler_env,
            log_dir: options.run_dir.clone(),
        };
        let scheduler = scheduler_template.spawn("scheduler")?;
        let health = format!("{scheduler_url}/healthz");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the scheduler did not serve within {START_TIMEOUT:?}; see {}",
                    options.run_dir.join("scheduler.log").display()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }

        let mut pool_config = env.database.clone();
        pool_config.migrate = false;
        let pool = jobs::db::connect(&pool_config).await?;

        let work_dir = options.run_dir.join("work");
        let mut worker_env = service_env("GLOWLINE_WORKER", &env);
        worker_env.extend([
            var(
                "GLOWLINE_WORKER",
                "WORKER__MODEL",
                options.model.display().to_string(),
            ),
            var("GLOWLINE_WORKER", "WORKER__DEVICE", "cpu"),
            var(
                "GLOWLINE_WORKER",
                "WORKER__WORK_DIR",
                work_dir.display().to_string(),
            ),
            // Several workers share the machine: no fixed port each.
            var("GLOWLINE_WORKER", "HTTP__LISTEN", "127.0.0.1:0"),
        ]);
        worker_env.extend(overrides("GLOWLINE_WORKER", &options.worker));
        let worker_template = ProcessTemplate {
            program: binaries.worker.clone(),
            args: Vec::new(),
            env: worker_env,
            log_dir: options.run_dir.clone(),
        };

        Ok(Self {
            env,
            pool,
            store,
            scheduler_url,
            api_token,
            worker_template,
            scheduler,
        })
    }

    /// The scheduler's process id, for CPU accounting.
    pub fn scheduler_pid(&self) -> Option<u32> {
        self.scheduler.id()
    }

    /// Stops the scheduler with SIGTERM, as an operator would.
    pub async fn stop(&mut self) {
        terminate(&mut self.scheduler, Duration::from_secs(10)).await;
    }
}

fn var(prefix: &str, key: &str, value: impl Into<String>) -> (String, String) {
    (format!("{prefix}__{key}"), value.into())
}

fn overrides(prefix: &str, pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| var(prefix, k, v.clone()))
        .collect()
}

/// What every process of the stack needs: where the run's schema, vhost and
/// bucket are, the S3 credentials, and plain logs.
fn service_env(prefix: &str, env: &TestEnv) -> Vec<(String, String)> {
    vec![
        var(prefix, "DATABASE__URL", env.database.url.clone()),
        var(prefix, "DATABASE__SCHEMA", env.database.schema.clone()),
        var(prefix, "BROKER__URL", env.broker.url.clone()),
        var(
            prefix,
            "S3__ENDPOINT",
            env.s3.endpoint.clone().unwrap_or_default(),
        ),
        var(prefix, "S3__BUCKET", env.s3.bucket.clone()),
        ("AWS_ACCESS_KEY_ID".into(), TEST_S3_ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), TEST_S3_SECRET_KEY.into()),
        // Logs go to files that drivers search; no colour codes in them.
        ("NO_COLOR".into(), "1".into()),
        ("RUST_LOG".into(), "info".into()),
    ]
}

/// Worker processes of one stack, each slot restartable; the `n`th start of
/// slot `i` logs to `worker-<i>.<n>.log`.
pub struct Fleet {
    template: ProcessTemplate,
    slots: Vec<Option<Child>>,
    starts: Vec<u32>,
}

impl Fleet {
    /// Starts `count` workers from `template`.
    pub fn start(template: ProcessTemplate, count: usize) -> anyhow::Result<Self> {
        let mut fleet = Self {
            template,
            slots: (0..count).map(|_| None).collect(),
            starts: vec![0; count],
        };
        for slot in 0..count {
            fleet.spawn(slot)?;
        }
        Ok(fleet)
    }

    /// Workers in the fleet.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the fleet has no workers.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Starts slot `slot` (again), with a lease owner name of its own.
    pub fn spawn(&mut self, slot: usize) -> anyhow::Result<()> {
        self.starts[slot] += 1;
        let name = format!("worker-{slot}.{}", self.starts[slot]);
        let mut template = self.template.clone();
        template
            .env
            .push(var("GLOWLINE_WORKER", "WORKER__ID", name.clone()));
        self.slots[slot] = Some(template.spawn(&name)?);
        Ok(())
    }

    /// Kills slot `slot` with SIGKILL, without warning; returns whether it
    /// was running.
    pub async fn kill(&mut self, slot: usize) -> bool {
        match self.slots[slot].take() {
            Some(mut child) => {
                let _ = child.kill().await;
                true
            }
            None => false,
        }
    }

    /// Process ids of the running workers, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.slots.iter().flatten().filter_map(Child::id).collect()
    }

    /// Stops every worker with SIGTERM (they finish or hand back their
    /// jobs), killing those still running after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let stops = self.slots.iter_mut().flatten().map(|c| terminate(c, grace));
        futures_util::future::join_all(stops).await;
        self.slots.iter_mut().for_each(|slot| *slot = None);
    }
}

/// Waits until the log `path` holds `needle` (a process reached a point it
/// announces), or fails after [`START_TIMEOUT`].
pub async fn wait_for_log(path: &Path, needle: &str) -> anyhow::Result<()> {
    wait_until(&format!("{needle:?} in {}", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
    })
    .await
}

/// How many lines of the logs in `dir` whose names start with `prefix`
/// contain `needle`.
pub fn count_in_logs(dir: &Path, prefix: &str, needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().filter(|l| l.contains(needle)).count())
        .sum()
}
