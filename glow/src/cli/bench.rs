//! `glow bench`: encode, decode and training speed of a config, with the
//! model's FLOPs per image so that utilization can be worked out.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use glow::preprocess::{self, Dequantize};
use glow::train::{TrainConfig, Trainer};
use glow::Glow;
use tch::{Kind, Tensor};

use super::{load_preset, DeviceArgs};

#[derive(Args)]
pub struct BenchArgs {
    /// A preset name from configs/ or a TOML file.
    #[arg(long, default_value = "celeba64")]
    config: String,
    #[arg(long, default_value_t = 16)]
    batch_size: i64,
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    #[command(flatten)]
    device: DeviceArgs,
}

fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds per call of `f`, the best of `repeats` after one warm-up call.
fn time<F: FnMut() -> Result<()>>(device: tch::Device, repeats: u32, mut f: F) -> Result<f64> {
    f()?;
    synchronize(device);
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        synchronize(device);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let preset = load_preset(&args.config)?;
    let device = args.device.resolve()?;
    let cfg = &preset.model;
    let b = args.batch_size;
    let images = Tensor::randint(
        256,
        [b, cfg.channels, cfg.image_size, cfg.image_size],
        (Kind::Uint8, tch::Device::Cpu),
    );

    let mut trainer = Trainer::new(
        Glow::new(cfg, device)?,
        TrainConfig {
            batch_size: b as usize,
            ..preset.train
        },
        "bench".into(),
    );
    trainer.glow.initialize(&images)?;
    let glow = &trainer.glow;
    let x = preprocess::to_model_input(&images, cfg.n_bits, Dequantize::Center, device)?;
    let encode = time(device, args.repeats, || {
        tch::no_grad(|| glow.encode(&x))
            .map(|_| ())
            .map_err(Into::into)
    })?;
    let z = glow.encode_images(&images)?;
    let decode = time(device, args.repeats, || {
        glow.decode_images(&z).map(|_| ()).map_err(Into::into)
    })?;
    let step = time(device, args.repeats, || {
        trainer.step(&images).map(|_| ()).map_err(Into::into)
    })?;

    let flops = cfg.flops_per_image();
    let per_image = |s: f64| s / b as f64;
    println!(
        "config {} on {} (batch {b})",
        args.config,
        glow::device::describe(device)
    );
    println!("parameters: {}", trainer.glow.parameter_count());
    println!("forward FLOPs per image: {:.3} GFLOP", flops / 1e9);
    println!(
        "encode: {:.1} images/s ({:.1} GFLOP/s)",
        1.0 / per_image(encode),
        flops / per_image(encode) / 1e9
    );
    println!("decode: {:.1} images/s", 1.0 / per_image(decode));
    println!(
        "train step: {:.1} ms per image, {:.1} images/s (forward + backward ~ 3x forward FLOPs: {:.1} GFLOP/s)",
        per_image(step) * 1e3,
        1.0 / per_image(step),
        3.0 * flops / per_image(step) / 1e9
    );
    Ok(())
}
