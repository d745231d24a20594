//! The invertible layers of Glow, one file each, named as in the paper.
//!
//! Every layer maps `x -> y` with a tractable `log|det dy/dx|`, and inverts
//! exactly. Tensors are NCHW; layers work in whatever float kind their
//! variables have (f32 normally, f64 in the Jacobian test).

pub mod actnorm;
pub mod coupling;
pub mod invconv;
pub mod split;
pub mod squeeze;
pub mod zeroconv;

use rand_distr::{Distribution, StandardNormal};
use tch::{Kind, Tensor};

/// The generator that draws initial weights: seeded, so that a seed gives the
/// same fresh model every time, whatever else runs in the process.
pub type InitRng = rand_chacha::ChaCha8Rng;

/// A CPU f32 tensor of `shape` with normal values of standard deviation `std`.
pub fn gaussian(rng: &mut InitRng, shape: &[i64], std: f64) -> Tensor {
    let count: i64 = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| StandardNormal.sample(rng))
        .map(|v: f64| (v * std) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// `ln(2 pi)`, the constant of the Gaussian log density.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Sums over all but the batch dimension: `[B, ...] -> [B]`.
pub fn sum_per_sample(x: &Tensor) -> Tensor {
    x.flatten(1, -1)
        .sum_dim_intlist([1].as_slice(), false, None::<Kind>)
}

/// `log N(x; mean, exp(logs)^2)` summed per sample: `[B]`.
pub fn gaussian_log_density(x: &Tensor, mean: &Tensor, logs: &Tensor) -> Tensor {
    let z = (x - mean) * (-logs).exp();
    let per_dim = (z.square() + LN_2PI) * -0.5 - logs;
    sum_per_sample(&per_dim)
}

/// Height times width of an NCHW tensor, as f64.
pub fn spatial_size(x: &Tensor) -> f64 {
    let s = x.size();
    (s[2] * s[3]) as f64
}
