//! Conv2dZeros: a 3x3 convolution that starts at exactly zero.
//!
//! `y = (W * x + b) * exp(3 logs)` with `W`, `b` and `logs` initialized to
//! zero. Glow ends every coupling network and every prior with it, so that a
//! fresh model starts as the identity (or a fixed scale) and a standard normal
//! prior, which makes early training stable.

use tch::{nn, Tensor};

/// The learned output scale is `exp(LOGSCALE_FACTOR * logs)`: the factor lets
/// the scale move as fast as the weights do under the same learning rate.
const LOGSCALE_FACTOR: f64 = 3.0;

/// A zero-initialized 3x3 convolution with a learned per-channel output scale.
pub struct ZeroConv2d {
    weight: Tensor,
    bias: Tensor,
    logs: Tensor,
}

impl ZeroConv2d {
    pub fn new(p: &nn::Path, in_channels: i64, out_channels: i64) -> Self {
        ZeroConv2d {
            weight: p.zeros("weight", &[out_channels, in_channels, 3, 3]),
            bias: p.zeros("bias", &[out_channels]),
            logs: p.zeros("logs", &[1, out_channels, 1, 1]),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.conv2d(&self.weight, Some(&self.bias), [1, 1], [1, 1], [1, 1], 1);
        y * (&self.logs * LOGSCALE_FACTOR).exp()
    }
}
