//! The subcommands of `glow`, one module per group, and what they share.

pub mod bench;
pub mod render;
pub mod run;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use glow::device::DeviceChoice;
use glow::train::TrainConfig;
use glow::GlowConfig;
use serde::Deserialize;

/// Where and how the model runs.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// CPU threads for libtorch (0: its default, one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl DeviceArgs {
    pub fn resolve(&self) -> Result<tch::Device> {
        glow::device::set_threads(self.threads);
        let device = self.device.resolve()?;
        tracing::info!(device = %glow::device::describe(device), "device chosen");
        Ok(device)
    }
}

/// A preset file from `configs/`: the model and its training schedule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub model: GlowConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

/// Resolves `name_or_path`: an existing file, or a preset name looked up in
/// `configs/` of the working directory and of the source tree.
pub fn load_preset(name_or_path: &str) -> Result<Preset> {
    let direct = PathBuf::from(name_or_path);
    let candidates = [
        direct.clone(),
        Path::new("configs").join(format!("{name_or_path}.toml")),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/{name_or_path}.toml")),
    ];
    let path = candidates.iter().find(|p| p.is_file()).with_context(|| {
        format!("no config file or preset named `{name_or_path}` (looked in configs/)")
    })?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let preset: Preset =
        toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
    preset.model.validate()?;
    Ok(preset)
}
