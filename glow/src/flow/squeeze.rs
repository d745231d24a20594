//! Squeeze: trade space for channels, `[B, C, H, W] -> [B, 4C, H/2, W/2]`.
//!
//! Each 2x2 block of pixels becomes four channels. A pure permutation of the
//! values, so its log-determinant is 0 and `unsqueeze` inverts it exactly.

use tch::Tensor;

/// `[B, C, H, W] -> [B, 4C, H/2, W/2]`.
pub fn squeeze(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.size4().expect("squeeze takes NCHW");
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([b, c * 4, h / 2, w / 2])
}

/// The inverse of [`squeeze`]: `[B, 4C, H, W] -> [B, C, 2H, 2W]`.
pub fn unsqueeze(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.size4().expect("unsqueeze takes NCHW");
    x.reshape([b, c / 4, 2, 2, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([b, c / 4, h * 2, w * 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsqueeze_inverts_squeeze_and_groups_2x2_blocks() {
        let x = Tensor::arange(2 * 3 * 4 * 4, (tch::Kind::Float, tch::Device::Cpu))
            .reshape([2, 3, 4, 4]);
        let y = squeeze(&x);
        assert_eq!(y.size(), [2, 12, 2, 2]);
        assert!(unsqueeze(&y).equal(&x));
        // The top-left output pixel of channel 0 holds the top-left 2x2 block.
        let block: Vec<f32> =
            Vec::try_from(y.select(0, 0).narrow(0, 0, 4).select(1, 0).select(1, 0))
                .expect("floats");
        assert_eq!(block, vec![0.0, 1.0, 4.0, 5.0]);
    }
}
