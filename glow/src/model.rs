//! The Glow model: L levels of K flow steps with multi-scale splits.
//!
//! Encoding runs, for each level: squeeze, then K steps of ActNorm ->
//! invertible 1x1 convolution -> coupling, then (all levels but the last) a
//! split whose half leaves under a learned conditional prior. The top is
//! modelled by a learned Gaussian. The latent of every level is returned
//! standardized (`eps`, a standard normal under the model), so together they
//! hold exactly as many numbers as the image. Decoding runs it backwards.
//!
//! The log-likelihood of a dequantized image `x` is
//! `log p(x) = log p(z) + sum of log|det| - D ln(2^n_bits)`, and bits per
//! dimension is `-log p(x) / (D ln 2)`, as in the paper.

use std::sync::atomic::{AtomicBool, Ordering};

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tch::{nn, Device, Kind, Tensor};

use crate::config::GlowConfig;
use crate::error::{GlowError, Result};
use crate::flow::actnorm::ActNorm;
use crate::flow::coupling::Coupling;
use crate::flow::invconv::InvConv1x1;
use crate::flow::split::Split;
use crate::flow::squeeze::{squeeze, unsqueeze};
use crate::flow::{gaussian_log_density, spatial_size, InitRng};
use crate::preprocess::{self, Dequantize};

/// Seed of the dequantization noise of the initialization batch.
const INIT_NOISE_SEED: u64 = 0x1417;

/// One flow step: ActNorm, invertible 1x1 convolution, coupling.
struct FlowStep {
    actnorm: ActNorm,
    invconv: InvConv1x1,
    coupling: Coupling,
}

impl FlowStep {
    fn new(p: &nn::Path, channels: i64, cfg: &GlowConfig, rng: &mut InitRng) -> Self {
        FlowStep {
            actnorm: ActNorm::new(&(p / "actnorm"), channels),
            invconv: InvConv1x1::new(&(p / "invconv"), channels, cfg.permutation, rng),
            coupling: Coupling::new(&(p / "coupling"), channels, cfg.width, cfg.coupling, rng),
        }
    }

    fn forward(&self, x: &Tensor, logdet: &mut Tensor, init: bool) -> Tensor {
        let hw = spatial_size(x);
        let h = self.actnorm.forward(x, init);
        *logdet = &*logdet + self.actnorm.logdet(hw);
        let h = self.invconv.forward(&h);
        *logdet = &*logdet + self.invconv.logdet(hw);
        let (y, coupling_logdet) = self.coupling.forward(&h, init);
        *logdet = &*logdet + coupling_logdet;
        y
    }

    fn reverse(&self, y: &Tensor) -> Tensor {
        let h = self.coupling.reverse(y);
        let h = self.invconv.reverse(&h);
        self.actnorm.reverse(&h)
    }
}

struct Level {
    steps: Vec<FlowStep>,
    split: Option<Split>,
}

/// The learned Gaussian of the top level: a mean and log scale per channel.
struct TopPrior {
    mean: Tensor,
    logs: Tensor,
}

/// What encoding a batch gives.
pub struct Encoding {
    /// Standardized latents, one `[B, C, H, W]` tensor per level.
    pub latents: Vec<Tensor>,
    /// Sum of the log-determinants of all layers, `[B]`.
    pub logdet: Tensor,
    /// Log density of the latents under the priors (before standardization), `[B]`.
    pub log_prior: Tensor,
}

/// A Glow model and its variables.
pub struct Glow {
    config: GlowConfig,
    vs: nn::VarStore,
    levels: Vec<Level>,
    top: TopPrior,
    /// True once every ActNorm is initialized (by data or by loading).
    ready: AtomicBool,
}

impl Glow {
    /// A fresh, uninitialized model on `device`, its weights drawn with seed 0.
    pub fn new(config: &GlowConfig, device: Device) -> Result<Glow> {
        Self::with_seed(config, device, 0)
    }

    /// A fresh, uninitialized model whose random weights come from `seed`.
    pub fn with_seed(config: &GlowConfig, device: Device, seed: u64) -> Result<Glow> {
        config.validate()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut channels = config.channels;
        let mut levels = Vec::with_capacity(config.levels);
        for l in 0..config.levels {
            let p = &root / format!("level{l}");
            channels *= 4;
            let steps = (0..config.depth)
                .map(|k| FlowStep::new(&(&p / format!("step{k}")), channels, config, &mut rng))
                .collect();
            let split = (l + 1 < config.levels).then(|| Split::new(&(&p / "split"), channels));
            if split.is_some() {
                channels /= 2;
            }
            levels.push(Level { steps, split });
        }
        let top_path = &root / "top";
        let top = if config.learn_top {
            TopPrior {
                mean: top_path.zeros("mean", &[1, channels, 1, 1]),
                logs: top_path.zeros("logs", &[1, channels, 1, 1]),
            }
        } else {
            TopPrior {
                mean: top_path.zeros_no_train("mean", &[1, channels, 1, 1]),
                logs: top_path.zeros_no_train("logs", &[1, channels, 1, 1]),
            }
        };
        Ok(Glow {
            config: config.clone(),
            vs,
            levels,
            top,
            ready: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &GlowConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The model's variables (for the trainer and checkpoints).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Numbers in one image, which is also the size of one flat latent.
    pub fn latent_dim(&self) -> i64 {
        self.config.dims()
    }

    /// Number of trained parameters.
    pub fn parameter_count(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    fn actnorms(&self) -> impl Iterator<Item = &ActNorm> {
        self.levels.iter().flat_map(|l| {
            l.steps
                .iter()
                .flat_map(|s| std::iter::once(&s.actnorm).chain(s.coupling.actnorms()))
        })
    }

    /// Whether every ActNorm has been initialized.
    pub fn is_initialized(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Re-reads the stored initialization flags (after loading weights).
    pub(crate) fn refresh_initialized(&self) {
        let all = self.actnorms().all(ActNorm::is_initialized);
        self.ready.store(all, Ordering::Release);
    }

    /// Data-dependent initialization of every ActNorm from one batch of uint8
    /// images. Does nothing if the model is already initialized.
    pub fn initialize(&self, images: &Tensor) -> Result<()> {
        if self.is_initialized() {
            return Ok(());
        }
        let x = preprocess::to_model_input(
            images,
            self.config.n_bits,
            Dequantize::Uniform(INIT_NOISE_SEED),
            self.device(),
        )?;
        self.initialize_inputs(&x.to_kind(self.kind()))
    }

    /// Data-dependent initialization from model inputs (floats in [-0.5, 0.5)).
    pub fn initialize_inputs(&self, x: &Tensor) -> Result<()> {
        if self.is_initialized() {
            return Ok(());
        }
        self.check_input(x)?;
        tch::no_grad(|| self.flow_forward(x, true))?;
        self.refresh_initialized();
        Ok(())
    }

    /// Forgets cached inverses; the trainer calls this after changing weights.
    pub fn weights_changed(&self) {
        for level in &self.levels {
            for step in &level.steps {
                step.invconv.clear_cache();
            }
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let c = &self.config;
        let want = [c.channels, c.image_size, c.image_size];
        let size = x.size();
        if size.len() != 4 || size[1..] != want {
            return Err(GlowError::Input(format!(
                "expected a batch of shape [B, {}, {}, {}], got {size:?}",
                want[0], want[1], want[2]
            )));
        }
        Ok(())
    }

    /// Encodes model inputs `x` (floats in [-0.5, 0.5), see
    /// [`preprocess`](crate::preprocess)).
    pub fn encode(&self, x: &Tensor) -> Result<Encoding> {
        if !self.is_initialized() {
            return Err(GlowError::Uninitialized);
        }
        self.check_input(x)?;
        self.flow_forward(x, false)
    }

    fn flow_forward(&self, x: &Tensor, init: bool) -> Result<Encoding> {
        let batch = x.size()[0];
        let mut logdet = Tensor::zeros([batch], (x.kind(), x.device()));
        let mut log_prior = Tensor::zeros([batch], (x.kind(), x.device()));
        let mut latents = Vec::with_capacity(self.levels.len());
        let mut h = x.shallow_clone();
        for level in &self.levels {
            h = squeeze(&h);
            for step in &level.steps {
                h = step.forward(&h, &mut logdet, init);
            }
            if let Some(split) = &level.split {
                let (z1, eps, log_p) = split.forward(&h);
                log_prior += log_p;
                latents.push(eps);
                h = z1;
            }
        }
        log_prior += gaussian_log_density(&h, &self.top.mean, &self.top.logs);
        latents.push((h - &self.top.mean) * (-&self.top.logs).exp());
        Ok(Encoding {
            latents,
            logdet,
            log_prior,
        })
    }

    /// Decodes standardized latents (one tensor per level) to model inputs.
    pub fn decode(&self, latents: &[Tensor]) -> Result<Tensor> {
        if !self.is_initialized() {
            return Err(GlowError::Uninitialized);
        }
        let shapes = self.config.latent_shapes();
        if latents.len() != shapes.len()
            || latents
                .iter()
                .zip(&shapes)
                .any(|(z, s)| z.dim() != 4 || z.size()[1..] != s[..])
        {
            return Err(GlowError::Input(format!(
                "expected latents of shapes {shapes:?} (after the batch dimension), got {:?}",
                latents.iter().map(Tensor::size).collect::<Vec<_>>()
            )));
        }
        let top = latents.last().expect("at least one level");
        let mut h = &self.top.mean + self.top.logs.exp() * top.to_device(self.device());
        for (l, level) in self.levels.iter().enumerate().rev() {
            if let Some(split) = &level.split {
                h = split.reverse(&h, &latents[l].to_device(self.device()));
            }
            for step in level.steps.iter().rev() {
                h = step.reverse(&h);
            }
            h = unsqueeze(&h);
        }
        Ok(h)
    }

    /// Log-likelihood per image of model inputs `x`, in nats, `[B]`.
    pub fn log_likelihood(&self, x: &Tensor) -> Result<Tensor> {
        let enc = self.encode(x)?;
        let constant = preprocess::discretization_constant(self.config.dims(), self.config.n_bits);
        Ok(enc.logdet + enc.log_prior + constant)
    }

    /// Bits per dimension of each model input, `[B]`: `-log p(x) / (D ln 2)`.
    pub fn bits_per_dim(&self, x: &Tensor) -> Result<Tensor> {
        let denom = self.config.dims() as f64 * std::f64::consts::LN_2;
        Ok(self.log_likelihood(x)? / -denom)
    }

    /// Flattens per-level latents into `[B, D]`.
    pub fn flatten_latents(latents: &[Tensor]) -> Tensor {
        let flat: Vec<Tensor> = latents.iter().map(|z| z.flatten(1, -1)).collect();
        Tensor::cat(&flat, 1)
    }

    /// Splits flat latents `[B, D]` back into one tensor per level.
    pub fn unflatten_latents(&self, z: &Tensor) -> Result<Vec<Tensor>> {
        if z.dim() != 2 || z.size()[1] != self.latent_dim() {
            return Err(GlowError::Input(format!(
                "expected flat latents of shape [B, {}], got {:?}",
                self.latent_dim(),
                z.size()
            )));
        }
        let batch = z.size()[0];
        let mut offset = 0;
        Ok(self
            .config
            .latent_shapes()
            .iter()
            .map(|[c, h, w]| {
                let n = c * h * w;
                let part = z.narrow(1, offset, n).reshape([batch, *c, *h, *w]);
                offset += n;
                part
            })
            .collect())
    }

    /// Encodes uint8 images `[B, C, H, W]` to flat latents `[B, D]` on the
    /// model's device (each value at the center of its quantization bin).
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        let x = preprocess::to_model_input(
            images,
            self.config.n_bits,
            Dequantize::Center,
            self.device(),
        )?;
        let enc = tch::no_grad(|| self.encode(&x))?;
        Ok(Self::flatten_latents(&enc.latents))
    }

    /// Decodes flat latents `[B, D]` to uint8 images `[B, C, H, W]` on the CPU.
    pub fn decode_images(&self, z: &Tensor) -> Result<Tensor> {
        let latents = self.unflatten_latents(&z.to_kind(self.kind()))?;
        let x = tch::no_grad(|| self.decode(&latents))?;
        Ok(preprocess::to_images(&x, self.config.n_bits))
    }

    /// The float kind of the model's variables.
    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// `n` flat latents drawn from the prior at temperature `t` (every level's
    /// standard normal scaled by `t`; `t = 0` gives the prior means). The
    /// numbers come from a seeded generator on the CPU, so a seed gives the
    /// same faces on every device.
    pub fn sample_latents(&self, n: i64, temperature: f64, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let count = (n * self.latent_dim()) as usize;
        let values: Vec<f32> = (0..count)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        (Tensor::from_slice(&values).view([n, self.latent_dim()]) * temperature)
            .to_kind(self.kind())
            .to_device(self.device())
    }
}
