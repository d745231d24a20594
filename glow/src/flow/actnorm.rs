//! ActNorm: a per-channel affine transform with data-dependent initialization.
//!
//! `y = (x + b) * exp(logs)`, inverse `x = y * exp(-logs) - b`,
//! `log|det| = H * W * sum(logs)`. On the first batch, `b` and `logs` are set
//! so that every channel of `y` has mean 0 and standard deviation 1; after
//! that they are ordinary trained parameters. Whether that happened is stored
//! with the weights, so a loaded model never initializes again.

use tch::{nn, Kind, Tensor};

/// Keeps `log(1 / std)` finite for a channel that is constant on the first batch.
const STD_EPSILON: f64 = 1e-6;

/// A per-channel affine layer with data-dependent initialization.
pub struct ActNorm {
    bias: Tensor,
    logs: Tensor,
    /// 1.0 once initialized, 0.0 before; saved with the weights.
    initialized: Tensor,
}

impl ActNorm {
    pub fn new(p: &nn::Path, channels: i64) -> Self {
        ActNorm {
            bias: p.zeros("bias", &[1, channels, 1, 1]),
            logs: p.zeros("logs", &[1, channels, 1, 1]),
            initialized: p.zeros_no_train("initialized", &[]),
        }
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.double_value(&[]) > 0.5
    }

    /// Sets `b` and `logs` from the statistics of `x`, once.
    fn initialize(&self, x: &Tensor) {
        tch::no_grad(|| {
            let dims = [0i64, 2, 3];
            let mean = x.mean_dim(dims.as_slice(), true, None::<Kind>);
            let std = (x - &mean)
                .square()
                .mean_dim(dims.as_slice(), true, None::<Kind>)
                .sqrt();
            self.bias.shallow_clone().copy_(&-mean);
            self.logs.shallow_clone().copy_(&-(std + STD_EPSILON).log());
            let _ = self.initialized.shallow_clone().fill_(1.0);
        });
    }

    /// Normalizes `x`; with `init`, first initializes from `x` if not done yet.
    pub fn forward(&self, x: &Tensor, init: bool) -> Tensor {
        if init && !self.is_initialized() {
            self.initialize(x);
        }
        (x + &self.bias) * self.logs.exp()
    }

    /// `log|det|` of [`forward`](Self::forward) on an input with `hw` pixels.
    pub fn logdet(&self, hw: f64) -> Tensor {
        self.logs.sum(None::<Kind>) * hw
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        y * (-&self.logs).exp() - &self.bias
    }
}
