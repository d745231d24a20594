//! Hyperparameters of a Glow model. A checkpoint stores them in its metadata,
//! so a file alone rebuilds its model.

use serde::{Deserialize, Serialize};

use crate::error::{GlowError, Result};

/// How the second half of the channels is transformed by a coupling layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coupling {
    /// `y2 = (x2 + t(x1)) * sigmoid(s(x1) + 2)`; volume-changing.
    Affine,
    /// `y2 = x2 + t(x1)`; volume-preserving, cheaper and very stable.
    Additive,
}

/// How channels are mixed between coupling layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permutation {
    /// A full learned 1x1 convolution matrix `W`.
    Conv,
    /// The same, parameterized as `W = P L (U + diag(s))` with `P` and the signs of `s` fixed.
    Lu,
}

/// The architecture of one Glow model: everything needed to rebuild it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlowConfig {
    /// Height and width of the (square) input images; divisible by `2^levels`.
    pub image_size: i64,
    /// Color channels of the input, 3 for RGB.
    pub channels: i64,
    /// Bits kept per color value (5 for faces, as in the paper's CelebA-HQ runs; up to 8).
    pub n_bits: u32,
    /// Number of levels L (each starts with a squeeze; all but the last end in a split).
    pub levels: usize,
    /// Flow steps K per level (ActNorm, 1x1 convolution, coupling).
    pub depth: usize,
    /// Hidden channels of the coupling networks.
    pub width: i64,
    pub coupling: Coupling,
    pub permutation: Permutation,
    /// Learn the mean and scale of the top-level prior (otherwise a standard normal).
    pub learn_top: bool,
}

impl Default for GlowConfig {
    /// The shipped `celeba64` architecture.
    fn default() -> Self {
        GlowConfig {
            image_size: 64,
            channels: 3,
            n_bits: 5,
            levels: 3,
            depth: 8,
            width: 128,
            coupling: Coupling::Affine,
            permutation: Permutation::Lu,
            learn_top: true,
        }
    }
}

impl GlowConfig {
    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(GlowError::Config(m));
        if self.levels == 0 || self.depth == 0 {
            return fail(format!(
                "levels ({}) and depth ({}) must be at least 1",
                self.levels, self.depth
            ));
        }
        if !(1..=8).contains(&self.n_bits) {
            return fail(format!("n_bits must be in 1..=8, got {}", self.n_bits));
        }
        if self.channels < 1 || self.width < 1 {
            return fail(format!(
                "channels ({}) and width ({}) must be positive",
                self.channels, self.width
            ));
        }
        let factor = 1i64 << self.levels;
        if self.image_size < factor || self.image_size % factor != 0 {
            return fail(format!(
                "image_size {} must be a positive multiple of 2^levels = {factor}",
                self.image_size
            ));
        }
        Ok(())
    }

    /// Number of quantization bins per color value.
    pub fn n_bins(&self) -> f64 {
        f64::from(1u32 << self.n_bits)
    }

    /// Dimensions of one image: channels x height x width.
    pub fn dims(&self) -> i64 {
        self.channels * self.image_size * self.image_size
    }

    /// Shapes `[C, H, W]` of the latent of every level, in the order `encode`
    /// returns them: the half split off at each level, then the top.
    pub fn latent_shapes(&self) -> Vec<[i64; 3]> {
        let mut shapes = Vec::with_capacity(self.levels);
        let (mut c, mut s) = (self.channels, self.image_size);
        for level in 0..self.levels {
            c *= 4;
            s /= 2;
            if level + 1 < self.levels {
                c /= 2;
                shapes.push([c, s, s]);
            }
        }
        shapes.push([c, s, s]);
        shapes
    }

    /// Lists the fields where `other` differs from `self`, or `None` if equal.
    pub fn differences(&self, other: &GlowConfig) -> Option<String> {
        let a = serde_json::to_value(self).expect("config serializes");
        let b = serde_json::to_value(other).expect("config serializes");
        let (a, b) = (
            a.as_object().expect("object"),
            b.as_object().expect("object"),
        );
        let diffs: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} is {} in the file but {} was asked for", v, b[k]))
            .collect();
        (!diffs.is_empty()).then(|| diffs.join("; "))
    }

    /// Multiply-accumulate counts aside, the floating point operations of one
    /// forward pass (encode) of one image: 2 per multiply-accumulate of every
    /// convolution. Elementwise work is ignored, as usual for utilization figures.
    pub fn flops_per_image(&self) -> f64 {
        let mut flops = 0.0;
        let (mut c, mut s) = (self.channels, self.image_size);
        let w = self.width;
        for level in 0..self.levels {
            c *= 4;
            s /= 2;
            let pixels = (s * s) as f64;
            let half = c / 2;
            let out = match self.coupling {
                Coupling::Affine => c,
                Coupling::Additive => half,
            };
            let coupling_macs = (half * w * 9 + w * w + w * out * 9) as f64;
            let step_macs = (c * c) as f64 + coupling_macs;
            flops += 2.0 * pixels * step_macs * self.depth as f64;
            if level + 1 < self.levels {
                flops += 2.0 * pixels * (half * c * 9) as f64;
                c = half;
            }
        }
        flops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_shapes_cover_the_image() {
        let cfg = GlowConfig::default();
        let total: i64 = cfg.latent_shapes().iter().map(|s| s[0] * s[1] * s[2]).sum();
        assert_eq!(total, cfg.dims());
        assert_eq!(
            cfg.latent_shapes(),
            vec![[6, 32, 32], [12, 16, 16], [48, 8, 8]]
        );
    }

    #[test]
    fn rejects_sizes_not_divisible_by_the_levels() {
        let cfg = GlowConfig {
            image_size: 36,
            ..GlowConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("multiple of 2^levels = 8"), "{err}");
    }

    #[test]
    fn differences_name_the_field() {
        let a = GlowConfig::default();
        let b = GlowConfig {
            width: 64,
            ..a.clone()
        };
        let d = a.differences(&b).unwrap();
        assert!(d.contains("width is 128 in the file but 64"), "{d}");
        assert!(a.differences(&a).is_none());
    }
}
