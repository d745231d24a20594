//! `glow train` and `glow export`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use glow::checkpoint::ModelFile;
use glow::data::{Dataset, Split};
use glow::train::{self, RunFiles, Trainer, Watch, STATE_KEY};
use glow::{Glow, Precision};

use super::{load_preset, DeviceArgs};

/// Faces reconstructed at every checkpoint.
const RECONSTRUCTED_FACES: usize = 8;

#[derive(Args)]
pub struct TrainArgs {
    /// A preset name from configs/ (e.g. celeba64) or a TOML file.
    #[arg(long, default_value = "celeba64")]
    config: String,
    /// A CelebA-style folder (trains on its train split) or any image folder.
    #[arg(long)]
    data: PathBuf,
    /// Run folder: checkpoint, metrics log, sample grids.
    #[arg(long)]
    run: PathBuf,
    /// Continue from the run folder's checkpoint.
    #[arg(long, conflicts_with = "init_from")]
    resume: bool,
    /// Warm-start a new run from a shipped model (e.g. models/celeba64.safetensors):
    /// its weights and counts, a fresh optimizer and a new learning-rate warm-up.
    #[arg(long, value_name = "MODEL")]
    init_from: Option<PathBuf>,
    /// Stop after this many images in total (overrides the preset; 0: never).
    #[arg(long)]
    max_images: Option<u64>,
    /// Minutes between checkpoints (overrides the preset).
    #[arg(long)]
    checkpoint_minutes: Option<f64>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn train(args: TrainArgs) -> Result<()> {
    let preset = load_preset(&args.config)?;
    let mut config = preset.train;
    if let Some(n) = args.max_images {
        config.max_images = n;
    }
    if let Some(m) = args.checkpoint_minutes {
        config.checkpoint_minutes = m;
    }
    let device = args.device.resolve()?;
    let dataset = Dataset::open(&args.data)?;
    let entries = dataset.split(Split::Train);
    let files = RunFiles {
        dir: args.run.clone(),
    };
    let glow = Glow::with_seed(&preset.model, device, config.seed)?;
    let mut trainer = if args.resume {
        Trainer::resume(glow, config, &files.checkpoint())
            .with_context(|| format!("resuming from {}", files.checkpoint().display()))?
    } else if files.checkpoint().exists() {
        bail!(
            "{} already exists: pass --resume to continue it, or choose another --run folder",
            files.checkpoint().display()
        );
    } else if let Some(model) = &args.init_from {
        Trainer::warm_start(glow, config, model)
            .with_context(|| format!("warm-starting from {}", model.display()))?
    } else {
        Trainer::new(
            glow,
            config,
            format!(
                "{} (train split, {} images)",
                args.data.display(),
                entries.len()
            ),
        )
    };
    tracing::info!(
        images = entries.len(),
        parameters = trainer.glow.parameter_count(),
        step = trainer.state.step,
        "training"
    );

    let eval_count = trainer.config.eval_images;
    let valid: Vec<_> = dataset
        .split(Split::Valid)
        .into_iter()
        .take(eval_count)
        .collect();
    let test: Vec<_> = dataset
        .split(Split::Test)
        .into_iter()
        .take(RECONSTRUCTED_FACES)
        .collect();
    let size = preset.model.image_size;
    let watch = Watch {
        valid: (!valid.is_empty() && dataset.entries.iter().any(|e| e.split.is_some()))
            .then(|| glow::data::load_all(&valid, size))
            .transpose()?,
        reconstruct: Some(glow::data::load_all(&test, size)?),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        eprintln!("\nstopping: writing a checkpoint (press Ctrl-C again to abort)");
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;

    let state = train::run(&mut trainer, entries, &files, &watch, stop)?;
    println!(
        "stopped at step {} after {} images; checkpoint {}",
        state.step,
        state.images_seen,
        files.checkpoint().display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// Training checkpoint to export.
    #[arg(long)]
    checkpoint: PathBuf,
    /// CelebA-style folder whose validation and test splits are evaluated.
    #[arg(long)]
    data: PathBuf,
    /// The shipped model file to write (f16).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let file = ModelFile::read(&args.checkpoint)?;
    let state = file
        .metadata
        .get(STATE_KEY)
        .context("the checkpoint has no training state")?
        .clone();
    let glow = Glow::load(&args.checkpoint, device)?;

    // Evaluate the f16-rounded weights: they are what ships.
    let tmp = args.out.with_extension("f16.tmp");
    glow.save(&tmp, Precision::F16, &BTreeMap::new())?;
    let shipped = Glow::load(&tmp, device)?;
    std::fs::remove_file(&tmp).ok();

    let dataset = Dataset::open(&args.data)?;
    let mut meta = BTreeMap::new();
    meta.insert(STATE_KEY.to_string(), state);
    for (split, key) in [(Split::Valid, "valid"), (Split::Test, "test")] {
        let entries = dataset.split(split);
        let (bpd, n) = train::evaluate_entries(&shipped, entries, args.batch_size, 2, 0)?;
        println!("{key}: {bpd:.4} bits/dim over {n} images");
        meta.insert(format!("glowline.{key}_bits_per_dim"), format!("{bpd:.4}"));
        meta.insert(format!("glowline.{key}_images"), n.to_string());
    }
    shipped.save(&args.out, Precision::F16, &meta)?;
    let size = std::fs::metadata(&args.out)?.len();
    println!("wrote {} ({:.1} MB)", args.out.display(), size as f64 / 1e6);
    Ok(())
}
