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
//!    CelebA's training images as MTCNN itself finds them;
//! 4. warps the photo with it into a [`ALIGNED_WIDTH`] x [`ALIGNED_HEIGHT`]
//!    image ([`warp`]), which then takes the same face crop as the training
//!    images ([`crate::data::face_tensor`]).
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
//! are what a similarity transform needs (dlib's 68 add nothing to a
//! four-parameter fit), it finds faces tilted well past 30 degrees where
//! HOG's upright template gives up, and its pyramid reaches down to 20 px
//! faces. dlib's predictor is more precise on large frontal faces, but that
//! precision is lost in a 64 px model.
//!
//! # Targets
//!
//! [`TARGET_LANDMARKS`] were measured, not guessed: the mean of MTCNN's
//! landmarks over 4,000 CelebA training images (every 40th of the split),
//! by `cargo run -p glow --example landmark_targets -- ../shared/data/celeba 4000`.
//! Aligning to the mean puts a photo's face where the model has seen faces;
//! a given CelebA image deviates from it by about a pixel at the model's
//! size, since CelebA was aligned with other landmarks.

pub mod mtcnn;
pub mod warp;

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::RgbImage;
use tch::Device;

pub use mtcnn::{Detection, Mtcnn, MIN_FACE_SIZE};
pub use warp::{Similarity, Point};

/// Width of an aligned face image: CelebA's aligned images are 178 wide.
pub const ALIGNED_WIDTH: u32 = 178;
/// Height of an aligned face image: CelebA's aligned images are 218 tall.
pub const ALIGNED_HEIGHT: u32 = 218;

/// Where MTCNN puts the left eye, right eye, nose tip, left and right mouth
/// corners in CelebA's aligned 178 x 218 training images, on average (see
/// the module documentation for how they were measured).
pub const TARGET_LANDMARKS: [Point; 5] = [
    [69.04, 111.36],
    [108.74, 111.28],
    [89.14, 133.99],
    [72.37, 152.75],
    [105.74, 152.67],
];

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
            (small, f64::from(sw) / f64::from(w), f64::from(sh) / f64::from(h))
        } else {
            (photo.clone(), 1.0, 1.0)
        };
        let tensor = crate::data::image_to_tensor(&small);
        let mut faces: Vec<Detection> = self
            .detector
            .detect(&tensor)
            .into_iter()
            .map(|d| Detection {
                bbox: [d.bbox[0] / fx, d.bbox[1] / fy, d.bbox[2] / fx, d.bbox[3] / fy],
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
        let transform = to_training_framing(&faces[chosen]);
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
    faces
        .iter()
        .enumerate()
        .fold(0, |best, (i, f)| if f.area() > faces[best].area() { i } else { best })
}

/// The similarity that moves `face`'s landmarks closest to the targets.
pub fn to_training_framing(face: &Detection) -> Similarity {
    Similarity::fit(&face.landmarks, &TARGET_LANDMARKS)
}
