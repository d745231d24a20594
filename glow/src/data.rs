//! Face data: CelebA-style folders and plain image folders, streamed in
//! batches with parallel JPEG decoding and bounded memory.
//!
//! A CelebA-style folder has `images/` (or `img_align_celeba/`) plus the
//! official `list_eval_partition.txt` and, optionally, `list_attr_celeba.txt`.
//! Any other folder is read as plain images without labels. Every image goes
//! through the same face crop: the centered square CelebA practice uses, 148
//! px wide on the 178x218 originals and scaled with the image for other sizes
//! (74 px on the 89x109 half-size files), resized to the model size with a
//! Lanczos filter.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::imageops::FilterType;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::{GlowError, Result};

/// Width of the face crop relative to the image width: 148 px of CelebA's
/// 178 px aligned images, the crop Real NVP and most CelebA-64 work use.
pub const FACE_CROP_FRACTION: f64 = 148.0 / 178.0;

/// Number of binary attributes in CelebA's `list_attr_celeba.txt`.
pub const ATTRIBUTE_COUNT: usize = 40;

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// CelebA's evaluation partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl std::str::FromStr for Split {
    type Err = GlowError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "valid" | "validation" => Ok(Split::Valid),
            "test" => Ok(Split::Test),
            _ => Err(GlowError::Config(format!(
                "unknown split `{s}`: use train, valid or test"
            ))),
        }
    }
}

/// One image of a data set.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: PathBuf,
    /// The partition, for CelebA-style folders.
    pub split: Option<Split>,
    /// The 40 attributes as +1 / -1, when the folder has them.
    pub attributes: Option<[i8; ATTRIBUTE_COUNT]>,
}

/// A folder of face images, with CelebA's labels when it has them.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    /// Attribute names in file order (empty for a plain folder).
    pub attribute_names: Vec<String>,
    pub entries: Vec<Entry>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| GlowError::io(path, e))
}

fn data_error(path: &Path, line: usize, message: impl std::fmt::Display) -> GlowError {
    GlowError::Data {
        path: path.into(),
        message: format!("line {line}: {message}"),
    }
}

fn parse_partitions(path: &Path) -> Result<Vec<(String, Split)>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut parts = line.split_whitespace();
        let (Some(file), Some(split), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(data_error(path, i + 1, "expected `FILE SPLIT`"));
        };
        let split = match split {
            "0" => Split::Train,
            "1" => Split::Valid,
            "2" => Split::Test,
            other => return Err(data_error(path, i + 1, format!("unknown split `{other}`"))),
        };
        out.push((file.to_string(), split));
    }
    Ok(out)
}

type Attributes = (Vec<String>, HashMap<String, [i8; ATTRIBUTE_COUNT]>);

fn parse_attributes(path: &Path) -> Result<Attributes> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    lines.next(); // The first line is the image count.
    let names: Vec<String> = match lines.next() {
        Some((_, l)) => l.split_whitespace().map(str::to_string).collect(),
        None => return Err(data_error(path, 2, "missing the attribute names")),
    };
    if names.len() != ATTRIBUTE_COUNT {
        return Err(data_error(
            path,
            2,
            format!(
                "expected {ATTRIBUTE_COUNT} attribute names, found {}",
                names.len()
            ),
        ));
    }
    let mut rows = HashMap::new();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let file = parts.next().expect("non-empty line");
        let mut values = [0i8; ATTRIBUTE_COUNT];
        let mut n = 0;
        for part in parts {
            let v = match part {
                "1" => 1,
                "-1" => -1,
                other => {
                    return Err(data_error(
                        path,
                        i + 1,
                        format!("attribute value `{other}` is not 1 or -1"),
                    ))
                }
            };
            if n < ATTRIBUTE_COUNT {
                values[n] = v;
            }
            n += 1;
        }
        if n != ATTRIBUTE_COUNT {
            return Err(data_error(
                path,
                i + 1,
                format!("expected {ATTRIBUTE_COUNT} values, found {n}"),
            ));
        }
        rows.insert(file.to_string(), values);
    }
    Ok((names, rows))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn list_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| GlowError::io(dir, e))? {
        let path = entry.map_err(|e| GlowError::io(dir, e))?.path();
        if path.is_dir() {
            list_images(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl Dataset {
    /// Opens a CelebA-style folder, or any folder of images.
    pub fn open(root: impl AsRef<Path>) -> Result<Dataset> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(GlowError::Data {
                path: root,
                message: "not a folder".into(),
            });
        }
        let partition_file = root.join("list_eval_partition.txt");
        if !partition_file.exists() {
            let mut paths = Vec::new();
            list_images(&root, &mut paths)?;
            paths.sort();
            if paths.is_empty() {
                return Err(GlowError::Data {
                    path: root,
                    message: "no images (jpg, png, webp, bmp) found".into(),
                });
            }
            let entries = paths
                .into_iter()
                .map(|path| Entry {
                    path,
                    split: None,
                    attributes: None,
                })
                .collect();
            return Ok(Dataset {
                root,
                attribute_names: Vec::new(),
                entries,
            });
        }

        let images = ["images", "img_align_celeba"]
            .iter()
            .map(|d| root.join(d))
            .find(|d| d.is_dir())
            .ok_or_else(|| GlowError::Data {
                path: root.clone(),
                message: "has list_eval_partition.txt but no images/ folder".into(),
            })?;
        let attr_file = root.join("list_attr_celeba.txt");
        let (attribute_names, mut attributes) = if attr_file.exists() {
            parse_attributes(&attr_file)?
        } else {
            (Vec::new(), HashMap::new())
        };
        let entries = parse_partitions(&partition_file)?
            .into_iter()
            .map(|(file, split)| Entry {
                path: images.join(&file),
                split: Some(split),
                attributes: attributes.remove(&file),
            })
            .collect();
        Ok(Dataset {
            root,
            attribute_names,
            entries,
        })
    }

    /// The images of one split; a plain folder has no splits and gives all.
    pub fn split(&self, split: Split) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|e| e.split.is_none() || e.split == Some(split))
            .cloned()
            .collect()
    }
}

/// The face crop: a centered square `FACE_CROP_FRACTION` of the width wide
/// (the whole shorter side if the image is narrower than that).
pub fn face_crop(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = ((f64::from(w) * FACE_CROP_FRACTION).round() as u32).clamp(1, w.min(h));
    let x = (w - side) / 2;
    let y = (h - side) / 2;
    image::imageops::crop_imm(img, x, y, side, side).to_image()
}

/// An RGB image to a uint8 `[3, H, W]` tensor.
pub fn image_to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .contiguous()
}

/// A uint8 `[3, H, W]` tensor to an RGB image.
pub fn tensor_to_image(t: &Tensor) -> RgbImage {
    let (_, h, w) = t.size3().expect("CHW image tensor");
    let hwc = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    let mut raw = vec![0u8; (h * w * 3) as usize];
    let len = raw.len();
    hwc.copy_data(&mut raw, len);
    RgbImage::from_raw(w as u32, h as u32, raw).expect("buffer matches the size")
}

/// The face crop of `img`, resized to `size` x `size`, as uint8 `[3, S, S]`.
pub fn face_tensor(img: &RgbImage, size: i64) -> Tensor {
    let crop = face_crop(img);
    let s = size as u32;
    let resized = image::imageops::resize(&crop, s, s, FilterType::Lanczos3);
    image_to_tensor(&resized)
}

/// Decodes the image at `path` and returns its face crop as uint8 `[3, S, S]`.
pub fn load_face(path: &Path, size: i64) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| GlowError::Data {
        path: path.into(),
        message: format!("cannot read image: {e}"),
    })?;
    Ok(face_tensor(&img.to_rgb8(), size))
}

/// A uint8 `[N, 3, S, S]` batch laid out as a grid with `cols` columns.
pub fn grid(images: &Tensor, cols: i64) -> RgbImage {
    let (n, c, h, w) = images.size4().expect("NCHW batch");
    let rows = (n + cols - 1) / cols;
    let canvas = Tensor::zeros([c, rows * h, cols * w], (Kind::Uint8, tch::Device::Cpu));
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        canvas
            .narrow(1, r * h, h)
            .narrow(2, col * w, w)
            .copy_(&images.get(i).to_device(tch::Device::Cpu));
    }
    tensor_to_image(&canvas)
}

/// How a [`Loader`] walks its images.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub image_size: i64,
    /// Shuffle every epoch (with a seed derived from `seed` and the epoch).
    pub shuffle: bool,
    /// Random horizontal flips.
    pub flip: bool,
    /// Drop an epoch's last, incomplete batch (training); keep it otherwise.
    pub drop_last: bool,
    pub seed: u64,
    /// Threads decoding images in parallel.
    pub workers: usize,
    /// Decoded batches kept ready ahead of the model; bounds the memory used.
    pub prefetch: usize,
    /// Stop after this many epochs (`None`: go on until dropped).
    pub epochs: Option<u64>,
}

/// A decoded batch and where it sits in the stream.
pub struct Batch {
    /// uint8 `[B, 3, S, S]`.
    pub images: Tensor,
    /// The entries the images came from, in order (unreadable ones left out).
    pub indices: Vec<usize>,
    pub epoch: u64,
    /// Index of this batch within its epoch.
    pub batch: u64,
}

/// Position in the stream to start from (for resuming).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub batch: u64,
}

/// Batches decoded on background threads and handed over through a bounded
/// channel. The order (shuffles and flips) depends only on the seed, so a
/// stream restarted at a [`Position`] continues exactly where it stopped.
pub struct Loader {
    receiver: crossbeam_channel::Receiver<Batch>,
    batches_per_epoch: u64,
}

/// Files that failed to decode, so each is reported once.
type Reported = Arc<Mutex<HashSet<PathBuf>>>;

fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Loader {
    pub fn new(entries: Vec<Entry>, config: LoaderConfig, start: Position) -> Result<Loader> {
        if entries.is_empty() || config.batch_size == 0 {
            return Err(GlowError::Config(
                "the loader needs images and a batch size of at least 1".into(),
            ));
        }
        let n = entries.len();
        let batches_per_epoch = if config.drop_last {
            (n / config.batch_size) as u64
        } else {
            n.div_ceil(config.batch_size) as u64
        };
        if batches_per_epoch == 0 {
            return Err(GlowError::Config(format!(
                "batch size {} is larger than the {n} images",
                config.batch_size
            )));
        }
        let (sender, receiver) = crossbeam_channel::bounded(config.prefetch.max(1));
        let paths: Arc<Vec<PathBuf>> = Arc::new(entries.into_iter().map(|e| e.path).collect());
        let reported: Reported = Arc::default();
        std::thread::Builder::new()
            .name("glow-loader".into())
            .spawn(move || produce(paths, config, start, batches_per_epoch, sender, reported))
            .map_err(|e| GlowError::io("glow-loader thread", e))?;
        Ok(Loader {
            receiver,
            batches_per_epoch,
        })
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.receiver.recv().ok()
    }
}

fn produce(
    paths: Arc<Vec<PathBuf>>,
    config: LoaderConfig,
    start: Position,
    batches_per_epoch: u64,
    sender: crossbeam_channel::Sender<Batch>,
    reported: Reported,
) {
    let mut epoch = start.epoch;
    let mut first_batch = start.batch;
    while config.epochs.is_none_or(|e| epoch < e) {
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed(config.seed, epoch));
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if config.shuffle {
            order.shuffle(&mut rng);
        }
        let flips: Vec<bool> = order
            .iter()
            .map(|_| config.flip && rng.gen_bool(0.5))
            .collect();
        for b in first_batch..batches_per_epoch {
            let lo = b as usize * config.batch_size;
            let hi = (lo + config.batch_size).min(order.len());
            let jobs: Vec<(usize, bool)> = (lo..hi).map(|i| (order[i], flips[i])).collect();
            let decoded = decode_parallel(&paths, &jobs, &config, &reported);
            if decoded.is_empty() {
                continue;
            }
            let (indices, tensors): (Vec<usize>, Vec<Tensor>) = decoded.into_iter().unzip();
            let batch = Batch {
                images: Tensor::stack(&tensors, 0),
                indices,
                epoch,
                batch: b,
            };
            if sender.send(batch).is_err() {
                return;
            }
        }
        first_batch = 0;
        epoch += 1;
    }
}

fn decode_parallel(
    paths: &[PathBuf],
    jobs: &[(usize, bool)],
    config: &LoaderConfig,
    reported: &Reported,
) -> Vec<(usize, Tensor)> {
    let workers = config.workers.clamp(1, jobs.len().max(1));
    let chunk = jobs.len().div_ceil(workers).max(1);
    let decode_one = |&(index, flip): &(usize, bool)| -> Option<(usize, RgbImage)> {
        let path = &paths[index];
        match image::open(path) {
            Ok(img) => {
                let crop = face_crop(&img.to_rgb8());
                let s = config.image_size as u32;
                let mut face = image::imageops::resize(&crop, s, s, FilterType::Lanczos3);
                if flip {
                    image::imageops::flip_horizontal_in_place(&mut face);
                }
                Some((index, face))
            }
            Err(e) => {
                if reported.lock().expect("reported lock").insert(path.clone()) {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable image");
                }
                None
            }
        }
    };
    let faces: Vec<(usize, RgbImage)> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().filter_map(decode_one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoder thread"))
            .collect()
    });
    faces
        .into_iter()
        .map(|(i, face)| (i, image_to_tensor(&face)))
        .collect()
}

/// Decodes `entries` into one uint8 `[N, 3, S, S]` tensor (small sets only:
/// validation subsets and examples), skipping unreadable files with a warning.
pub fn load_all(entries: &[Entry], image_size: i64) -> Result<Tensor> {
    let faces: Vec<Tensor> = entries
        .iter()
        .filter_map(|e| match load_face(&e.path, image_size) {
            Ok(t) => Some(t),
            Err(err) => {
                tracing::warn!(error = %err, "skipping unreadable image");
                None
            }
        })
        .collect();
    if faces.is_empty() {
        return Err(GlowError::Config("none of the images could be read".into()));
    }
    Ok(Tensor::stack(&faces, 0))
}
