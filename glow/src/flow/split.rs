//! Split: after each level but the last, half of the channels leave the flow.
//!
//! `[z1, z2] = h`; `z2` is modelled by a Gaussian whose mean and log scale
//! come from `z1` through a Conv2dZeros (a learned conditional prior), and is
//! stored standardized: `eps = (z2 - mean) * exp(-logs)`. The inverse is
//! `z2 = mean + exp(logs) * eps`. Only `z1` continues to the next level.

use tch::{nn, Tensor};

use super::gaussian_log_density;
use super::zeroconv::ZeroConv2d;

/// The learned prior of the split-off half.
pub struct Split {
    prior: ZeroConv2d,
}

impl Split {
    /// `channels` is the channel count before the split.
    pub fn new(p: &nn::Path, channels: i64) -> Self {
        Split {
            prior: ZeroConv2d::new(&(p / "prior"), channels / 2, channels),
        }
    }

    fn mean_and_logs(&self, z1: &Tensor) -> (Tensor, Tensor) {
        let h = self.prior.forward(z1);
        (h.slice(1, 0, None, 2), h.slice(1, 1, None, 2))
    }

    /// Returns `z1`, the standardized `eps` of `z2` and `log p(z2 | z1)` `[B]`.
    pub fn forward(&self, h: &Tensor) -> (Tensor, Tensor, Tensor) {
        let half = h.size()[1] / 2;
        let z1 = h.narrow(1, 0, half);
        let z2 = h.narrow(1, half, half);
        let (mean, logs) = self.mean_and_logs(&z1);
        let log_p = gaussian_log_density(&z2, &mean, &logs);
        let eps = (z2 - mean) * (-logs).exp();
        (z1, eps, log_p)
    }

    pub fn reverse(&self, z1: &Tensor, eps: &Tensor) -> Tensor {
        let (mean, logs) = self.mean_and_logs(z1);
        let z2 = mean + logs.exp() * eps;
        Tensor::cat(&[z1, &z2], 1)
    }
}
