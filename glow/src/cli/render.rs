//! `glow render` (a job spec to PNG, GIF and MP4 files) and `glow
//! directions` (the attribute vectors edits move along).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use contract::spec::{JobSpec, ATTRIBUTE_ALIASES};
use glow::data::Dataset;
use glow::directions::{self, ComputeOptions, Directions};
use glow::render::{
    sha256_file, DirInputs, ImageLimits, ProgressBarHooks, RenderConfig, RenderReport, Renderer,
};
use glow::Glow;
use indicatif::{ProgressBar, ProgressStyle};

use super::DeviceArgs;

/// The shipped model, relative to the repository root.
const DEFAULT_MODEL: &str = "models/celeba64.safetensors";

/// Bytes in a mebibyte, for the memory flags.
const MIB: u64 = 1024 * 1024;

#[derive(Args)]
pub struct RenderArgs {
    /// The job spec (JSON); relative input paths are read from its folder.
    spec: PathBuf,
    /// Folder for the outputs and report.json (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// The model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Attribute directions for edits [default: beside the model, NAME.directions.safetensors].
    #[arg(long)]
    directions: Option<PathBuf>,
    /// Folder relative input paths start from, instead of the spec's folder.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Smallest accepted photo side in pixels.
    #[arg(long, default_value_t = glow::render::input::DEFAULT_MIN_SIDE)]
    min_side: u32,
    /// Largest accepted photo side in pixels; larger headers are refused unread.
    #[arg(long, default_value_t = glow::render::input::DEFAULT_MAX_SIDE)]
    max_side: u32,
    /// Most memory a photo's decoder may use, in MiB.
    #[arg(long, default_value_t = glow::render::input::DEFAULT_MAX_ALLOC / MIB)]
    max_image_mib: u64,
    /// Memory for one decode batch's activations, in MiB (sets the batch size).
    #[arg(long, default_value_t = glow::render::DEFAULT_DECODE_MEMORY / MIB)]
    decode_mib: u64,
    /// The ffmpeg program for MP4 output.
    #[arg(long, env = "GLOWLINE_FFMPEG", default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    /// The face detector's weights, for aligning photos [default: the
    /// workspace's models/mtcnn.safetensors, written by scripts/setup.sh].
    #[arg(long, env = "GLOWLINE_DETECTOR")]
    detector: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Sets `flag` on Ctrl-C, so that a long render stops between batches.
fn cancel_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || handler_flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(flag)
}

pub fn render(args: RenderArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let spec = JobSpec::from_json(&text).with_context(|| format!("{}", args.spec.display()))?;
    let inputs_root = match &args.inputs {
        Some(dir) => dir.clone(),
        None => args
            .spec
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };

    if !args.model.is_file() {
        bail!(
            "{}: no such model file; pass --model (the shipped one is {DEFAULT_MODEL} in the repository)",
            args.model.display()
        );
    }
    let device = args.device.resolve()?;
    let model = Glow::load(&args.model, device)?;
    let model_sha256 =
        sha256_file(&args.model).with_context(|| format!("hashing {}", args.model.display()))?;
    let directions_path = args
        .directions
        .clone()
        .unwrap_or_else(|| Directions::path_for_model(&args.model));
    let directions = if directions_path.is_file() {
        let d = Directions::load(&directions_path)?;
        d.check_model(&directions_path, &model_sha256, model.latent_dim())?;
        Some(d)
    } else if args.directions.is_some() {
        bail!("{}: no such directions file", directions_path.display());
    } else {
        None
    };

    let config = RenderConfig {
        limits: ImageLimits {
            min_side: args.min_side,
            max_side: args.max_side,
            max_alloc: args.max_image_mib * MIB,
        },
        decode_memory: args.decode_mib * MIB,
        ffmpeg: args.ffmpeg.clone(),
        detector: args
            .detector
            .clone()
            .unwrap_or_else(glow::align::default_detector_path),
        ..RenderConfig::default()
    };
    let renderer = Renderer::new(&model, model_sha256, directions.as_ref(), config);
    let hooks = ProgressBarHooks::new(cancel_on_ctrl_c()?);
    let result = renderer.render(&spec, &DirInputs::new(inputs_root), &args.out, &hooks);
    hooks.finish();
    let report = result.with_context(|| format!("rendering {}", args.spec.display()))?;
    print_summary(&report, &args.out);
    Ok(())
}

fn print_summary(report: &RenderReport, out: &Path) {
    let t = &report.timings;
    println!(
        "{} job: {} frames rendered ({} played) at {}x{} into {}",
        report.kind,
        report.frames.rendered,
        report.frames.played,
        report.frame_size[0],
        report.frame_size[1],
        out.display()
    );
    for name in &report.outputs {
        println!("  {name}");
    }
    for faces in &report.faces {
        println!(
            "{}: {} found, aligned face {} (numbered from 0, left to right)",
            faces.input,
            if faces.found == 1 {
                "1 face".to_string()
            } else {
                format!("{} faces", faces.found)
            },
            faces.used
        );
    }
    println!(
        "{:.2}s: read {:.2}s, encode {:.2}s, decode {:.2}s, compose {:.2}s, png {:.2}s, gif {:.2}s, mp4 {:.2}s",
        t.total, t.read_inputs, t.encode, t.decode, t.compose, t.png, t.gif, t.mp4
    );
}

#[derive(Args)]
pub struct DirectionsArgs {
    /// A CelebA-style folder with list_attr_celeba.txt; its training split is encoded.
    #[arg(long)]
    data: PathBuf,
    /// The model whose latent space the directions live in.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Where to write the table [default: beside the model, NAME.directions.safetensors].
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = ComputeOptions::default().batch_size)]
    batch_size: usize,
    /// Threads decoding JPEGs ahead of the model.
    #[arg(long, default_value_t = ComputeOptions::default().workers)]
    workers: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn directions(args: DirectionsArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let model = Glow::load(&args.model, device)?;
    let model_sha256 =
        sha256_file(&args.model).with_context(|| format!("hashing {}", args.model.display()))?;
    let dataset = Dataset::open(&args.data)?;
    let faces = dataset
        .split(glow::data::Split::Train)
        .iter()
        .filter(|e| e.attributes.is_some())
        .count();

    let bar = ProgressBar::new(faces as u64);
    bar.set_style(
        ProgressStyle::with_template("encoding faces [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let options = ComputeOptions {
        batch_size: args.batch_size,
        workers: args.workers,
    };
    let table = directions::compute(&model, &model_sha256, &dataset, &options, &mut |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();

    let out = args
        .out
        .unwrap_or_else(|| Directions::path_for_model(&args.model));
    table.save(&out)?;
    println!(
        "{} faces encoded; directions written to {}",
        table.images(),
        out.display()
    );
    for alias in ATTRIBUTE_ALIASES {
        let index = contract::spec::resolve_attribute(alias.name)
            .expect("aliases resolve")
            .index;
        let (positives, negatives) = table.counts(index);
        let norm = table.vector(alias.name).map(|v| v.norm().double_value(&[]));
        println!(
            "  {:<12} {:<12} {positives:>6} with, {negatives:>6} without, |d| = {}",
            alias.name,
            alias.attribute,
            norm.map_or_else(|e| e.to_string(), |n| format!("{n:.2}"))
        );
    }
    Ok(())
}
