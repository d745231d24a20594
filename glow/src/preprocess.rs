//! Between 8-bit images and the model's continuous inputs.
//!
//! A color value `v` in 0..=255 keeps its top `n_bits` bits, `q = v >> (8 -
//! n_bits)`, and becomes `x = q / 2^n_bits - 0.5`, in [-0.5, 0.5). While
//! training, uniform noise of one bin's width (`1 / 2^n_bits`) dequantizes
//! it, so that a density model of `x` bounds the discrete likelihood; the
//! objective then carries the constant `-D ln(2^n_bits)`. For encoding an
//! image we use the bin's center instead, so that decoding lands safely
//! inside the same bin.

use tch::{Kind, Tensor};

use crate::error::{GlowError, Result};

/// Where inside its quantization bin a value is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dequantize {
    /// Uniform noise over the bin (training and bits/dim), drawn from a
    /// generator of its own seeded with this value: the same seed gives the
    /// same noise whatever else runs in the process, on every device.
    Uniform(u64),
    /// The center of the bin (encoding).
    Center,
}

/// uint8 `[B, C, H, W]` images to model inputs in [-0.5, 0.5), as f32 on `device`.
pub fn to_model_input(
    images: &Tensor,
    n_bits: u32,
    dequantize: Dequantize,
    device: tch::Device,
) -> Result<Tensor> {
    if images.kind() != Kind::Uint8 || images.dim() != 4 {
        return Err(GlowError::Input(format!(
            "images must be uint8 NCHW, got {:?} with shape {:?}",
            images.kind(),
            images.size()
        )));
    }
    let n_bins = f64::from(1u32 << n_bits);
    let x = images.to_device(device).to_kind(Kind::Float);
    let q = (x / f64::from(1u32 << (8 - n_bits))).floor();
    let x = q / n_bins - 0.5;
    Ok(match dequantize {
        Dequantize::Uniform(seed) => {
            let noise = uniform_noise(&x.size(), seed).to_device(device);
            &x + noise / n_bins
        }
        Dequantize::Center => x + 0.5 / n_bins,
    })
}

/// Uniform [0, 1) noise of `shape` from a ChaCha generator seeded with `seed`.
fn uniform_noise(shape: &[i64], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let count: i64 = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|_| rng.gen::<f32>()).collect();
    Tensor::from_slice(&values).view(shape)
}

/// Model outputs back to uint8 `[B, C, H, W]` on the CPU: the bin each value
/// falls in, shown at its lower edge as Glow does (`0, 8, ..., 248` at 5 bits).
pub fn to_images(x: &Tensor, n_bits: u32) -> Tensor {
    let n_bins = f64::from(1u32 << n_bits);
    ((x + 0.5) * n_bins)
        .floor()
        .clamp(0.0, n_bins - 1.0)
        .multiply_scalar(256.0 / n_bins)
        .to_kind(Kind::Uint8)
        .to_device(tch::Device::Cpu)
}

/// `-D ln(2^n_bits)`: the log-likelihood term that dequantization adds for
/// an image of `dims` values.
pub fn discretization_constant(dims: i64, n_bits: u32) -> f64 {
    -(dims as f64) * f64::from(n_bits) * std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_top_bits() {
        let values: Vec<u8> = (0..=255).collect();
        let images = Tensor::from_slice(&values).view([1, 1, 16, 16]);
        for n_bits in [5, 8] {
            let x = to_model_input(&images, n_bits, Dequantize::Center, tch::Device::Cpu).unwrap();
            let min = x.min().double_value(&[]);
            let max = x.max().double_value(&[]);
            assert!(min >= -0.5 && max < 0.5, "{min} {max}");
            let back: Vec<u8> = Vec::try_from(to_images(&x, n_bits).flatten(0, -1)).unwrap();
            let step = 1u16 << (8 - n_bits);
            for (v, b) in values.iter().zip(back) {
                assert_eq!(u16::from(b), u16::from(*v) / step * step);
            }
        }
    }

    #[test]
    fn uniform_noise_stays_inside_the_bin() {
        let images = Tensor::full([2, 3, 8, 8], 77, (Kind::Uint8, tch::Device::Cpu));
        let x = to_model_input(&images, 5, Dequantize::Uniform(1), tch::Device::Cpu).unwrap();
        let low = (77 / 8) as f64 / 32.0 - 0.5;
        assert!(x.min().double_value(&[]) >= low);
        assert!(x.max().double_value(&[]) < low + 1.0 / 32.0);
        assert!(to_images(&x, 5).eq(72).all().int64_value(&[]) == 1);
    }

    #[test]
    fn rejects_float_images() {
        let err = to_model_input(
            &Tensor::zeros([1, 3, 4, 4], (Kind::Float, tch::Device::Cpu)),
            5,
            Dequantize::Center,
            tch::Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("uint8"), "{err}");
    }
}
