//! The whole pipeline in one test process: a scheduler and workers started
//! in-process (or a worker as a child process) against the test's own
//! Postgres schema, RabbitMQ virtual host and S3 bucket, driven with
//! glowctl's client.
//!
//! Plumbing tests render with a tiny, untrained Glow model and made-up
//! attribute directions written here: the pipeline does not care what the
//! faces look like, and the tiny model renders in milliseconds.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use glow::directions::DirectionAccumulator;
use glow::{Glow, GlowConfig, Precision};
use glowctl::{Client, ClientConfig};
use jobs::shutdown::Shutdown;
use jobs::store::Job;
use jobs::testkit::{eventually, TestEnv, TEST_API_TOKEN};
use sqlx::PgPool;
use uuid::Uuid;
use worker::config::WorkerConfig;
use worker::model::ModelPool;

/// How long a test waits for a job before failing.
pub const WAIT: Duration = Duration::from_secs(120);

/// The model the shipped tests render with, relative to the repository.
pub const SHIPPED_MODEL: &str = "models/celeba64.safetensors";

/// A tiny untrained model with directions beside it, written once per test
/// process.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("glowline-tiny-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.safetensors");
        let config = GlowConfig {
            image_size: 16,
            levels: 2,
            depth: 2,
            width: 16,
            ..GlowConfig::default()
        };
        let glow = Glow::new(&config, tch::Device::Cpu).unwrap();
        let batch = tch::Tensor::randint(256, [4, 3, 16, 16], (tch::Kind::Uint8, tch::Device::Cpu));
        glow.initialize(&batch).unwrap();
        glow.save(&path, Precision::F32, &BTreeMap::new()).unwrap();

        // Directions from random latents, half with every attribute and
        // half without: meaningless, but shaped exactly like real ones.
        let sha = glow::render::sha256_file(&path).unwrap();
        let dims = config.dims();
        let mut acc = DirectionAccumulator::new(dims, tch::Device::Cpu);
        let latents = tch::Tensor::randn([4, dims], (tch::Kind::Float, tch::Device::Cpu));
        let labels = [[1i8; 40], [-1; 40], [1; 40], [-1; 40]];
        acc.add(&latents, &labels).unwrap();
        let directions = acc.finish(&sha, "test");
        directions
            .save(&glow::directions::Directions::path_for_model(&path))
            .unwrap();
        path
    })
}

/// A 64 x 64 PNG face stand-in whose colours depend on `seed`.
pub fn face_png(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(4).wrapping_add(seed),
            (y as u8).wrapping_mul(4),
            seed.wrapping_mul(37),
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// Writes `count` face PNGs into `dir` as `face0.png`, `face1.png`, ...
pub fn write_faces(dir: &Path, count: u8) {
    for i in 0..count {
        std::fs::write(
            dir.join(format!("face{i}.png")),
            face_png(i.wrapping_mul(50)),
        )
        .unwrap();
    }
}

/// A worker config for `env` rendering with `model`, with short leases so
/// that a dead worker's job comes back within seconds.
pub fn worker_config(env: &TestEnv, model: &Path, work_dir: &Path) -> WorkerConfig {
    let mut config = WorkerConfig {
        database: env.database.clone(),
        broker: env.broker.clone(),
        s3: env.s3.clone(),
        ..WorkerConfig::default()
    };
    config.worker.model = model.to_owned();
    config.worker.device = "cpu".into();
    config.worker.lease_secs = 3;
    config.worker.heartbeat_secs = 1;
    config.worker.work_dir = work_dir.to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config
}

/// A running scheduler, the test's bucket and a glowctl client.
pub struct Stack {
    pub env: TestEnv,
    pub pool: PgPool,
    pub client: Client,
    pub scheduler_url: String,
    pub work_dir: tempfile::TempDir,
    shutdown: Shutdown,
    workers: Vec<(Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Stack {
    pub async fn start(name: &str) -> Self {
        Self::start_in(TestEnv::new(name), |_| {}).await
    }

    /// Starts the stack in `env`, with `tweak` applied to the scheduler's
    /// config.
    pub async fn start_in(
        env: TestEnv,
        tweak: impl FnOnce(&mut scheduler::config::SchedulerConfig),
    ) -> Self {
        env.store().await;
        let mut config = scheduler::config::SchedulerConfig::default();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.database = env.database.clone();
        config.broker = env.broker.clone();
        config.s3 = env.s3.clone();
        config.reaper.interval_ms = 250;
        config.relay.poll_interval_ms = 50;
        tweak(&mut config);
        let shutdown = Shutdown::new();
        let secrets = scheduler::Secrets {
            api_tokens: vec![TEST_API_TOKEN.to_owned()],
            s3: env.s3_credentials(),
        };
        let running = scheduler::start_with(config, secrets, shutdown.clone())
            .await
            .unwrap();
        let scheduler_url = format!("http://{}", running.addr);
        tokio::spawn(running.join());

        let client = Client::new(
            ClientConfig {
                scheduler_url: scheduler_url.clone(),
                broker: env.broker.clone(),
                s3: env.s3.clone(),
            },
            env.s3_credentials(),
        )
        .with_api_token(Some(TEST_API_TOKEN))
        .unwrap();
        let pool = jobs::db::connect(&env.database).await.unwrap();
        Stack {
            env,
            pool,
            client,
            scheduler_url,
            work_dir: tempfile::tempdir().unwrap(),
            shutdown,
            workers: Vec::new(),
        }
    }

    /// The worker config of this stack for `model`.
    pub fn worker_config(&self, model: &Path) -> WorkerConfig {
        worker_config(&self.env, model, self.work_dir.path())
    }

    /// Starts an in-process worker with `config`.
    /// Starts an in-process worker with `config`; returns the address of
    /// its `/healthz`, `/readyz` and `/metrics`.
    pub async fn start_worker(&mut self, config: WorkerConfig) -> SocketAddr {
        let settings = config.worker.clone();
        let copies = usize::from(settings.slots.interactive) + usize::from(settings.slots.long);
        let pool = tokio::task::spawn_blocking(move || ModelPool::load(&settings, copies))
            .await
            .unwrap()
            .unwrap();
        let store = jobs::s3::Store::new(&config.s3, self.env.s3_credentials());
        let shutdown = Shutdown::new();
        let running = worker::start(config, Arc::new(pool), store, shutdown.clone())
            .await
            .unwrap();
        let addr = running.http_addr;
        self.workers.push((shutdown, tokio::spawn(running.join())));
        addr
    }

    /// Stops every in-process worker and the scheduler.
    pub async fn stop(&mut self) {
        for (shutdown, handle) in self.workers.drain(..) {
            shutdown.trigger();
            handle.await.unwrap().unwrap();
        }
        self.shutdown.trigger();
    }

    /// Waits until job `id` satisfies `done`.
    pub async fn wait_for(&self, id: Uuid, what: &str, done: impl Fn(&Job) -> bool) -> Job {
        let pool = self.pool.clone();
        eventually(what, WAIT, || {
            let pool = pool.clone();
            let done = &done;
            async move {
                let job = jobs::store::get_job(&pool, id).await.unwrap().unwrap();
                done(&job).then_some(job)
            }
        })
        .await
    }

    /// Names of job `id`'s events, in order.
    pub async fn events(&self, id: Uuid) -> Vec<String> {
        jobs::store::job_events(&self.pool, id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect()
    }
}

/// Frames of the MP4 `bytes`, counted by ffprobe.
pub fn mp4_frames(bytes: &[u8]) -> u64 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(file.path())
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("ffprobe prints a frame count")
}

/// Width and height of the PNG `bytes`.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap();
    (image.width(), image.height())
}

/// A sweep long enough to be caught running: many frames, each written as
/// a large PNG. Its faces are `face0.png` and `face1.png`.
pub fn slow_sweep_spec() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "alignment": { "skip": true },
        "operation": { "kind": "mix_sweep", "from": "face0.png", "to": "face1.png", "frames": 600 },
        "output": { "size": 512, "formats": ["frames"] }
    })
}

/// The Prometheus text exposition at `base_url` + `/metrics`.
pub async fn scrape(base_url: &str) -> String {
    let response = reqwest::get(format!("{base_url}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}
