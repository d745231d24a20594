//! Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
//! Convolutions", 2018) on libtorch, for face edits, mixes and morphs.
//!
//! The model ([`Glow`]) maps an image exactly to a latent of the same size and
//! back. Its parts follow the paper, one module each under [`flow`]; the
//! [`preprocess`] module moves between 8-bit images and model inputs,
//! [`checkpoint`] reads and writes model files, [`data`] streams face data
//! sets and [`train`] fits the model. [`directions`] holds the attribute
//! vectors edits move along, and [`render`] turns a job spec into edited
//! faces, morph videos and samples. Nothing here knows about queues,
//! databases or object stores.

pub mod align;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod directions;
pub mod error;
pub mod flow;
pub mod model;
pub mod preprocess;
pub mod render;
pub mod train;

pub use checkpoint::Precision;
pub use config::{Coupling, GlowConfig, Permutation};
pub use error::{GlowError, Result};
pub use model::{Encoding, Glow};
