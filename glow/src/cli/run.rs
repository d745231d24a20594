//! `glow eval`, `glow sample`, `glow reconstruct` and `glow info`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use glow::checkpoint::ModelFile;
use glow::data::{self, Dataset, Split};
use glow::train::{self, SAMPLE_TEMPERATURE};
use glow::Glow;
use tch::Kind;

use super::DeviceArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// A CelebA-style folder, or any image folder (all of it is evaluated).
    #[arg(long)]
    data: PathBuf,
    /// train, valid or test.
    #[arg(long, default_value = "test")]
    split: Split,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Seed of the dequantization noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let glow = Glow::load(&args.model, args.device.resolve()?)?;
    let entries = Dataset::open(&args.data)?.split(args.split);
    let (bpd, n) = train::evaluate_entries(&glow, entries, args.batch_size, 2, args.seed)?;
    println!("{bpd:.4} bits/dim on {n} images ({:?} split)", args.split);
    Ok(())
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 16)]
    n: i64,
    #[arg(long, default_value_t = SAMPLE_TEMPERATURE)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Columns of the grid.
    #[arg(long, default_value_t = 8)]
    cols: i64,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn sample(args: SampleArgs) -> Result<()> {
    anyhow::ensure!(args.n >= 1, "--n must be at least 1");
    anyhow::ensure!(
        args.temperature.is_finite() && args.temperature >= 0.0,
        "--temperature must be a finite number >= 0"
    );
    let glow = Glow::load(&args.model, args.device.resolve()?)?;
    let images = glow.decode_images(&glow.sample_latents(args.n, args.temperature, args.seed))?;
    train::save_png(&data::grid(&images, args.cols.max(1)), &args.out)?;
    println!(
        "wrote {} ({} samples at T = {})",
        args.out.display(),
        args.n,
        args.temperature
    );
    Ok(())
}

#[derive(Args)]
pub struct ReconstructArgs {
    #[arg(long)]
    model: PathBuf,
    /// Face images (any size; the face crop is taken from the center).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn reconstruct(args: ReconstructArgs) -> Result<()> {
    let glow = Glow::load(&args.model, args.device.resolve()?)?;
    let size = glow.config().image_size;
    let faces = args
        .images
        .iter()
        .map(|p| data::load_face(p, size))
        .collect::<Result<Vec<_>, _>>()?;
    let faces = tch::Tensor::stack(&faces, 0);
    let z = glow.encode_images(&faces)?;
    let back = glow.decode_images(&z)?;
    let differing = faces
        .ne_tensor(&back)
        .to_kind(Kind::Int64)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let quantized = glow::preprocess::to_images(
        &glow::preprocess::to_model_input(
            &faces,
            glow.config().n_bits,
            glow::preprocess::Dequantize::Center,
            tch::Device::Cpu,
        )?,
        glow.config().n_bits,
    );
    let mismatches = quantized
        .ne_tensor(&back)
        .to_kind(Kind::Int64)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let both = tch::Tensor::cat(&[quantized, back], 0);
    train::save_png(&data::grid(&both, faces.size()[0]), &args.out)?;
    println!(
        "{} faces -> latents [{}] -> faces: {} of {} values differ from the {}-bit inputs ({} differ from the 8-bit originals); wrote {}",
        faces.size()[0],
        z.size()[1],
        mismatches,
        faces.numel(),
        glow.config().n_bits,
        differing,
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct InfoArgs {
    model: PathBuf,
}

pub fn info(args: InfoArgs) -> Result<()> {
    let file = ModelFile::read(&args.model)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&file.config).context("config")?
    );
    for (k, v) in &file.metadata {
        if k != glow::checkpoint::CONFIG_KEY {
            println!("{k}: {v}");
        }
    }
    Ok(())
}
