//! Measures where MTCNN puts the five landmarks in CelebA's aligned
//! training images: the targets face alignment warps photos to
//! (`glow::align::TARGET_LANDMARKS`).
//!
//! ```sh
//! cargo run -p glow --example landmark_targets -- ../shared/data/celeba 1000
//! ```
//!
//! Takes COUNT training images evenly spread over the split's full-size
//! (178 x 218) files, leaving out half-size copies whose landmarks would be
//! coarser, runs the detector on each, keeps the largest face, and
//! prints the mean and standard deviation of each landmark, then the means
//! and the root mean square distances from them as Rust constants
//! (`TARGET_LANDMARKS`, `TARGET_SPREAD`).

use anyhow::{bail, Context, Result};
use glow::align::{Aligner, Detection, ALIGNED_HEIGHT, ALIGNED_WIDTH};
use glow::data::{Dataset, Split};
use tch::Device;

const NAMES: [&str; 5] = [
    "left eye",
    "right eye",
    "nose tip",
    "left mouth corner",
    "right mouth corner",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, count] = args.as_slice() else {
        bail!("usage: landmark_targets CELEBA_DIR COUNT");
    };
    let count: usize = count.parse().context("COUNT is a number")?;
    let train: Vec<_> = Dataset::open(data)?
        .split(Split::Train)
        .into_iter()
        .filter(|e| image::image_dimensions(&e.path).ok() == Some((ALIGNED_WIDTH, ALIGNED_HEIGHT)))
        .collect();
    if train.is_empty() || count == 0 {
        bail!("{data}: no full-size training images");
    }
    let step = (train.len() / count).max(1);
    let aligner = Aligner::load(&glow::align::default_detector_path(), Device::Cpu)?;

    let mut sum = [[0.0f64; 2]; 5];
    let mut sum_sq = [[0.0f64; 2]; 5];
    let (mut seen, mut found) = (0usize, 0usize);
    for entry in train.iter().step_by(step).take(count) {
        let photo = image::open(&entry.path)
            .with_context(|| entry.path.display().to_string())?
            .to_rgb8();
        seen += 1;
        let faces = aligner.detect(&photo);
        let Some(face) = faces.iter().max_by(|a, b| a.area().total_cmp(&b.area())) else {
            continue;
        };
        accumulate(face, &mut sum, &mut sum_sq);
        found += 1;
    }
    if found == 0 {
        bail!("no face found in {seen} images");
    }

    println!("{found} of {seen} full-size training images had a face");
    let n = found as f64;
    let mean = sum.map(|[x, y]| [x / n, y / n]);
    for (k, name) in NAMES.iter().enumerate() {
        let sd = |axis: usize| {
            (sum_sq[k][axis] / n - mean[k][axis].powi(2))
                .max(0.0)
                .sqrt()
        };
        println!(
            "{name:>18}: x {:7.2} (sd {:5.2})  y {:7.2} (sd {:5.2})",
            mean[k][0],
            sd(0),
            mean[k][1],
            sd(1)
        );
    }
    println!("pub const TARGET_LANDMARKS: [Point; 5] = [");
    for [x, y] in mean {
        println!("    [{x:.2}, {y:.2}],");
    }
    println!("];");
    let spread: Vec<String> = (0..5)
        .map(|k| {
            let variance: f64 = (0..2)
                .map(|axis| sum_sq[k][axis] / n - mean[k][axis].powi(2))
                .sum();
            format!("{:.2}", variance.max(0.0).sqrt())
        })
        .collect();
    println!(
        "pub const TARGET_SPREAD: [f64; 5] = [{}];",
        spread.join(", ")
    );
    Ok(())
}

fn accumulate(face: &Detection, sum: &mut [[f64; 2]; 5], sum_sq: &mut [[f64; 2]; 5]) {
    for (k, [x, y]) in face.landmarks.iter().enumerate() {
        sum[k][0] += x;
        sum[k][1] += y;
        sum_sq[k][0] += x * x;
        sum_sq[k][1] += y * y;
    }
}
