//! Automatic face alignment: find the faces in an ordinary photo and warp
//! one of them to the framing of the faces the model was trained on.
//!
//! Glow edits well only what looks like its training data, CelebA's
//! aligned 178 x 218 crops, in which the eyes and mouth sit at nearly the
//! same place in every image. A photo's face may be anywhere, at any size
//! and tilted, so before encoding, [`Aligner::align`]:
//!
//! 1. detects every face and its five landmarks (eyes, nose tip, mouth
//!    corners) with MTCNN ([`mtcnn`]), on the photo shrunk to at most
//!    [`MAX_DETECTION_SIDE`] pixels;
//! 2. picks the largest face, or the one the job names (faces are numbered
//!    from 0, left to right);
//! 3. fits the similarity (rotation, uniform scale, translation) that moves
//!    its landmarks closest to [`TARGET_LANDMARKS`], their mean positions in
//!    CelebA's training images as MTCNN itself finds them, each weighted by
//!    how little it strays there ([`TARGET_SPREAD`]);
//! 4. looks again: detects the face in the photo warped that way, where it
//!    is upright and at the size the targets were measured at, and corrects
//!    the transform by what it finds there ([`REFINEMENTS`]);
//! 5. warps the photo once with the result into a [`ALIGNED_WIDTH`] x
//!    [`ALIGNED_HEIGHT`] image ([`warp`]), which then takes the same face crop
//!    as the training images ([`crate::data::face_tensor`]).
//!
//! # Why MTCNN
//!
//! The two well-kept detectors whose weights come from a package registry
//! are MTCNN (weights inside PyPI's facenet-pytorch wheel) and dlib's HOG
//! detector with its landmark predictor (Debian's libdlib-dev, models in
//! PyPI's face_recognition_models). MTCNN is three small convolutional
//! networks that run here through tch, in the same libtorch runtime as the
//! model and on the same device, CPU or CUDA, with no C++ glue to build and
//! no second native library to ship to every worker. Its five landmarks
//! are enough to fix a four-parameter similarity, and, being learned from faces in all poses, it finds
//! faces tilted by 30 degrees (the tests place them so), where dlib's HOG
//! detector is a template of upright frontal faces. Its pyramid reaches
//! down to 20 px faces.
//!
//! # Targets
//!
//! [`TARGET_LANDMARKS`] and [`TARGET_SPREAD`] were measured, not guessed:
//! the mean of MTCNN's landmarks, and their spread about it, over 1,000
//! full-size CelebA training images spread evenly over the split (994 had
//! a face), by
//! `cargo run -p glow --example landmark_targets -- ../shared/data/celeba 1000`.
//! Aligning to the mean puts a photo's face where the model has seen faces;
//! a given CelebA image strays from it by its own pose (up to 3 degrees and
//! 8% in scale among the example faces).

pub mod mtcnn;
pub mod warp;

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::RgbImage;
use tch::Device;

pub use mtcnn::{Detection, Mtcnn, MIN_FACE_SIZE};
pub use warp::{Point, Similarity};

/// Width of an aligned face image: CelebA's aligned images are 178 wide.
pub const ALIGNED_WIDTH: u32 = 178;
/// Height of an aligned face image: CelebA's aligned images are 218 tall.
pub const ALIGNED_HEIGHT: u32 = 218;

/// Where MTCNN puts the left eye, right eye, nose tip, left and right mouth
/// corners in CelebA's aligned 178 x 218 training images, on average (see
/// the module documentation for how they were measured).
pub const TARGET_LANDMARKS: [Point; 5] = [
    [69.66, 111.72],
    [108.61, 111.68],
    [88.48, 136.07],
    [71.54, 153.07],
    [106.33, 152.94],
];

/// How far each landmark strays from its target across the training
/// images: the root mean square distance in pixels, measured with the
/// targets. The eyes were what CelebA's own alignment held still; the nose
/// tip moves with every turn of the head.
pub const TARGET_SPREAD: [f64; 5] = [2.18, 2.10, 7.35, 3.71, 3.68];

/// The weight of each landmark in the fit: the inverse of its variance
/// over the training images, so that the fit trusts each landmark as much
/// as the training faces agree on its place (a turned head moves its nose,
/// not the framing).
fn landmark_weights() -> [f64; 5] {
    TARGET_SPREAD.map(|spread| 1.0 / (spread * spread))
}

/// Passes of the detector over the aligned view after the first fit.
/// MTCNN's landmarks lean towards an upright face of medium size, so on a
/// face turned by 30 degrees the first fit comes out a few degrees short;
/// on the aligned view the face is upright and framed exactly as in the
/// images the targets were measured on, so one more pass removes that bias
/// (the tests hold the fit to 3 degrees and 6% in scale with one).
pub const REFINEMENTS: usize = 1;

/// Farthest the landmarks' centre may lie from the targets' centre on the
/// aligned view, in aligned pixels, for a face found there to be the one
/// being aligned (the eyes are 39 px apart); another face of a group photo
/// is farther.
const REFINE_MAX_SHIFT: f64 = 20.0;

/// Longest side, in pixels, of the image the detector sees: a larger photo
/// is shrunk to it first. Detection time and memory grow with the pixel
/// count, and a face smaller than `MIN_FACE_SIZE` at this size (2% of the
/// photo's long side) is too small to be worth editing.
pub const MAX_DETECTION_SIDE: u32 = 1024;

/// The converted MTCNN weights, relative to the repository root, where
/// `scripts/setup.sh` writes them.
pub const DETECTOR_FILE: &str = "models/mtcnn.safetensors";

/// The detector weights of this build's workspace: what tests and a
/// `cargo run` use unless told otherwise.
pub fn default_detector_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DETECTOR_FILE)
}

/// Why a photo could not be aligned.
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// The detector's weights are missing or unreadable.
    #[error("{path}: cannot load the face detector: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The detector found no face in the photo.
    #[error(
        "{name}: no face found; photos need a face at least {MIN_FACE_SIZE} px wide \
         (photos already aligned like the training faces can set alignment.skip)"
    )]
    NoFace {
        /// The input reference.
        name: String,
    },

    /// The job named a face the photo does not have.
    #[error(
        "{name}: face {index} was asked for, but {found} {} found (numbered from 0, left to right)",
        if *found == 1 { "face was" } else { "faces were" }
    )]
    NoSuchFace {
        /// The input reference.
        name: String,
        /// The face number asked for.
        index: usize,
        /// How many faces the photo has.
        found: usize,
    },
}

/// A photo's face, warped to the training framing.
#[derive(Clone, Debug)]
pub struct Aligned {
    /// The face at [`ALIGNED_WIDTH`] x [`ALIGNED_HEIGHT`].
    pub image: RgbImage,
    /// Every face found in the photo, left to right, in photo coordinates.
    pub faces: Vec<Detection>,
    /// Index into `faces` of the face that was aligned.
    pub chosen: usize,
    /// The transform from photo to aligned coordinates.
    pub transform: Similarity,
}

/// The face detector, ready to align photos.
pub struct Aligner {
    detector: Mtcnn,
}

impl Aligner {
    /// Loads the detector's weights from `path` onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Aligner, AlignError> {
        Ok(Aligner {
            detector: Mtcnn::load(path, device)?,
        })
    }

    /// Every face in `photo`, left to right by the centre of its box, in
    /// photo coordinates.
    pub fn detect(&self, photo: &RgbImage) -> Vec<Detection> {
        let (w, h) = photo.dimensions();
        let shrink = f64::from(MAX_DETECTION_SIDE) / f64::from(w.max(h));
        let (small, fx, fy) = if shrink < 1.0 {
            let sw = ((f64::from(w) * shrink).round() as u32).max(1);
            let sh = ((f64::from(h) * shrink).round() as u32).max(1);
            let small = image::imageops::resize(photo, sw, sh, FilterType::Triangle);
            (
                small,
                f64::from(sw) / f64::from(w),
                f64::from(sh) / f64::from(h),
            )
        } else {
            (photo.clone(), 1.0, 1.0)
        };
        let tensor = crate::data::image_to_tensor(&small);
        let mut faces: Vec<Detection> = self
            .detector
            .detect(&tensor)
            .into_iter()
            .map(|d| Detection {
                bbox: [
                    d.bbox[0] / fx,
                    d.bbox[1] / fy,
                    d.bbox[2] / fx,
                    d.bbox[3] / fy,
                ],
                landmarks: d.landmarks.map(|[x, y]| [x / fx, y / fy]),
                ..d
            })
            .collect();
        let centre = |d: &Detection| (d.bbox[0] + d.bbox[2], d.bbox[1] + d.bbox[3]);
        faces.sort_by(|a, b| {
            let (ca, cb) = (centre(a), centre(b));
            ca.0.total_cmp(&cb.0).then(ca.1.total_cmp(&cb.1))
        });
        faces
    }

    /// Aligns face `choice` of `photo` (the largest when `None`). `name`
    /// labels the errors.
    pub fn align(
        &self,
        photo: &RgbImage,
        choice: Option<usize>,
        name: &str,
    ) -> Result<Aligned, AlignError> {
        let faces = self.detect(photo);
        if faces.is_empty() {
            return Err(AlignError::NoFace { name: name.into() });
        }
        let chosen = match choice {
            Some(index) if index < faces.len() => index,
            Some(index) => {
                return Err(AlignError::NoSuchFace {
                    name: name.into(),
                    index,
                    found: faces.len(),
                })
            }
            None => largest(&faces),
        };
        let mut transform = to_training_framing(&faces[chosen]);
        for _ in 0..REFINEMENTS {
            let view = warp::warp(photo, &transform, ALIGNED_WIDTH, ALIGNED_HEIGHT);
            let found = self.detect(&view);
            let Some(face) = centred_face(&found) else {
                break;
            };
            transform = transform.then(&to_training_framing(face));
        }
        let image = warp::warp(photo, &transform, ALIGNED_WIDTH, ALIGNED_HEIGHT);
        Ok(Aligned {
            image,
            faces,
            chosen,
            transform,
        })
    }
}

/// Index of the face with the largest box (the first of equals).
fn largest(faces: &[Detection]) -> usize {
    faces.iter().enumerate().fold(0, |best, (i, f)| {
        if f.area() > faces[best].area() {
            i
        } else {
            best
        }
    })
}

/// The face of an aligned view whose landmarks are centred where the
/// targets are, if there is one.
fn centred_face(faces: &[Detection]) -> Option<&Detection> {
    let centre = |points: &[Point; 5]| {
        let sum = points
            .iter()
            .fold([0.0, 0.0], |acc, p| [acc[0] + p[0], acc[1] + p[1]]);
        [sum[0] / 5.0, sum[1] / 5.0]
    };
    let target = centre(&TARGET_LANDMARKS);
    let distance = |face: &Detection| {
        let c = centre(&face.landmarks);
        (c[0] - target[0]).hypot(c[1] - target[1])
    };
    faces
        .iter()
        .filter(|face| distance(face) < REFINE_MAX_SHIFT)
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
}

/// The similarity that moves `face`'s landmarks closest to the targets.
pub fn to_training_framing(face: &Detection) -> Similarity {
    Similarity::fit(&face.landmarks, &TARGET_LANDMARKS, &landmark_weights())
}
