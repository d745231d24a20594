//! Render benchmark: a nine-way morph with 48 frames per tile at the default
//! output size (256 px faces, a 768 px grid), written as MP4 and GIF,
//! reported as frames per second with the time of each stage.
//!
//! ```text
//! cargo run --release -p glow --example render_bench -- --model models/celeba64.safetensors
//! ```
//!
//! Faces come from `examples/faces/` (reused in turn if there are fewer than
//! ten). Without a model file the benchmark builds the shipped architecture
//! with fresh weights: speed does not depend on the weights, only the
//! pictures do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use contract::spec::{AlignmentOptions, Format, JobSpec, Operation, OutputOptions, SPEC_VERSION};
use glow::render::{sha256_file, NoHooks, RenderConfig, Renderer};
use glow::{Glow, GlowConfig};
use tch::{Device, Tensor};

/// Frames per tile of the benchmark job, as the render issue specifies.
const FRAMES: u32 = 48;

#[derive(Parser)]
struct Args {
    /// A model file; without one, fresh weights of the default architecture.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder of faces; ten are used.
    #[arg(long, default_value = "examples/faces")]
    faces: PathBuf,
    /// Where the outputs go.
    #[arg(long, default_value = "runs/render_bench")]
    out: PathBuf,
    /// CPU threads for libtorch (0: its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Up to ten face files of `dir`, sorted, reused in turn to make ten.
fn faces(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg") || n.ends_with(".png") || n.ends_with(".webp"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{}: no faces (jpg, png, webp)", dir.display());
    }
    Ok((0..10).map(|i| names[i % names.len()].clone()).collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    glow::device::set_threads(args.threads);
    let device = Device::cuda_if_available();
    let names = faces(&args.faces)?;

    let (model, sha256, weights) = match &args.model {
        Some(path) => (
            Glow::load(path, device)?,
            sha256_file(path)?,
            path.display().to_string(),
        ),
        None => {
            let config = GlowConfig::default();
            let model = Glow::new(&config, device)?;
            let photos: Vec<Tensor> = names
                .iter()
                .map(|n| glow::data::load_face(&args.faces.join(n), config.image_size))
                .collect::<Result<_, _>>()?;
            model.initialize(&Tensor::stack(&photos, 0))?;
            (
                model,
                "untrained".to_string(),
                "fresh weights (celeba64 architecture)".into(),
            )
        }
    };

    let spec = JobSpec {
        version: SPEC_VERSION,
        operation: Operation::NineWayMorph {
            base: names[0].clone(),
            targets: names[1..].to_vec(),
            frames: FRAMES,
        },
        output: OutputOptions {
            formats: BTreeSet::from([Format::Mp4, Format::Gif]),
            ..OutputOptions::default()
        },
        seed: 0,
        alignment: AlignmentOptions::default(),
    };
    let renderer = Renderer::new(&model, sha256, None, RenderConfig::default());
    let inputs = glow::render::DirInputs::new(&args.faces);

    // One warm-up render, so that one-time libtorch set-up is not counted.
    renderer.render(&spec, &inputs, &args.out, &NoHooks)?;
    let report = renderer.render(&spec, &inputs, &args.out, &NoHooks)?;

    let t = &report.timings;
    let frames = report.frames.played as f64;
    let stages = BTreeMap::from([
        ("1 read inputs", t.read_inputs),
        ("2 encode", t.encode),
        ("3 decode", t.decode),
        ("4 compose (upscale)", t.compose),
        ("5 gif", t.gif),
        ("6 mp4 (ffmpeg)", t.mp4),
    ]);
    println!(
        "nine-way morph, {FRAMES} frames per tile, {}x{} px",
        report.frame_size[0], report.frame_size[1]
    );
    println!(
        "model: {weights}; device: {}; decode batch {}",
        report.device, report.decode_batch
    );
    println!(
        "{} frames, {} faces decoded in {:.2} s: {:.2} frames/s",
        report.frames.played,
        report.frames.tiles_decoded,
        t.total,
        frames / t.total
    );
    for (stage, seconds) in stages {
        println!(
            "  {:<22} {seconds:>7.2} s  {:>5.1}%",
            &stage[2..],
            100.0 * seconds / t.total
        );
    }
    println!(
        "  decode alone: {:.1} faces/s; video encoding alone (gif + mp4): {:.1} frames/s",
        report.frames.tiles_decoded as f64 / t.decode,
        frames / (t.gif + t.mp4)
    );
    Ok(())
}
