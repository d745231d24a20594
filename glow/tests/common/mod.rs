//! Shared by the integration tests: a tiny Glow model made on the spot and
//! face-like test photos, so that no test needs the shipped model or CelebA.

use std::collections::BTreeMap;
use std::path::Path;

use glow::{Glow, GlowConfig, Precision};
use image::{Rgb, RgbImage};
use tch::{Device, Tensor};

/// Side of the test model's faces: small enough for a fast CPU test.
pub const MODEL_SIZE: i64 = 16;

/// A face-like test photo: a colored oval on a gradient, different per `seed`.
pub fn photo(seed: u32, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        let (dx, dy) = (
            (x as f32 - cx) / (width as f32 * 0.3),
            (y as f32 - cy) / (height as f32 * 0.4),
        );
        if dx * dx + dy * dy < 1.0 {
            Rgb([
                (180 + seed * 20) as u8,
                (120 + seed * 30 % 100) as u8,
                (90 + seed * 40 % 120) as u8,
            ])
        } else {
            Rgb([
                (x * 2 + seed * 25) as u8,
                (y * 2) as u8,
                (200 - seed * 15) as u8,
            ])
        }
    })
}

/// Writes a tiny model (two levels of two steps, 16 px), its ActNorms
/// initialized from test photos, as a model file at `path`.
pub fn save_tiny_model(path: &Path) {
    let config = GlowConfig {
        image_size: MODEL_SIZE,
        levels: 2,
        depth: 2,
        width: 16,
        ..GlowConfig::default()
    };
    let model = Glow::new(&config, Device::Cpu).unwrap();
    let faces: Vec<Tensor> = (0..6)
        .map(|i| glow::data::face_tensor(&photo(i, 80, 96), MODEL_SIZE))
        .collect();
    model.initialize(&Tensor::stack(&faces, 0)).unwrap();
    model.save(path, Precision::F32, &BTreeMap::new()).unwrap();
}
