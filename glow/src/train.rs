//! Fitting a Glow model: the optimizer, the training loop and checkpoints.
//!
//! The loss is the mean bits per dimension of a batch of dequantized images.
//! Adam or Adamax (the paper's choice) with a linear learning-rate warm-up
//! and gradient-norm clipping. The optimizer is written out here rather than
//! taken from libtorch because its moments must be saved in checkpoints: a
//! resumed run continues exactly where an uninterrupted one would be, since
//! the data order, the flips and the dequantization noise all derive from the
//! seed and the step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::{self, ModelFile, Precision, OPTIMIZER_PREFIX};
use crate::data::{self, Entry, Loader, LoaderConfig, Position};
use crate::error::{GlowError, Result};
use crate::model::Glow;
use crate::preprocess::{self, Dequantize};

/// Which update rule to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    /// Adam with the infinity norm in place of the second moment; Glow's default.
    Adamax,
}

/// Training hyperparameters and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Peak learning rate, reached after the warm-up.
    pub learning_rate: f64,
    /// Images over which the learning rate rises linearly from 0.
    pub warmup_images: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Gradients whose global L2 norm exceeds this are scaled down to it.
    pub max_grad_norm: f64,
    /// Stop after this many images in total (`0`: until interrupted).
    pub max_images: u64,
    /// Minutes between checkpoints.
    pub checkpoint_minutes: f64,
    /// Validation images evaluated at each checkpoint for the metrics log.
    pub eval_images: usize,
    pub seed: u64,
    /// Image decoding threads.
    pub loader_workers: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 32,
            optimizer: OptimizerKind::Adamax,
            learning_rate: 1e-3,
            warmup_images: 20_000,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_grad_norm: 50.0,
            max_images: 0,
            checkpoint_minutes: 5.0,
            eval_images: 256,
            seed: 0,
            loader_workers: 2,
        }
    }
}

/// Where a run stands; saved in checkpoints as `glowline.train`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub images_seen: u64,
    /// Next batch of the data stream.
    pub epoch: u64,
    pub batch: u64,
    /// Seconds spent training, over all sessions.
    pub train_seconds: f64,
    /// What the model was trained on.
    pub data: String,
    /// Steps taken by the current optimizer moments (their bias correction).
    /// Equal to `step` unless the run was warm-started from a shipped model.
    #[serde(default)]
    pub optimizer_step: u64,
    /// `images_seen` when the current learning-rate warm-up began.
    #[serde(default)]
    pub warmup_start: u64,
}

/// Metadata key of the [`TrainState`] (JSON).
pub const STATE_KEY: &str = "glowline.train";
/// Metadata key of the [`TrainConfig`] (JSON).
pub const TRAIN_CONFIG_KEY: &str = "glowline.train_config";

/// Adam / Adamax moments of every trained variable.
pub struct Optimizer {
    kind: OptimizerKind,
    variables: Vec<(String, Tensor)>,
    first: Vec<Tensor>,
    /// Second moment (Adam) or infinity norm (Adamax).
    second: Vec<Tensor>,
}

impl Optimizer {
    pub fn new(glow: &Glow, kind: OptimizerKind) -> Self {
        let mut variables: Vec<(String, Tensor)> = glow
            .var_store()
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let first = variables.iter().map(|(_, t)| t.zeros_like()).collect();
        let second = variables.iter().map(|(_, t)| t.zeros_like()).collect();
        Optimizer {
            kind,
            variables,
            first,
            second,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, t) in &mut self.variables {
            t.zero_grad();
        }
    }

    /// Scales the gradients down to `max_norm` if needed; returns their norm before.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .variables
            .iter()
            .map(|(_, t)| t.grad())
            .filter(Tensor::defined)
            .collect();
        let total: f64 = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        if total > max_norm && total.is_finite() {
            let scale = max_norm / (total + 1e-12);
            tch::no_grad(|| {
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    /// One update with learning rate `lr` at (1-based) step `t`.
    pub fn step(&mut self, cfg: &TrainConfig, lr: f64, t: u64) {
        let bias1 = 1.0 - cfg.beta1.powf(t as f64);
        let bias2 = 1.0 - cfg.beta2.powf(t as f64);
        tch::no_grad(|| {
            for (i, (_, var)) in self.variables.iter().enumerate() {
                let g = var.grad();
                if !g.defined() {
                    continue;
                }
                let m = &mut self.first[i];
                let _ = m.g_mul_scalar_(cfg.beta1).g_add_(&(&g * (1.0 - cfg.beta1)));
                let v = &mut self.second[i];
                let update = match self.kind {
                    OptimizerKind::Adam => {
                        let _ = v
                            .g_mul_scalar_(cfg.beta2)
                            .g_add_(&(g.square() * (1.0 - cfg.beta2)));
                        let denom = (&*v / bias2).sqrt() + cfg.epsilon;
                        &*m / denom * (lr / bias1)
                    }
                    OptimizerKind::Adamax => {
                        let decayed = &*v * cfg.beta2;
                        v.copy_(&decayed.maximum(&g.abs()));
                        &*m / (&*v + cfg.epsilon) * (lr / bias1)
                    }
                };
                let _ = var.shallow_clone().g_sub_(&update);
            }
        });
    }

    /// The moments as named tensors for a checkpoint.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.variables.len());
        for (i, (name, _)) in self.variables.iter().enumerate() {
            out.push((
                format!("{OPTIMIZER_PREFIX}m.{name}"),
                self.first[i].shallow_clone(),
            ));
            out.push((
                format!("{OPTIMIZER_PREFIX}v.{name}"),
                self.second[i].shallow_clone(),
            ));
        }
        out
    }

    /// Restores the moments from a checkpoint.
    fn load_state(&mut self, file: &ModelFile, path: &Path) -> Result<()> {
        for (i, (name, _)) in self.variables.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.first[i]), ("v", &mut self.second[i])] {
                let key = format!("{OPTIMIZER_PREFIX}{prefix}.{name}");
                let t = file.extra_tensor(&key, path)?.ok_or_else(|| {
                    GlowError::checkpoint(
                        path,
                        format!("missing optimizer state `{key}`: not a training checkpoint"),
                    )
                })?;
                tch::no_grad(|| slot.copy_(&t.to_device(slot.device())));
            }
        }
        Ok(())
    }
}

/// Linear warm-up to the peak learning rate over `warmup_images`.
pub fn learning_rate(cfg: &TrainConfig, images_since_warmup: u64) -> f64 {
    if cfg.warmup_images == 0 {
        return cfg.learning_rate;
    }
    cfg.learning_rate * (images_since_warmup as f64 / cfg.warmup_images as f64).min(1.0)
}

/// Figures of one optimizer step.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub bits_per_dim: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
}

/// A model, its optimizer and where the run stands.
pub struct Trainer {
    pub glow: Glow,
    pub config: TrainConfig,
    pub optimizer: Optimizer,
    pub state: TrainState,
}

/// The [`TrainState`] in a checkpoint's or shipped model's metadata.
fn read_state(file: &ModelFile, path: &Path) -> Result<TrainState> {
    let json = file.metadata.get(STATE_KEY).ok_or_else(|| {
        GlowError::checkpoint(
            path,
            format!("no `{STATE_KEY}` metadata: not a trained model"),
        )
    })?;
    serde_json::from_str(json).map_err(|e| GlowError::checkpoint(path, e.to_string()))
}

/// Seed of the dequantization noise of batch `index` of a run seeded with
/// `seed`: a resumed run draws the same noise as an uninterrupted one.
fn noise_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(index)
}

impl Trainer {
    pub fn new(glow: Glow, config: TrainConfig, data: String) -> Self {
        let optimizer = Optimizer::new(&glow, config.optimizer);
        Trainer {
            glow,
            config,
            optimizer,
            state: TrainState {
                data,
                ..TrainState::default()
            },
        }
    }

    /// Restores a training checkpoint: weights, optimizer moments and state.
    /// The model config in the file must equal `glow`'s.
    pub fn resume(glow: Glow, config: TrainConfig, path: &Path) -> Result<Self> {
        let file = ModelFile::read(path)?;
        file.load_into(&glow, path)?;
        let state = read_state(&file, path)?;
        let mut optimizer = Optimizer::new(&glow, config.optimizer);
        optimizer.load_state(&file, path)?;
        Ok(Trainer {
            glow,
            config,
            optimizer,
            state,
        })
    }

    /// Continues training a shipped model (f16 weights, no optimizer state),
    /// e.g. on a new machine where the training checkpoint is gone. The counts
    /// carry on from the model's metadata; the optimizer starts afresh with a
    /// new learning-rate warm-up, so this is a warm start, not an exact resume.
    pub fn warm_start(glow: Glow, config: TrainConfig, path: &Path) -> Result<Self> {
        let file = ModelFile::read(path)?;
        file.load_into(&glow, path)?;
        let mut state = read_state(&file, path)?;
        state.optimizer_step = 0;
        state.warmup_start = state.images_seen;
        let optimizer = Optimizer::new(&glow, config.optimizer);
        Ok(Trainer {
            glow,
            config,
            optimizer,
            state,
        })
    }

    /// The learning rate after the images seen so far.
    pub fn learning_rate(&self) -> f64 {
        learning_rate(
            &self.config,
            self.state.images_seen - self.state.warmup_start,
        )
    }

    /// One optimizer step on a uint8 batch. A loss that is not finite stops
    /// training with an error naming the step.
    pub fn step(&mut self, images: &Tensor) -> Result<StepStats> {
        let step = self.state.step + 1;
        if !self.glow.is_initialized() {
            self.glow.initialize(images)?;
        }
        let noise = Dequantize::Uniform(noise_seed(self.config.seed, step));
        let x = preprocess::to_model_input(
            images,
            self.glow.config().n_bits,
            noise,
            self.glow.device(),
        )?;
        self.optimizer.zero_grad();
        let loss = self.glow.bits_per_dim(&x)?.mean(Kind::Float);
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(GlowError::NonFinite { step, value });
        }
        loss.backward();
        let grad_norm = self.optimizer.clip_grad_norm(self.config.max_grad_norm);
        if !grad_norm.is_finite() {
            return Err(GlowError::NonFinite {
                step,
                value: grad_norm,
            });
        }
        let batch = images.size()[0] as u64;
        self.state.images_seen += batch;
        self.state.optimizer_step += 1;
        let lr = self.learning_rate();
        self.optimizer
            .step(&self.config, lr, self.state.optimizer_step);
        self.glow.weights_changed();
        self.state.step = step;
        Ok(StepStats {
            bits_per_dim: value,
            grad_norm,
            learning_rate: lr,
        })
    }

    /// Writes a training checkpoint (f32 weights, optimizer, state).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert(
            STATE_KEY.to_string(),
            serde_json::to_string(&self.state).expect("state serializes"),
        );
        meta.insert(
            TRAIN_CONFIG_KEY.to_string(),
            serde_json::to_string(&self.config).expect("config serializes"),
        );
        checkpoint::save(
            &self.glow,
            path,
            Precision::F32,
            &self.optimizer.state_tensors(),
            &meta,
        )
    }
}

/// Mean bits per dimension over `images` (uint8 `[N, 3, S, S]`), in batches,
/// with dequantization noise drawn from `seed` so the figure is reproducible.
pub fn evaluate_bits_per_dim(
    glow: &Glow,
    images: &Tensor,
    batch_size: i64,
    seed: u64,
) -> Result<f64> {
    let n = images.size()[0];
    let mut total = 0.0;
    for start in (0..n).step_by(batch_size.max(1) as usize) {
        let len = batch_size.min(n - start);
        let batch = images.narrow(0, start, len);
        let noise = Dequantize::Uniform(noise_seed(seed, start as u64));
        let x = preprocess::to_model_input(&batch, glow.config().n_bits, noise, glow.device())?;
        let bpd = tch::no_grad(|| glow.bits_per_dim(&x))?;
        total += bpd.sum(Kind::Double).double_value(&[]);
    }
    Ok(total / n as f64)
}

/// Mean bits per dimension over every image of `entries`, streamed.
pub fn evaluate_entries(
    glow: &Glow,
    entries: Vec<Entry>,
    batch_size: usize,
    workers: usize,
    seed: u64,
) -> Result<(f64, usize)> {
    let loader = Loader::new(
        entries,
        LoaderConfig {
            batch_size,
            image_size: glow.config().image_size,
            shuffle: false,
            flip: false,
            drop_last: false,
            seed,
            workers,
            prefetch: 2,
            epochs: Some(1),
        },
        Position::default(),
    )?;
    let mut total = 0.0;
    let mut count = 0usize;
    for batch in loader {
        let noise = Dequantize::Uniform(noise_seed(seed, batch.batch));
        let x =
            preprocess::to_model_input(&batch.images, glow.config().n_bits, noise, glow.device())?;
        let bpd = tch::no_grad(|| glow.bits_per_dim(&x))?;
        total += bpd.sum(Kind::Double).double_value(&[]);
        count += batch.indices.len();
    }
    Ok((total / count.max(1) as f64, count))
}

/// Files a training run writes into its run folder.
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn samples(&self, step: u64) -> PathBuf {
        self.dir.join(format!("samples-{step:07}.png"))
    }
    pub fn reconstructions(&self, step: u64) -> PathBuf {
        self.dir.join(format!("reconstructions-{step:07}.png"))
    }
}

/// One line of the metrics log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub images_seen: u64,
    pub epoch: u64,
    /// Mean training bits/dim since the previous line.
    pub train_bits_per_dim: f64,
    /// Bits/dim on the fixed validation subset.
    pub valid_bits_per_dim: Option<f64>,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub images_per_second: f64,
    pub train_seconds: f64,
}

/// Sampling temperature of the checkpoint sample grids: the paper shows
/// T = 0.7 as the best trade-off between sample quality and diversity.
pub const SAMPLE_TEMPERATURE: f64 = 0.7;

/// What a run watches at every checkpoint: a fixed validation subset for
/// bits/dim and a few faces to reconstruct.
pub struct Watch {
    pub valid: Option<Tensor>,
    pub reconstruct: Option<Tensor>,
}

/// Runs training until `max_images`, a stop request or an error; writes a
/// checkpoint, pictures and a metrics line every `checkpoint_minutes` and at
/// the end. Returns the final state.
pub fn run(
    trainer: &mut Trainer,
    entries: Vec<Entry>,
    files: &RunFiles,
    watch: &Watch,
    stop: Arc<AtomicBool>,
) -> Result<TrainState> {
    let cfg = trainer.config.clone();
    std::fs::create_dir_all(&files.dir).map_err(|e| GlowError::io(&files.dir, e))?;
    let loader = Loader::new(
        entries,
        LoaderConfig {
            batch_size: cfg.batch_size,
            image_size: trainer.glow.config().image_size,
            shuffle: true,
            flip: true,
            drop_last: true,
            seed: cfg.seed,
            workers: cfg.loader_workers,
            prefetch: 4,
            epochs: None,
        },
        Position {
            epoch: trainer.state.epoch,
            batch: trainer.state.batch,
        },
    )?;
    let per_epoch = loader.batches_per_epoch();
    let remaining = if cfg.max_images == 0 {
        None
    } else {
        Some(cfg.max_images.saturating_sub(trainer.state.images_seen))
    };
    let bar = progress_bar(remaining);
    let checkpoint_every = Duration::from_secs_f64(cfg.checkpoint_minutes * 60.0);
    let mut last_checkpoint = Instant::now();
    let mut window = Window::default();
    let session_start = Instant::now();
    let base_seconds = trainer.state.train_seconds;

    for batch in loader {
        if stop.load(Ordering::Relaxed)
            || remaining.is_some_and(|_| trainer.state.images_seen >= cfg.max_images)
        {
            break;
        }
        let stats = trainer.step(&batch.images)?;
        let next = batch.batch + 1;
        (trainer.state.epoch, trainer.state.batch) = if next >= per_epoch {
            (batch.epoch + 1, 0)
        } else {
            (batch.epoch, next)
        };
        trainer.state.train_seconds = base_seconds + session_start.elapsed().as_secs_f64();
        window.add(&stats, batch.indices.len());
        bar.inc(batch.indices.len() as u64);
        bar.set_message(format!(
            "step {} | {:.1} img/s | bits/dim {:.3} | lr {:.1e}",
            trainer.state.step,
            window.images as f64 / window.start.elapsed().as_secs_f64().max(1e-9),
            window.mean_bpd(),
            stats.learning_rate
        ));
        if last_checkpoint.elapsed() >= checkpoint_every {
            checkpoint_now(trainer, files, watch, &mut window, stats.learning_rate)?;
            last_checkpoint = Instant::now();
        }
    }
    if window.steps > 0 {
        let lr = trainer.learning_rate();
        checkpoint_now(trainer, files, watch, &mut window, lr)?;
    }
    bar.finish_and_clear();
    Ok(trainer.state.clone())
}

/// Running means between two checkpoints.
struct Window {
    start: Instant,
    steps: u64,
    images: u64,
    bpd_sum: f64,
    grad_norm_sum: f64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            start: Instant::now(),
            steps: 0,
            images: 0,
            bpd_sum: 0.0,
            grad_norm_sum: 0.0,
        }
    }
}

impl Window {
    fn add(&mut self, s: &StepStats, images: usize) {
        self.steps += 1;
        self.images += images as u64;
        self.bpd_sum += s.bits_per_dim;
        self.grad_norm_sum += s.grad_norm;
    }

    fn mean_bpd(&self) -> f64 {
        self.bpd_sum / self.steps.max(1) as f64
    }
}

fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} images, ETA {eta} | {msg}",
            )
            .expect("valid template"),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} images, {elapsed} | {msg}")
                .expect("valid template"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn checkpoint_now(
    trainer: &Trainer,
    files: &RunFiles,
    watch: &Watch,
    window: &mut Window,
    lr: f64,
) -> Result<()> {
    trainer.save_checkpoint(&files.checkpoint())?;
    let glow = &trainer.glow;
    let step = trainer.state.step;

    let samples = glow.decode_images(&glow.sample_latents(16, SAMPLE_TEMPERATURE, step))?;
    save_png(&data::grid(&samples, 8), &files.samples(step))?;
    if let Some(faces) = &watch.reconstruct {
        let recon = glow.decode_images(&glow.encode_images(faces)?)?;
        let both = Tensor::cat(&[faces.shallow_clone(), recon], 0);
        save_png(
            &data::grid(&both, faces.size()[0]),
            &files.reconstructions(step),
        )?;
    }
    let valid = match &watch.valid {
        Some(images) => Some(evaluate_bits_per_dim(
            glow,
            images,
            64,
            trainer.config.seed,
        )?),
        None => None,
    };
    let line = MetricsLine {
        step,
        images_seen: trainer.state.images_seen,
        epoch: trainer.state.epoch,
        train_bits_per_dim: window.mean_bpd(),
        valid_bits_per_dim: valid,
        learning_rate: lr,
        grad_norm: window.grad_norm_sum / window.steps.max(1) as f64,
        images_per_second: window.images as f64 / window.start.elapsed().as_secs_f64().max(1e-9),
        train_seconds: trainer.state.train_seconds,
    };
    append_line(
        &files.metrics(),
        &serde_json::to_string(&line).expect("metrics serialize"),
    )?;
    tracing::info!(
        step,
        images_seen = trainer.state.images_seen,
        train_bpd = line.train_bits_per_dim,
        valid_bpd = ?valid,
        "checkpoint written"
    );
    *window = Window::default();
    Ok(())
}

/// Writes an RGB image as PNG.
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| GlowError::Data {
            path: path.into(),
            message: format!("cannot write PNG: {e}"),
        })
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| GlowError::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| GlowError::io(path, e))
}
