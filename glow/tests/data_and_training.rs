//! The data pipeline and the training loop: both CelebA image sizes, plain
//! folders, unreadable files, the metrics log and exact resumption.

mod support;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use glow::data::{self, Dataset, Loader, LoaderConfig, Position, Split};
use glow::train::{self, MetricsLine, OptimizerKind, RunFiles, TrainConfig, Trainer, Watch};
use glow::{Coupling, Glow};
use image::RgbImage;
use support::*;
use tch::{Kind, Tensor};

/// Writes a small CelebA-style folder: the example faces at full size, a
/// half-size copy of some, one corrupt file, and the two label files.
fn celeba_like(dir: &Path) -> Vec<String> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut names = Vec::new();
    for (i, src) in example_face_paths().iter().enumerate() {
        let name = format!("{:06}.jpg", i + 1);
        let img = image::open(src).unwrap().to_rgb8();
        let img = if i % 4 == 3 {
            image::imageops::resize(&img, 89, 109, image::imageops::FilterType::Lanczos3)
        } else {
            img
        };
        img.save(images.join(&name)).unwrap();
        names.push(name);
    }
    let corrupt = format!("{:06}.jpg", names.len() + 1);
    std::fs::write(images.join(&corrupt), b"\xff\xd8\xff not really a jpeg").unwrap();
    names.push(corrupt);

    let partition: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{n} {}\n",
                if i < 12 || i == names.len() - 1 {
                    0
                } else if i < 14 {
                    1
                } else {
                    2
                }
            )
        })
        .collect();
    std::fs::write(dir.join("list_eval_partition.txt"), partition).unwrap();
    let attr_names: Vec<String> = (0..40).map(|a| format!("Attr_{a}")).collect();
    let mut attrs = format!("{}\n{}\n", names.len(), attr_names.join(" "));
    for (i, n) in names.iter().enumerate() {
        let values: Vec<&str> = (0..40)
            .map(|a| if (i + a) % 3 == 0 { "1" } else { "-1" })
            .collect();
        attrs.push_str(&format!("{n} {}\n", values.join(" ")));
    }
    std::fs::write(dir.join("list_attr_celeba.txt"), attrs).unwrap();
    names
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[test]
fn both_celeba_sizes_give_the_same_face_crop() {
    let full = image::open(&example_face_paths()[0]).unwrap().to_rgb8();
    let half: RgbImage =
        image::imageops::resize(&full, 89, 109, image::imageops::FilterType::Lanczos3);
    let a = data::face_tensor(&full, 64);
    let b = data::face_tensor(&half, 64);
    assert_eq!(a.size(), [3, 64, 64]);
    let p = psnr(&a, &b);
    assert!(
        p > 27.0,
        "the half-size file crops a different face region: PSNR {p:.1} dB"
    );
    // A shifted crop of the same photo is much further away.
    let shifted = data::face_tensor(
        &image::imageops::crop_imm(&full, 20, 0, 158, 218).to_image(),
        64,
    );
    assert!(psnr(&a, &shifted) < p - 5.0);
}

#[test]
fn reads_celeba_folders_with_labels_and_plain_folders() {
    let dir = tempfile::tempdir().unwrap();
    let names = celeba_like(dir.path());
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.entries.len(), names.len());
    assert_eq!(ds.attribute_names.len(), 40);
    assert_eq!(ds.split(Split::Train).len(), 13);
    assert_eq!(ds.split(Split::Valid).len(), 2);
    assert_eq!(ds.split(Split::Test).len(), 2);
    let first = &ds.entries[0];
    assert_eq!(first.attributes.unwrap()[0], 1);
    assert_eq!(first.attributes.unwrap()[1], -1);

    let plain = Dataset::open(example_face_paths()[0].parent().unwrap()).unwrap();
    assert_eq!(plain.entries.len(), example_face_paths().len());
    assert!(plain.attribute_names.is_empty());
    assert_eq!(plain.split(Split::Train).len(), plain.entries.len());

    let empty = tempfile::tempdir().unwrap();
    let err = Dataset::open(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no images"), "{err}");
}

#[test]
fn malformed_label_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    celeba_like(dir.path());
    std::fs::write(dir.path().join("list_eval_partition.txt"), "000001.jpg 7\n").unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("list_eval_partition.txt") && err.contains("line 1") && err.contains("`7`"),
        "{err}"
    );
}

#[test]
fn the_loader_skips_corrupt_files_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    celeba_like(dir.path());
    let entries = Dataset::open(dir.path()).unwrap().split(Split::Train);
    let config = LoaderConfig {
        batch_size: 5,
        image_size: 32,
        shuffle: true,
        flip: true,
        drop_last: true,
        seed: 3,
        workers: 2,
        prefetch: 1,
        epochs: Some(3),
    };
    let batches: Vec<_> = Loader::new(entries.clone(), config.clone(), Position::default())
        .unwrap()
        .collect();
    assert_eq!(
        batches.len(),
        6,
        "13 images in batches of 5, drop_last: 2 per epoch"
    );
    let corrupt = entries
        .iter()
        .position(|e| e.path.to_string_lossy().ends_with("000017.jpg"))
        .unwrap();
    let seen: usize = batches.iter().map(|b| b.indices.len()).sum();
    let with_corrupt = batches.iter().filter(|b| b.indices.len() == 4).count();
    assert!(batches.iter().all(|b| !b.indices.contains(&corrupt)));
    assert_eq!(seen, 30 - with_corrupt);
    assert!(batches.iter().all(|b| b.images.size()[1..] == [3, 32, 32]));

    // Starting at a later position gives exactly the batches an uninterrupted stream gives there.
    let resumed: Vec<_> = Loader::new(entries, config, Position { epoch: 1, batch: 1 })
        .unwrap()
        .collect();
    assert_eq!(resumed.len(), 3);
    assert_eq!(resumed[0].indices, batches[3].indices);
    assert!(resumed[0].images.equal(&batches[3].images));
}

fn run_config() -> TrainConfig {
    TrainConfig {
        batch_size: 4,
        optimizer: OptimizerKind::Adamax,
        learning_rate: 1e-3,
        warmup_images: 8,
        max_images: 0,
        checkpoint_minutes: 60.0,
        loader_workers: 2,
        seed: 11,
        ..TrainConfig::default()
    }
}

/// How [`train_to`] begins.
enum Start<'a> {
    Fresh,
    Resume,
    WarmFrom(&'a Path),
}

fn train_to(dir: &Path, images: u64, start: Start, watch: &Watch) -> Trainer {
    let entries = Dataset::open(example_face_paths()[0].parent().unwrap())
        .unwrap()
        .split(Split::Train);
    let cfg = TrainConfig {
        max_images: images,
        ..run_config()
    };
    let glow = Glow::new(&small_config(16, Coupling::Affine), cpu()).unwrap();
    let files = RunFiles {
        dir: dir.to_path_buf(),
    };
    let mut trainer = match start {
        Start::Fresh => Trainer::new(glow, cfg, "examples".into()),
        Start::Resume => Trainer::resume(glow, cfg, &files.checkpoint()).unwrap(),
        Start::WarmFrom(model) => Trainer::warm_start(glow, cfg, model).unwrap(),
    };
    train::run(
        &mut trainer,
        entries,
        &files,
        watch,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    trainer
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let watch = Watch {
        valid: Some(example_faces(16).narrow(0, 0, 4)),
        reconstruct: Some(example_faces(16).narrow(0, 0, 2)),
    };
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = train_to(straight_dir.path(), 24, Start::Fresh, &watch);
    let split_dir = tempfile::tempdir().unwrap();
    train_to(split_dir.path(), 12, Start::Fresh, &watch);
    let resumed = train_to(split_dir.path(), 24, Start::Resume, &watch);

    assert_eq!(straight.state.step, 6);
    assert_eq!(resumed.state.step, 6);
    assert_eq!(resumed.state.images_seen, 24);
    for (name, v) in straight.glow.var_store().variables() {
        let other = &resumed.glow.var_store().variables()[&name];
        assert!(
            max_abs_diff(&v, other) < 1e-6,
            "{name} differs after resuming"
        );
    }

    // Each session appended a metrics line and wrote its pictures.
    let lines: Vec<MetricsLine> = std::fs::read_to_string(split_dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1].images_seen, 24);
    assert!(lines
        .iter()
        .all(|l| l.valid_bits_per_dim.is_some_and(f64::is_finite)));
    let files = RunFiles {
        dir: split_dir.path().to_path_buf(),
    };
    let samples = image::open(files.samples(6)).unwrap();
    assert_eq!((samples.width(), samples.height()), (8 * 16, 2 * 16));
    let recon = image::open(files.reconstructions(6)).unwrap();
    assert_eq!((recon.width(), recon.height()), (2 * 16, 2 * 16));
}

#[test]
fn a_shipped_model_warm_starts_a_new_run_with_its_counts() {
    let watch = Watch {
        valid: None,
        reconstruct: None,
    };
    let first = tempfile::tempdir().unwrap();
    let trained = train_to(first.path(), 12, Start::Fresh, &watch);
    // A shipped model: f16 weights and the training state, no optimizer.
    let model = first.path().join("shipped.safetensors");
    let state = serde_json::to_string(&trained.state).unwrap();
    let meta = [(train::STATE_KEY.to_string(), state)].into();
    trained
        .glow
        .save(&model, glow::Precision::F16, &meta)
        .unwrap();

    let glow = Glow::new(&small_config(16, Coupling::Affine), cpu()).unwrap();
    let warm = Trainer::warm_start(glow, run_config(), &model).unwrap();
    assert_eq!((warm.state.step, warm.state.images_seen), (3, 12));
    assert_eq!(warm.state.optimizer_step, 0);
    assert_eq!(warm.learning_rate(), 0.0, "the warm-up starts again");
    for (name, v) in trained.glow.var_store().variables() {
        let loaded = &warm.glow.var_store().variables()[&name];
        assert!(max_abs_diff(&v, loaded) < 1e-2, "{name} was not loaded");
    }

    let second = tempfile::tempdir().unwrap();
    let continued = train_to(second.path(), 24, Start::WarmFrom(&model), &watch);
    assert_eq!(continued.state.step, 6);
    assert_eq!(continued.state.images_seen, 24);
    assert_eq!(continued.state.optimizer_step, 3);
    assert_eq!(continued.state.warmup_start, 12);
    assert_eq!(continued.learning_rate(), 1e-3);

    // A model file without training state is refused by name.
    let bare = first.path().join("bare.safetensors");
    trained
        .glow
        .save(&bare, glow::Precision::F16, &Default::default())
        .unwrap();
    let glow = Glow::new(&small_config(16, Coupling::Affine), cpu()).unwrap();
    let err = Trainer::warm_start(glow, run_config(), &bare)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("glowline.train"), "{err}");
}

#[test]
fn eval_streams_a_split() {
    let dir = tempfile::tempdir().unwrap();
    celeba_like(dir.path());
    let ds = Dataset::open(dir.path()).unwrap();
    let glow = Glow::new(&small_config(16, Coupling::Additive), cpu()).unwrap();
    glow.initialize(&example_faces(16)).unwrap();
    let (bpd, n) = train::evaluate_entries(&glow, ds.split(Split::Train), 4, 2, 0).unwrap();
    assert_eq!(n, 12, "the corrupt training file is skipped");
    assert!(bpd.is_finite() && bpd > 0.0 && bpd < 8.0, "{bpd}");
    let (again, _) = train::evaluate_entries(&glow, ds.split(Split::Train), 4, 2, 0).unwrap();
    assert_eq!(bpd, again, "evaluation is reproducible");
}
