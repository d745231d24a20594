//! The model a worker loads at start: the Glow weights on the chosen
//! device, their sha256 (recorded with every job), and the attribute
//! directions when present.
//!
//! libtorch tensors may move between threads but not be shared by them, so
//! each render slot gets its own copy of the model ([`ModelPool`]), loaded
//! once at start and lent to one render at a time.

use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use glow::device::DeviceChoice;
use glow::directions::Directions;
use glow::render::{sha256_file, RenderConfig, Renderer};
use glow::Glow;

use crate::config::WorkerSettings;

/// A loaded model, ready to render.
pub struct LoadedModel {
    glow: Glow,
    directions: Option<Directions>,
    /// sha256 of the model file, hex.
    pub sha256: String,
    /// Where the model runs, for logs.
    pub device: String,
    /// `cuda` or `cpu`, for metrics.
    pub device_kind: &'static str,
    render: RenderConfig,
}

impl LoadedModel {
    /// Loads the model and directions named in `settings`.
    pub fn load(settings: &WorkerSettings) -> anyhow::Result<Self> {
        let device = DeviceChoice::from_str(&settings.device)?.resolve()?;
        glow::device::set_threads(settings.threads);
        let model_path = settings.model.as_path();
        let sha256 = sha256_file(model_path)
            .with_context(|| format!("reading model {}", model_path.display()))?;
        let glow = Glow::load(model_path, device)
            .with_context(|| format!("loading model {}", model_path.display()))?;
        let directions = load_directions(settings, model_path, &sha256, &glow)?;
        Ok(Self {
            glow,
            directions,
            sha256,
            device: glow::device::describe(device),
            device_kind: if device.is_cuda() { "cuda" } else { "cpu" },
            render: RenderConfig {
                ffmpeg: settings.ffmpeg.clone(),
                ..RenderConfig::default()
            },
        })
    }

    /// A renderer borrowing this model.
    pub fn renderer(&self) -> Renderer<'_> {
        Renderer::new(
            &self.glow,
            self.sha256.clone(),
            self.directions.as_ref(),
            self.render.clone(),
        )
    }
}

/// One model copy per render slot, all of the same file.
pub struct ModelPool {
    idle: Mutex<Vec<LoadedModel>>,
    /// sha256 of the model file, hex.
    pub sha256: String,
    /// Where the models run, for logs.
    pub device: String,
    /// `cuda` or `cpu`, for metrics.
    pub device_kind: &'static str,
    /// Seconds it took to load every copy.
    pub load_seconds: f64,
}

impl ModelPool {
    /// Loads `copies` copies of the model in `settings`.
    pub fn load(settings: &WorkerSettings, copies: usize) -> anyhow::Result<Self> {
        let started = Instant::now();
        let models = (0..copies.max(1))
            .map(|_| LoadedModel::load(settings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            sha256: models[0].sha256.clone(),
            device: models[0].device.clone(),
            device_kind: models[0].device_kind,
            load_seconds: started.elapsed().as_secs_f64(),
            idle: Mutex::new(models),
        })
    }

    /// Runs `work` with an idle copy, blocking the calling thread; call it
    /// from a blocking task. The caller bounds concurrent renders to the
    /// number of copies (the worker's slots), so a copy is always free.
    pub fn with_model<R>(&self, work: impl FnOnce(&LoadedModel) -> R) -> anyhow::Result<R> {
        let model = self
            .idle
            .lock()
            .map_err(|_| anyhow::anyhow!("model pool poisoned"))?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("more renders than model copies"))?;
        let result = work(&model);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(model);
        }
        Ok(result)
    }
}

fn load_directions(
    settings: &WorkerSettings,
    model_path: &Path,
    sha256: &str,
    glow: &Glow,
) -> anyhow::Result<Option<Directions>> {
    let path = settings
        .directions
        .clone()
        .unwrap_or_else(|| Directions::path_for_model(model_path));
    if !path.exists() {
        if settings.directions.is_some() {
            anyhow::bail!("directions file {} does not exist", path.display());
        }
        tracing::warn!(path = %path.display(), "no attribute directions; edit jobs will fail");
        return Ok(None);
    }
    let directions = Directions::load(&path)?;
    directions.check_model(&path, sha256, glow.config().dims())?;
    Ok(Some(directions))
}
