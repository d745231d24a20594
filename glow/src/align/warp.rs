//! Similarity transforms and the warp that applies one to a photo.
//!
//! A similarity maps `p` to `s R p + t` (rotation `R`, uniform scale `s`,
//! translation `t`): it keeps a face's proportions, so a tilted or distant
//! face is straightened and resized but never stretched. [`Similarity::fit`]
//! finds the one that moves a set of points closest to their targets in the
//! weighted least-squares sense (Umeyama 1991, reflection excluded).
//!
//! [`warp`] samples the output with a Catmull-Rom bicubic filter. When the
//! output is smaller than the face in the photo, the region it covers is
//! first shrunk with a Lanczos filter to about the output's scale, because a
//! bicubic kernel alone would alias fine texture (hair, stubble) into moiré.

use image::imageops::FilterType;
use image::{Rgb, RgbImage};

/// Continuous pixel coordinates `[x, y]`: pixel `(i, j)` covers
/// `[i, i + 1) x [j, j + 1)`.
pub type Point = [f64; 2];

/// Extra source pixels kept around the region a warp reads, so that the
/// Lanczos and bicubic kernels near its border see real pixels.
const FILTER_MARGIN: f64 = 4.0;
/// Output pixels per source pixel below which the source is shrunk before
/// bicubic sampling. Slightly under one, so that a face already at about the
/// right size is resampled only once.
const PRESHRINK_BELOW: f64 = 0.9;

/// `p -> [a -b; b a] p + [tx, ty]`, where `a = s cos(theta)` and
/// `b = s sin(theta)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    /// `s cos(theta)`.
    pub a: f64,
    /// `s sin(theta)`.
    pub b: f64,
    /// Translation, x.
    pub tx: f64,
    /// Translation, y.
    pub ty: f64,
}

impl Similarity {
    /// The transform with scale `scale`, rotation `degrees` (clockwise on
    /// screen, where y points down) and translation `t`.
    pub fn new(scale: f64, degrees: f64, t: Point) -> Similarity {
        let theta = degrees.to_radians();
        Similarity {
            a: scale * theta.cos(),
            b: scale * theta.sin(),
            tx: t[0],
            ty: t[1],
        }
    }

    /// The similarity from `from` to `to` that minimizes the sum of
    /// `weights[k]` times the squared distance between the moved `from[k]`
    /// and `to[k]` (equal lengths, positive weights, at least two distinct
    /// points).
    pub fn fit(from: &[Point], to: &[Point], weights: &[f64]) -> Similarity {
        assert!(
            from.len() == to.len() && to.len() == weights.len(),
            "point sets and weights of equal size"
        );
        let total: f64 = weights.iter().sum();
        let mean = |points: &[Point]| {
            let sum = points.iter().zip(weights).fold([0.0, 0.0], |acc, (p, w)| {
                [acc[0] + w * p[0], acc[1] + w * p[1]]
            });
            [sum[0] / total, sum[1] / total]
        };
        let (mf, mt) = (mean(from), mean(to));

        // For centred points, the best [a -b; b a] is the projection of the
        // cross-covariance onto rotation-scalings, divided by the spread of
        // the source points.
        let (mut dot, mut cross, mut spread) = (0.0, 0.0, 0.0);
        for ((p, q), w) in from.iter().zip(to).zip(weights) {
            let (px, py) = (p[0] - mf[0], p[1] - mf[1]);
            let (qx, qy) = (q[0] - mt[0], q[1] - mt[1]);
            dot += w * (px * qx + py * qy);
            cross += w * (px * qy - py * qx);
            spread += w * (px * px + py * py);
        }
        let a = dot / spread;
        let b = cross / spread;
        Similarity {
            a,
            b,
            tx: mt[0] - (a * mf[0] - b * mf[1]),
            ty: mt[1] - (b * mf[0] + a * mf[1]),
        }
    }

    /// The uniform scale `s`.
    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    /// The rotation in degrees.
    pub fn degrees(&self) -> f64 {
        self.b.atan2(self.a).to_degrees()
    }

    /// Where `p` goes.
    pub fn apply(&self, p: Point) -> Point {
        [
            self.a * p[0] - self.b * p[1] + self.tx,
            self.b * p[0] + self.a * p[1] + self.ty,
        ]
    }

    /// This transform followed by `next`.
    pub fn then(&self, next: &Similarity) -> Similarity {
        let t = next.apply([self.tx, self.ty]);
        Similarity {
            a: next.a * self.a - next.b * self.b,
            b: next.b * self.a + next.a * self.b,
            tx: t[0],
            ty: t[1],
        }
    }

    /// The transform that undoes this one.
    pub fn inverse(&self) -> Similarity {
        let d = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / d, -self.b / d);
        Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        }
    }
}

/// The `width` x `height` image whose pixel at `q` is `photo`'s at
/// `to_output.inverse()(q)`; outside the photo, its nearest edge pixel.
pub fn warp(photo: &RgbImage, to_output: &Similarity, width: u32, height: u32) -> RgbImage {
    let from_output = to_output.inverse();
    let scale = to_output.scale();

    // The source region the output reads, with room for the filters.
    let corners = [
        [0.0, 0.0],
        [f64::from(width), 0.0],
        [0.0, f64::from(height)],
        [f64::from(width), f64::from(height)],
    ]
    .map(|q| from_output.apply(q));
    let margin = FILTER_MARGIN / scale.min(1.0);
    let lo = |k: usize| corners.iter().map(|c| c[k]).fold(f64::MAX, f64::min) - margin;
    let hi = |k: usize| corners.iter().map(|c| c[k]).fold(f64::MIN, f64::max) + margin;
    let (pw, ph) = photo.dimensions();
    let x0 = lo(0).floor().clamp(0.0, f64::from(pw - 1)) as u32;
    let y0 = lo(1).floor().clamp(0.0, f64::from(ph - 1)) as u32;
    let x1 = (hi(0).ceil().clamp(1.0, f64::from(pw)) as u32).max(x0 + 1);
    let y1 = (hi(1).ceil().clamp(1.0, f64::from(ph)) as u32).max(y0 + 1);
    let region = image::imageops::crop_imm(photo, x0, y0, x1 - x0, y1 - y0).to_image();

    // Shrink a face much larger than the output so that the bicubic
    // sampling below never skips source pixels.
    let (region, fx, fy) = if scale < PRESHRINK_BELOW {
        let (rw, rh) = region.dimensions();
        let sw = ((f64::from(rw) * scale).round() as u32).max(1);
        let sh = ((f64::from(rh) * scale).round() as u32).max(1);
        let small = image::imageops::resize(&region, sw, sh, FilterType::Lanczos3);
        (
            small,
            f64::from(sw) / f64::from(rw),
            f64::from(sh) / f64::from(rh),
        )
    } else {
        (region, 1.0, 1.0)
    };

    RgbImage::from_fn(width, height, |u, v| {
        let p = from_output.apply([f64::from(u) + 0.5, f64::from(v) + 0.5]);
        // Region coordinates of the sample, as pixel-centre indices.
        let x = (p[0] - f64::from(x0)) * fx - 0.5;
        let y = (p[1] - f64::from(y0)) * fy - 0.5;
        bicubic(&region, x, y)
    })
}

/// The Catmull-Rom cubic (Keys' kernel with a = -0.5): interpolating,
/// sharp, and with only a slight overshoot.
fn catmull_rom(t: f64) -> f64 {
    let t = t.abs();
    if t < 1.0 {
        (1.5 * t - 2.5) * t * t + 1.0
    } else if t < 2.0 {
        ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    } else {
        0.0
    }
}

/// `image` at pixel-centre coordinates `(x, y)`, edges extended.
fn bicubic(image: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = image.dimensions();
    let (ix, iy) = (x.floor(), y.floor());
    let (tx, ty) = (x - ix, y - iy);
    let clamp = |v: f64, n: u32| v.clamp(0.0, f64::from(n - 1)) as u32;
    let wx: [f64; 4] = std::array::from_fn(|k| catmull_rom(tx - (k as f64 - 1.0)));
    let wy: [f64; 4] = std::array::from_fn(|k| catmull_rom(ty - (k as f64 - 1.0)));
    let mut sum = [0.0f64; 3];
    for (j, wyj) in wy.iter().enumerate() {
        let row = clamp(iy + j as f64 - 1.0, h);
        for (i, wxi) in wx.iter().enumerate() {
            let col = clamp(ix + i as f64 - 1.0, w);
            let pixel = image.get_pixel(col, row);
            for c in 0..3 {
                sum[c] += wxi * wyj * f64::from(pixel[c]);
            }
        }
    }
    Rgb(sum.map(|s| s.round().clamp(0.0, 255.0) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Point, b: Point) -> bool {
        (a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9
    }

    #[test]
    fn fit_recovers_a_known_similarity() {
        let truth = Similarity::new(1.7, 23.0, [12.0, -5.0]);
        let from = [[10.0, 20.0], [40.0, 22.0], [25.0, 35.0], [14.0, 50.0]];
        let to = from.map(|p| truth.apply(p));
        let fit = Similarity::fit(&from, &to, &[1.0, 2.0, 0.5, 1.0]);
        assert!((fit.scale() - 1.7).abs() < 1e-9);
        assert!((fit.degrees() - 23.0).abs() < 1e-9);
        for p in from {
            assert!(close(fit.apply(p), truth.apply(p)));
        }
        assert!(close(
            fit.inverse().apply(fit.apply([3.0, 4.0])),
            [3.0, 4.0]
        ));
        let next = Similarity::new(0.5, -40.0, [1.0, 2.0]);
        assert!(close(
            fit.then(&next).apply([7.0, -2.0]),
            next.apply(fit.apply([7.0, -2.0]))
        ));
    }

    #[test]
    fn a_shift_by_whole_pixels_moves_pixels_exactly() {
        let photo = RgbImage::from_fn(20, 20, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 7]));
        let shifted = warp(&photo, &Similarity::new(1.0, 0.0, [-3.0, -5.0]), 10, 10);
        for (u, v) in [(0, 0), (4, 7), (9, 9)] {
            assert_eq!(shifted.get_pixel(u, v), photo.get_pixel(u + 3, v + 5));
        }
    }

    #[test]
    fn a_shrinking_warp_averages_fine_stripes() {
        // One-pixel stripes shrunk four times must come out mid-gray, not
        // as the aliased stripes a bare bicubic sample would give.
        let photo = RgbImage::from_fn(200, 200, |x, _| Rgb([if x % 2 == 0 { 255 } else { 0 }; 3]));
        let small = warp(&photo, &Similarity::new(0.25, 0.0, [0.0, 0.0]), 50, 50);
        for p in small.pixels().skip(200).take(100) {
            assert!(p[0].abs_diff(128) <= 12, "{p:?}");
        }
    }
}
