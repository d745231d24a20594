//! MTCNN (Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment
//! Using Multitask Cascaded Convolutional Networks", 2016) on libtorch.
//!
//! Three small networks run in turn, each on the survivors of the one
//! before: P-Net slides over an image pyramid and proposes face boxes, R-Net
//! rejects most of them from 24 px crops, and O-Net scores 48 px crops and
//! places five landmarks (both eyes, the nose tip, both mouth corners).
//! Each stage also regresses the box, and overlapping boxes are merged by
//! non-maximum suppression. The weights are the original authors', as
//! shipped in PyPI's facenet-pytorch wheel and converted to safetensors by
//! `scripts/convert_mtcnn.py`; the layer names (`pnet.conv1.weight`, ...)
//! are that package's.
//!
//! Coordinates are continuous image coordinates: pixel `(i, j)` covers
//! `[i, i + 1) x [j, j + 1)`, so its centre is at `(i + 0.5, j + 0.5)`.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::AlignError;

/// Side of the window P-Net scores: one output cell sees 12 x 12 pixels.
const PNET_WINDOW: f64 = 12.0;
/// P-Net's output cells are 2 px apart (its one 2x2 pooling).
const PNET_STRIDE: f64 = 2.0;
/// Input sides of R-Net and O-Net.
const RNET_SIZE: i64 = 24;
const ONET_SIZE: i64 = 48;
/// Smallest face, in pixels of the detection image, that the pyramid
/// looks for: the paper's setting. Smaller faces hold too little detail for
/// the landmarks, let alone for the 64 px model.
pub const MIN_FACE_SIZE: f64 = 20.0;
/// Ratio between pyramid levels: about 1/sqrt(2), so each level halves the
/// pixel count and a face always meets P-Net within a factor 1.4 of its
/// window. The paper's value.
const PYRAMID_FACTOR: f64 = 0.709;
/// Face probability each stage needs to pass a box on. P-Net's is low
/// because R-Net and O-Net clean up after it; these are the published
/// values, tuned on FDDB and WIDER FACE.
const THRESHOLDS: [f64; 3] = [0.6, 0.7, 0.7];
/// Overlap (intersection over union) above which P-Net's boxes of one
/// pyramid level are merged: neighbouring cells see the same face.
const NMS_WITHIN_SCALE: f64 = 0.5;
/// Overlap above which boxes are merged across levels and after R-Net.
const NMS_ACROSS: f64 = 0.7;
/// Overlap, as intersection over the smaller box, above which O-Net's
/// boxes are merged: a box inside a larger one is the same face.
const NMS_FINAL: f64 = 0.7;
/// Crops sent through R-Net or O-Net at once: bounds memory for photos
/// full of face-like texture.
const CROP_BATCH: usize = 256;

/// A detected face in image coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Left, top, right, bottom.
    pub bbox: [f64; 4],
    /// O-Net's face probability.
    pub score: f64,
    /// Left eye, right eye, nose tip, left and right mouth corner (left and
    /// right as seen in the image), each `[x, y]`.
    pub landmarks: [[f64; 2]; 5],
}

impl Detection {
    /// Area of the box, for picking the largest face.
    pub fn area(&self) -> f64 {
        let [x1, y1, x2, y2] = self.bbox;
        (x2 - x1).max(0.0) * (y2 - y1).max(0.0)
    }
}

/// A candidate box between stages: corners, score, and the regression the
/// stage predicted for it (offsets in box sizes).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    bbox: [f64; 4],
    score: f64,
    regression: [f64; 4],
}

impl Candidate {
    /// The box moved by its regression.
    fn refined(&self) -> [f64; 4] {
        let [x1, y1, x2, y2] = self.bbox;
        let (w, h) = (x2 - x1, y2 - y1);
        let r = self.regression;
        [x1 + r[0] * w, y1 + r[1] * h, x2 + r[2] * w, y2 + r[3] * h]
    }
}

/// The three networks' weights on one device.
pub struct Mtcnn {
    weights: HashMap<String, Tensor>,
    device: Device,
}

impl Mtcnn {
    /// Loads the converted weights from `path` onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Mtcnn, AlignError> {
        let weights_error = |message: String| AlignError::Weights {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(weights_error(
                "no such file; scripts/setup.sh installs facenet-pytorch and converts MTCNN's weights there".into(),
            ));
        }
        let weights: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| weights_error(e.to_string()))?
            .into_iter()
            .map(|(name, t)| (name, t.to_kind(Kind::Float).to_device(device)))
            .collect();
        let detector = Mtcnn { weights, device };
        for name in REQUIRED_WEIGHTS {
            if !detector.weights.contains_key(*name) {
                return Err(weights_error(format!("the weight `{name}` is missing")));
            }
        }
        Ok(detector)
    }

    fn w(&self, name: &str) -> &Tensor {
        &self.weights[name]
    }

    fn conv(&self, x: &Tensor, layer: &str) -> Tensor {
        x.conv2d(
            self.w(&format!("{layer}.weight")),
            Some(self.w(&format!("{layer}.bias"))),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )
    }

    fn prelu(&self, x: &Tensor, layer: &str) -> Tensor {
        x.prelu(self.w(&format!("{layer}.weight")))
    }

    fn dense(&self, x: &Tensor, layer: &str) -> Tensor {
        x.linear(
            self.w(&format!("{layer}.weight")),
            Some(self.w(&format!("{layer}.bias"))),
        )
    }

    /// P-Net on one normalized `[1, 3, H, W]` image: the face probability
    /// `[H', W']` and box regression `[4, H', W']` of every cell.
    fn pnet(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = self.prelu(&self.conv(x, "pnet.conv1"), "pnet.prelu1");
        let x = max_pool(&x, 2, 2);
        let x = self.prelu(&self.conv(&x, "pnet.conv2"), "pnet.prelu2");
        let x = self.prelu(&self.conv(&x, "pnet.conv3"), "pnet.prelu3");
        let prob = self.conv(&x, "pnet.conv4_1").softmax(1, Kind::Float);
        let reg = self.conv(&x, "pnet.conv4_2");
        (prob.get(0).get(1), reg.get(0))
    }

    /// R-Net on `[N, 3, 24, 24]` crops: probabilities `[N]`, regressions `[N, 4]`.
    fn rnet(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = self.prelu(&self.conv(x, "rnet.conv1"), "rnet.prelu1");
        let x = max_pool(&x, 3, 2);
        let x = self.prelu(&self.conv(&x, "rnet.conv2"), "rnet.prelu2");
        let x = max_pool(&x, 3, 2);
        let x = self.prelu(&self.conv(&x, "rnet.conv3"), "rnet.prelu3");
        let x = self.prelu(
            &self.dense(&flatten_transposed(&x), "rnet.dense4"),
            "rnet.prelu4",
        );
        let prob = self.dense(&x, "rnet.dense5_1").softmax(1, Kind::Float);
        (prob.select(1, 1), self.dense(&x, "rnet.dense5_2"))
    }

    /// O-Net on `[N, 3, 48, 48]` crops: probabilities `[N]`, regressions
    /// `[N, 4]` and landmarks `[N, 10]` (five x, then five y, in box units).
    fn onet(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let x = self.prelu(&self.conv(x, "onet.conv1"), "onet.prelu1");
        let x = max_pool(&x, 3, 2);
        let x = self.prelu(&self.conv(&x, "onet.conv2"), "onet.prelu2");
        let x = max_pool(&x, 3, 2);
        let x = self.prelu(&self.conv(&x, "onet.conv3"), "onet.prelu3");
        let x = max_pool(&x, 2, 2);
        let x = self.prelu(&self.conv(&x, "onet.conv4"), "onet.prelu4");
        let x = self.prelu(
            &self.dense(&flatten_transposed(&x), "onet.dense5"),
            "onet.prelu5",
        );
        let prob = self.dense(&x, "onet.dense6_1").softmax(1, Kind::Float);
        (
            prob.select(1, 1),
            self.dense(&x, "onet.dense6_2"),
            self.dense(&x, "onet.dense6_3"),
        )
    }

    /// Every face in `image`, a float `[3, H, W]` tensor of 0..255 values on
    /// this detector's device, in no particular order.
    pub fn detect(&self, image: &Tensor) -> Vec<Detection> {
        let _no_grad = tch::no_grad_guard();
        let image = image.to_device(self.device).to_kind(Kind::Float);
        let proposals = self.propose(&image);
        if proposals.is_empty() {
            return Vec::new();
        }
        let refined = self.refine(&image, &proposals);
        if refined.is_empty() {
            return Vec::new();
        }
        self.output(&image, &refined)
    }

    /// Stage one: P-Net over the pyramid; squared, regressed boxes.
    fn propose(&self, image: &Tensor) -> Vec<[f64; 4]> {
        let (_, h, w) = image.size3().expect("CHW image");
        let mut candidates = Vec::new();
        for scale in pyramid(h.min(w) as f64) {
            let (sh, sw) = (
                (h as f64 * scale).ceil() as i64,
                (w as f64 * scale).ceil() as i64,
            );
            let level = normalize(&image.unsqueeze(0).adaptive_avg_pool2d([sh, sw]));
            let (prob, reg) = self.pnet(&level);
            let (ph, pw) = (prob.size()[0], prob.size()[1]);
            let prob = to_vec(&prob);
            let reg = to_vec(&reg);
            let cells = (ph * pw) as usize;
            // Level pixels per image pixel, per axis (the level's sides are rounded).
            let (fx, fy) = (sw as f64 / w as f64, sh as f64 / h as f64);
            let mut level_candidates = Vec::new();
            for (cell, &score) in prob.iter().enumerate() {
                if f64::from(score) < THRESHOLDS[0] {
                    continue;
                }
                let (row, col) = ((cell as i64 / pw) as f64, (cell as i64 % pw) as f64);
                let x1 = PNET_STRIDE * col;
                let y1 = PNET_STRIDE * row;
                level_candidates.push(Candidate {
                    bbox: [
                        x1 / fx,
                        y1 / fy,
                        (x1 + PNET_WINDOW) / fx,
                        (y1 + PNET_WINDOW) / fy,
                    ],
                    score: f64::from(score),
                    regression: std::array::from_fn(|k| f64::from(reg[k * cells + cell])),
                });
            }
            let keep = nms(&level_candidates, NMS_WITHIN_SCALE, Overlap::Union);
            candidates.extend(keep.into_iter().map(|i| level_candidates[i]));
        }
        let keep = nms(&candidates, NMS_ACROSS, Overlap::Union);
        keep.into_iter()
            .map(|i| square(candidates[i].refined()))
            .collect()
    }

    /// Stage two: R-Net on 24 px crops; squared, regressed boxes.
    fn refine(&self, image: &Tensor, boxes: &[[f64; 4]]) -> Vec<[f64; 4]> {
        let boxes: Vec<[f64; 4]> = boxes.iter().map(|b| snap(*b)).collect();
        let mut candidates = Vec::new();
        for chunk in boxes.chunks(CROP_BATCH) {
            let (prob, reg) = self.rnet(&crops(image, chunk, RNET_SIZE));
            let (prob, reg) = (to_vec(&prob), to_vec(&reg));
            for (i, bbox) in chunk.iter().enumerate() {
                if f64::from(prob[i]) > THRESHOLDS[1] {
                    candidates.push(Candidate {
                        bbox: *bbox,
                        score: f64::from(prob[i]),
                        regression: std::array::from_fn(|k| f64::from(reg[4 * i + k])),
                    });
                }
            }
        }
        let keep = nms(&candidates, NMS_ACROSS, Overlap::Union);
        keep.into_iter()
            .map(|i| square(candidates[i].refined()))
            .collect()
    }

    /// Stage three: O-Net on 48 px crops; final boxes and landmarks.
    fn output(&self, image: &Tensor, boxes: &[[f64; 4]]) -> Vec<Detection> {
        let boxes: Vec<[f64; 4]> = boxes.iter().map(|b| snap(*b)).collect();
        let mut candidates = Vec::new();
        let mut detections = Vec::new();
        for chunk in boxes.chunks(CROP_BATCH) {
            let (prob, reg, marks) = self.onet(&crops(image, chunk, ONET_SIZE));
            let (prob, reg, marks) = (to_vec(&prob), to_vec(&reg), to_vec(&marks));
            for (i, bbox) in chunk.iter().enumerate() {
                let score = f64::from(prob[i]);
                if score <= THRESHOLDS[2] {
                    continue;
                }
                let [x1, y1, x2, y2] = *bbox;
                let landmarks = std::array::from_fn(|k| {
                    [
                        x1 + f64::from(marks[10 * i + k]) * (x2 - x1),
                        y1 + f64::from(marks[10 * i + 5 + k]) * (y2 - y1),
                    ]
                });
                let candidate = Candidate {
                    bbox: *bbox,
                    score,
                    regression: std::array::from_fn(|k| f64::from(reg[4 * i + k])),
                };
                detections.push(Detection {
                    bbox: candidate.refined(),
                    score,
                    landmarks,
                });
                candidates.push(Candidate {
                    bbox: candidate.refined(),
                    ..candidate
                });
            }
        }
        nms(&candidates, NMS_FINAL, Overlap::Smaller)
            .into_iter()
            .map(|i| detections[i].clone())
            .collect()
    }
}

/// Every weight the networks read, checked at load so that a wrong file
/// fails there rather than halfway through a detection.
const REQUIRED_WEIGHTS: &[&str] = &[
    "pnet.conv1.weight",
    "pnet.conv2.weight",
    "pnet.conv3.weight",
    "pnet.conv4_1.weight",
    "pnet.conv4_2.weight",
    "pnet.prelu3.weight",
    "rnet.conv3.weight",
    "rnet.dense4.weight",
    "rnet.dense5_1.weight",
    "rnet.dense5_2.weight",
    "rnet.prelu4.weight",
    "onet.conv4.weight",
    "onet.dense5.weight",
    "onet.dense6_1.weight",
    "onet.dense6_2.weight",
    "onet.dense6_3.weight",
    "onet.prelu5.weight",
];

/// The pyramid's scales for an image whose shorter side is `min_side`: the
/// first maps a `MIN_FACE_SIZE` face onto P-Net's window, each next one is
/// `PYRAMID_FACTOR` smaller, down to where the image is one window.
fn pyramid(min_side: f64) -> Vec<f64> {
    let mut scales = Vec::new();
    let mut scale = PNET_WINDOW / MIN_FACE_SIZE;
    while min_side * scale >= PNET_WINDOW {
        scales.push(scale);
        scale *= PYRAMID_FACTOR;
    }
    scales
}

/// Pixel values 0..255 to the networks' input range, about -1..1.
fn normalize(x: &Tensor) -> Tensor {
    (x - 127.5) * (1.0 / 128.0)
}

/// Max pooling with ceil mode, as the networks were trained (Caffe's pooling).
fn max_pool(x: &Tensor, kernel: i64, stride: i64) -> Tensor {
    x.max_pool2d([kernel, kernel], [stride, stride], [0, 0], [1, 1], true)
}

/// Flattens `[N, C, H, W]` in width, height, channel order: the weights of
/// the dense layers came from a framework that stored images transposed.
fn flatten_transposed(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    x.permute([0, 3, 2, 1]).contiguous().view([n, -1])
}

fn to_vec(x: &Tensor) -> Vec<f32> {
    let flat = x
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&flat).expect("a float tensor converts")
}

/// The square of the same centre whose side is the box's longer side.
fn square(bbox: [f64; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = bbox;
    let side = (x2 - x1).max(y2 - y1);
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    [
        cx - side / 2.0,
        cy - side / 2.0,
        cx + side / 2.0,
        cy + side / 2.0,
    ]
}

/// The box with its corners on whole pixels, at least one pixel wide, so
/// that a crop covers exactly the box its landmarks are measured in.
fn snap(bbox: [f64; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = bbox.map(f64::round);
    [x1, y1, x2.max(x1 + 1.0), y2.max(y1 + 1.0)]
}

/// Each snapped box cut out of `image` (outside the image is black,
/// as the networks were trained) and area-resized to `size` x `size`,
/// normalized, as `[N, 3, size, size]`.
fn crops(image: &Tensor, boxes: &[[f64; 4]], size: i64) -> Tensor {
    let (c, h, w) = image.size3().expect("CHW image");
    let cut: Vec<Tensor> = boxes
        .iter()
        .map(|bbox| {
            let [x1, y1, x2, y2] = bbox.map(|v| v as i64);
            let canvas = Tensor::zeros([c, y2 - y1, x2 - x1], (Kind::Float, image.device()));
            let (ix1, iy1, ix2, iy2) = (x1.max(0), y1.max(0), x2.min(w), y2.min(h));
            if ix2 > ix1 && iy2 > iy1 {
                canvas
                    .narrow(1, iy1 - y1, iy2 - iy1)
                    .narrow(2, ix1 - x1, ix2 - ix1)
                    .copy_(&image.narrow(1, iy1, iy2 - iy1).narrow(2, ix1, ix2 - ix1));
            }
            canvas.unsqueeze(0).adaptive_avg_pool2d([size, size])
        })
        .collect();
    normalize(&Tensor::cat(&cut, 0))
}

/// How two boxes' overlap is measured.
#[derive(Clone, Copy)]
enum Overlap {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller box.
    Smaller,
}

/// Greedy non-maximum suppression: indices of the boxes kept, best first.
fn nms(candidates: &[Candidate], threshold: f64, overlap: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[b].score.total_cmp(&candidates[a].score));
    let area = |b: &[f64; 4]| (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        let a = &candidates[i].bbox;
        let suppressed = keep.iter().any(|&k| {
            let b = &candidates[k].bbox;
            let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = iw * ih;
            let denominator = match overlap {
                Overlap::Union => area(a) + area(b) - inter,
                Overlap::Smaller => area(a).min(area(b)),
            };
            denominator > 0.0 && inter / denominator > threshold
        });
        if !suppressed {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(bbox: [f64; 4], score: f64) -> Candidate {
        Candidate {
            bbox,
            score,
            regression: [0.0; 4],
        }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [
            candidate([0.0, 0.0, 10.0, 10.0], 0.8),
            candidate([1.0, 1.0, 11.0, 11.0], 0.9),
            candidate([20.0, 20.0, 30.0, 30.0], 0.7),
            candidate([2.0, 2.0, 6.0, 6.0], 0.95),
        ];
        assert_eq!(nms(&boxes, 0.5, Overlap::Union), [3, 1, 2]);
        assert_eq!(nms(&boxes, 0.7, Overlap::Smaller), [3, 2]);
    }

    #[test]
    fn the_pyramid_starts_at_the_smallest_face_and_ends_at_one_window() {
        let scales = pyramid(100.0);
        assert!((scales[0] - PNET_WINDOW / MIN_FACE_SIZE).abs() < 1e-12);
        let last = scales.last().unwrap();
        assert!(100.0 * last >= PNET_WINDOW && 100.0 * last * PYRAMID_FACTOR < PNET_WINDOW);
    }

    #[test]
    fn squares_keep_their_centre() {
        assert_eq!(square([0.0, 0.0, 10.0, 4.0]), [0.0, -3.0, 10.0, 7.0]);
    }
}
