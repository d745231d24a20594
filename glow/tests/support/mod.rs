//! Helpers for the model, data and training tests: the committed example
//! faces, a small config and numeric comparisons.

#![allow(dead_code)]

use std::path::PathBuf;

use glow::{Coupling, Glow, GlowConfig, Permutation};
use tch::{Device, Kind, Tensor};

/// The example faces committed under `examples/faces`.
pub fn example_face_paths() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/faces");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/faces exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 8,
        "expected example faces in {}",
        dir.display()
    );
    paths
}

/// The example faces as uint8 `[N, 3, S, S]`.
pub fn example_faces(size: i64) -> Tensor {
    let faces: Vec<Tensor> = example_face_paths()
        .iter()
        .map(|p| glow::data::load_face(p, size).expect("example face loads"))
        .collect();
    Tensor::stack(&faces, 0)
}

/// A small config for fast tests.
pub fn small_config(image_size: i64, coupling: Coupling) -> GlowConfig {
    GlowConfig {
        image_size,
        channels: 3,
        n_bits: 5,
        levels: 3,
        depth: 2,
        width: 32,
        coupling,
        permutation: Permutation::Lu,
        learn_top: true,
    }
}

/// Adds Gaussian noise of `std` to every trained variable, so that no layer
/// is at its (near-identity) initialization.
pub fn perturb(glow: &Glow, std: f64) {
    tch::no_grad(|| {
        for mut v in glow.var_store().trainable_variables() {
            let noise = v.randn_like() * std;
            let _ = v.g_add_(&noise);
        }
    });
    glow.weights_changed();
}

/// Largest absolute difference of two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn cpu() -> Device {
    Device::Cpu
}
