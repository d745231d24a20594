//! Coupling layers: half of the channels transform the other half.
//!
//! With `x = [x1, x2]` split along channels and `h = NN(x1)`:
//! - affine: `y2 = (x2 + h_shift) * sigmoid(h_scale + 2)`,
//!   `log|det| = sum(log sigmoid(h_scale + 2))`;
//! - additive: `y2 = x2 + h`, `log|det| = 0`;
//!
//! and `y1 = x1`, so the inverse only needs `NN(y1)`. The network is conv 3x3
//! -> ActNorm -> ReLU -> conv 1x1 -> ActNorm -> ReLU -> Conv2dZeros, so a
//! fresh coupling is the identity (additive) or a fixed `sigmoid(2)` scale
//! (affine).

use tch::{nn, Tensor};

use super::actnorm::ActNorm;
use super::zeroconv::ZeroConv2d;
use super::{gaussian, sum_per_sample, InitRng};
use crate::config::Coupling as Kind;

/// The affine scale is `sigmoid(h + SCALE_SHIFT)`: about 0.88 at `h = 0`, so
/// training starts near the identity yet the scale can neither vanish nor
/// blow up (it stays in (0, 1)), which keeps the inverse well conditioned.
const SCALE_SHIFT: f64 = 2.0;

/// Standard deviation of the hidden convolutions' initial weights.
const INIT_STD: f64 = 0.05;

/// The network `NN` of a coupling layer.
struct CouplingNet {
    conv1: Tensor,
    norm1: ActNorm,
    conv2: Tensor,
    norm2: ActNorm,
    out: ZeroConv2d,
}

impl CouplingNet {
    fn new(
        p: &nn::Path,
        in_channels: i64,
        width: i64,
        out_channels: i64,
        rng: &mut InitRng,
    ) -> Self {
        let device = p.device();
        let conv1 = gaussian(rng, &[width, in_channels, 3, 3], INIT_STD).to_device(device);
        let conv2 = gaussian(rng, &[width, width, 1, 1], INIT_STD).to_device(device);
        CouplingNet {
            conv1: p.var_copy("conv1", &conv1),
            norm1: ActNorm::new(&(p / "norm1"), width),
            conv2: p.var_copy("conv2", &conv2),
            norm2: ActNorm::new(&(p / "norm2"), width),
            out: ZeroConv2d::new(&(p / "out"), width, out_channels),
        }
    }

    fn forward(&self, x: &Tensor, init: bool) -> Tensor {
        let h = x.conv2d(&self.conv1, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let h = self.norm1.forward(&h, init).relu();
        let h = h.conv2d(&self.conv2, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        let h = self.norm2.forward(&h, init).relu();
        self.out.forward(&h)
    }

    fn actnorms(&self) -> [&ActNorm; 2] {
        [&self.norm1, &self.norm2]
    }
}

/// An affine or additive coupling layer.
pub struct Coupling {
    kind: Kind,
    net: CouplingNet,
}

impl Coupling {
    pub fn new(p: &nn::Path, channels: i64, width: i64, kind: Kind, rng: &mut InitRng) -> Self {
        let half = channels / 2;
        let out = match kind {
            Kind::Affine => channels,
            Kind::Additive => channels - half,
        };
        Coupling {
            kind,
            net: CouplingNet::new(&(p / "net"), half, width, out, rng),
        }
    }

    /// The shift and (for affine) the scale that `x1` gives to `x2`.
    fn shift_and_scale(&self, x1: &Tensor, init: bool) -> (Tensor, Option<Tensor>) {
        let h = self.net.forward(x1, init);
        match self.kind {
            Kind::Additive => (h, None),
            Kind::Affine => {
                let shift = h.slice(1, 0, None, 2);
                let scale = (h.slice(1, 1, None, 2) + SCALE_SHIFT).sigmoid();
                (shift, Some(scale))
            }
        }
    }

    /// Returns `y` and the per-sample `log|det|` `[B]` (zeros for additive).
    pub fn forward(&self, x: &Tensor, init: bool) -> (Tensor, Tensor) {
        let half = x.size()[1] / 2;
        let x1 = x.narrow(1, 0, half);
        let x2 = x.narrow(1, half, x.size()[1] - half);
        let (shift, scale) = self.shift_and_scale(&x1, init);
        let (y2, logdet) = match scale {
            None => {
                let logdet = Tensor::zeros([x.size()[0]], (x.kind(), x.device()));
                (x2 + shift, logdet)
            }
            Some(scale) => {
                let logdet = sum_per_sample(&scale.log());
                ((x2 + shift) * scale, logdet)
            }
        };
        (Tensor::cat(&[x1, y2], 1), logdet)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let half = y.size()[1] / 2;
        let y1 = y.narrow(1, 0, half);
        let y2 = y.narrow(1, half, y.size()[1] - half);
        let (shift, scale) = self.shift_and_scale(&y1, false);
        let x2 = match scale {
            None => y2 - shift,
            Some(scale) => y2 / scale - shift,
        };
        Tensor::cat(&[y1, x2], 1)
    }

    pub fn actnorms(&self) -> [&ActNorm; 2] {
        self.net.actnorms()
    }
}
