//! Invertible 1x1 convolution: a learned mixing of the channels.
//!
//! `y = W x` at every pixel, inverse `x = W^-1 y`, `log|det| = H * W *
//! log|det W|`. `W` starts as a random rotation. The plain form learns `W`
//! directly and computes `log|det W|` in f64 (an f32 determinant of a
//! 48x48 matrix loses digits that the objective cares about). The LU form
//! learns `W = P L (U + diag(sign(s) exp(log|s|)))`, whose log-determinant
//! is just `sum(log|s|)`; `P` and `sign(s)` are fixed at initialization,
//! never trained, and saved with the weights.
//!
//! Decoding needs `W^-1`; it is computed once and cached until the weights
//! change (the trainer calls [`InvConv1x1::clear_cache`] after each step).

use std::sync::Mutex;

use tch::{nn, Kind, Tensor};

use super::{gaussian, InitRng};
use crate::config::Permutation;

enum Weights {
    Plain {
        weight: Tensor,
    },
    Lu {
        /// Fixed permutation matrix.
        p: Tensor,
        /// Fixed signs of the diagonal of `U`.
        sign_s: Tensor,
        /// Strictly lower part of `L` (its diagonal is 1).
        lower: Tensor,
        /// Strictly upper part of `U`.
        upper: Tensor,
        log_s: Tensor,
        lower_mask: Tensor,
        eye: Tensor,
    },
}

/// A learned invertible mixing of channels.
pub struct InvConv1x1 {
    weights: Weights,
    inverse: Mutex<Option<Tensor>>,
}

/// A random `n x n` rotation: the Q of a QR decomposition of a Gaussian matrix.
fn random_rotation(n: i64, rng: &mut InitRng) -> Tensor {
    let a = gaussian(rng, &[n, n], 1.0).to_kind(Kind::Double);
    let (q, _) = Tensor::linalg_qr(&a, "reduced");
    q.to_kind(Kind::Float)
}

impl InvConv1x1 {
    pub fn new(p: &nn::Path, channels: i64, kind: Permutation, rng: &mut InitRng) -> Self {
        let device = p.device();
        let w0 = random_rotation(channels, rng).to_device(device);
        let weights = match kind {
            Permutation::Conv => Weights::Plain {
                weight: p.var_copy("weight", &w0),
            },
            Permutation::Lu => {
                let (perm, l, u) = Tensor::linalg_lu(&w0, true);
                let s = u.diagonal(0, 0, 1);
                let fixed = |name: &str, value: &Tensor| {
                    let t = p.zeros_no_train(name, &value.size());
                    tch::no_grad(|| t.shallow_clone().copy_(value));
                    t
                };
                Weights::Lu {
                    p: fixed("p", &perm),
                    sign_s: fixed("sign_s", &s.sign()),
                    lower: p.var_copy("lower", &l.tril(-1)),
                    upper: p.var_copy("upper", &u.triu(1)),
                    log_s: p.var_copy("log_s", &s.abs().log()),
                    lower_mask: Tensor::ones([channels, channels], (Kind::Float, device)).tril(-1),
                    eye: Tensor::eye(channels, (Kind::Float, device)),
                }
            }
        };
        InvConv1x1 {
            weights,
            inverse: Mutex::new(None),
        }
    }

    /// The current `[C, C]` matrix `W`.
    pub fn weight(&self) -> Tensor {
        match &self.weights {
            Weights::Plain { weight } => weight.shallow_clone(),
            Weights::Lu {
                p,
                sign_s,
                lower,
                upper,
                log_s,
                lower_mask,
                eye,
            } => {
                let kind = lower.kind();
                let l = lower * lower_mask.to_kind(kind) + eye.to_kind(kind);
                let u = upper * lower_mask.to_kind(kind).transpose(0, 1)
                    + (sign_s * log_s.exp()).diag_embed(0, -2, -1);
                p.matmul(&l).matmul(&u)
            }
        }
    }

    /// `log|det W|` (per pixel).
    pub fn log_abs_det(&self) -> Tensor {
        match &self.weights {
            Weights::Plain { weight } => {
                let (_, logabsdet) = Tensor::linalg_slogdet(&weight.to_kind(Kind::Double));
                logabsdet.to_kind(weight.kind())
            }
            Weights::Lu { log_s, .. } => log_s.sum(None::<Kind>),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let c = x.size()[1];
        x.conv2d(
            &self.weight().view([c, c, 1, 1]),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )
    }

    /// `log|det|` of [`forward`](Self::forward) on an input with `hw` pixels.
    pub fn logdet(&self, hw: f64) -> Tensor {
        self.log_abs_det() * hw
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let c = y.size()[1];
        let inverse = {
            let mut cached = self.inverse.lock().expect("inverse cache lock");
            cached
                .get_or_insert_with(|| {
                    tch::no_grad(|| {
                        let w = self.weight();
                        w.to_kind(Kind::Double).inverse().to_kind(w.kind())
                    })
                })
                .shallow_clone()
        };
        y.conv2d(
            &inverse.view([c, c, 1, 1]),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )
    }

    /// Forgets the cached inverse; call after the weights changed.
    pub fn clear_cache(&self) {
        *self.inverse.lock().expect("inverse cache lock") = None;
    }
}
