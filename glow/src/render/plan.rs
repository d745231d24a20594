//! From a job's operation to what must be decoded: a few anchor latents and,
//! for every frame, the tiles it shows as points between two anchors.
//!
//! Every operation reduces to linear interpolation between anchors, which
//! keeps decoding uniform and lets identical tiles be decoded once:
//! an edit is one anchor `z + sum(s_i * d_i)`; an edit sweep interpolates
//! between `z - s*d` and `z + s*d` (the same as stepping the strength, since
//! an edit is linear in it); a mix and a mix sweep interpolate between two
//! faces; a morph chain between consecutive faces; a nine-way morph between
//! the base and each target, one tile per target; samples are anchors shown
//! as they are. Interpolation is linear in the latent space, as in the Glow
//! paper: the endpoints are the faces exactly, and the middle of two faces
//! is the face of their average latent.

use std::collections::HashMap;

use contract::spec::Operation;
use tch::Tensor;

/// Tiles per row of a nine-way morph's grid.
pub const GRID_COLUMNS: usize = 3;

/// One face to decode: `(1 - t) * anchor[from] + t * anchor[to]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    /// Anchor at `t = 0`.
    pub from: usize,
    /// Anchor at `t = 1`.
    pub to: usize,
    /// Position between them, in [0, 1].
    pub t: f64,
}

/// How the tiles of a frame are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Tiles per row.
    pub columns: u32,
    /// Rows of tiles.
    pub rows: u32,
}

impl Layout {
    /// One tile per frame.
    pub const SINGLE: Layout = Layout {
        columns: 1,
        rows: 1,
    };
}

/// Everything to decode for a job, and in which order to show it.
pub struct Plan {
    /// Flat latents `[A, D]` the tiles interpolate between.
    pub anchors: Tensor,
    /// Distinct tiles, each decoded once.
    pub tiles: Vec<Tile>,
    /// For each distinct frame, its tiles (indices into `tiles`) row by row.
    pub frames: Vec<Vec<usize>>,
    /// Arrangement of the tiles in a frame.
    pub layout: Layout,
    /// The frames in playing order before any loop: holds repeat a frame.
    pub sequence: Vec<usize>,
    /// Whether the frames form an animation rather than separate stills.
    pub animated: bool,
}

/// Accumulates distinct tiles, so that a tile used twice is decoded once.
#[derive(Default)]
struct TileSet {
    tiles: Vec<Tile>,
    index: HashMap<(usize, usize, u64), usize>,
}

impl TileSet {
    /// The index of the tile between `from` and `to` at `t`. Endpoints are
    /// stored as the anchor itself, so every use of a face shares one tile.
    fn add(&mut self, from: usize, to: usize, t: f64) -> usize {
        let tile = if t == 0.0 || from == to {
            Tile {
                from,
                to: from,
                t: 0.0,
            }
        } else if t == 1.0 {
            Tile {
                from: to,
                to,
                t: 0.0,
            }
        } else {
            Tile { from, to, t }
        };
        let key = (tile.from, tile.to, tile.t.to_bits());
        *self.index.entry(key).or_insert_with(|| {
            self.tiles.push(tile);
            self.tiles.len() - 1
        })
    }
}

/// Positions `0, 1/(n-1), ..., 1` of `n >= 2` evenly spaced frames.
fn steps(n: u32) -> impl Iterator<Item = f64> {
    let last = f64::from(n.max(2) - 1);
    (0..n).map(move |i| f64::from(i) / last)
}

/// A plan where each frame is one tile, shown in order.
fn single_tiles(anchors: Tensor, tiles: TileSet, ids: Vec<usize>, animated: bool) -> Plan {
    let sequence = (0..ids.len()).collect();
    Plan {
        anchors,
        tiles: tiles.tiles,
        frames: ids.into_iter().map(|id| vec![id]).collect(),
        layout: Layout::SINGLE,
        sequence,
        animated,
    }
}

/// Builds the plan of `operation`.
///
/// `faces` are the encoded inputs `[K, D]` in the order of
/// [`Operation::inputs`]; `edit` is the summed edit vector `[D]` of an edit
/// and the signed, scaled direction of an edit sweep (`strength * d`);
/// `samples` are the drawn latents of a sample job. Each is only read by the
/// operations that use it.
pub fn build(
    operation: &Operation,
    faces: &Tensor,
    edit: Option<&Tensor>,
    samples: Option<&Tensor>,
) -> Plan {
    let mut set = TileSet::default();
    match operation {
        Operation::Edit { .. } => {
            let edit = edit.expect("an edit has its vector");
            let anchor = (faces.get(0) + edit.to_device(faces.device())).unsqueeze(0);
            let id = set.add(0, 0, 0.0);
            single_tiles(anchor, set, vec![id], false)
        }
        Operation::EditSweep { frames, .. } => {
            let step = edit
                .expect("a sweep has its direction")
                .to_device(faces.device());
            let z = faces.get(0);
            let anchors = Tensor::stack(&[&z - &step, &z + &step], 0);
            let ids = steps(*frames).map(|t| set.add(0, 1, t)).collect();
            single_tiles(anchors, set, ids, true)
        }
        Operation::Mix { alpha, .. } => {
            let id = set.add(0, 1, *alpha);
            single_tiles(faces.shallow_clone(), set, vec![id], false)
        }
        Operation::MixSweep { frames, .. } => {
            let ids = steps(*frames).map(|t| set.add(0, 1, t)).collect();
            single_tiles(faces.shallow_clone(), set, ids, true)
        }
        Operation::MorphChain {
            faces: refs,
            frames_per_leg,
            hold,
        } => chain(faces, refs.len(), *frames_per_leg, *hold as usize),
        Operation::NineWayMorph {
            targets, frames, ..
        } => nine_way(faces, targets.len(), *frames),
        Operation::Sample { count, .. } => {
            let samples = samples.expect("a sample job has its latents");
            let ids = (0..*count as usize).map(|i| set.add(i, i, 0.0)).collect();
            single_tiles(samples.shallow_clone(), set, ids, false)
        }
        // A probe draws nothing; `glow render` writes only its report.
        Operation::Probe {} => single_tiles(faces.shallow_clone(), set, Vec::new(), false),
    }
}

/// A morph through `n` faces: each leg's frames from its start face up to
/// (not including) the next face, then the last face; every face's frame
/// is held `hold` extra times.
fn chain(faces: &Tensor, n: usize, frames_per_leg: u32, hold: usize) -> Plan {
    let mut set = TileSet::default();
    let mut ids = Vec::new();
    let mut sequence = Vec::new();
    let mut show = |id: usize, is_face: bool, ids: &mut Vec<usize>| {
        ids.push(id);
        let frame = ids.len() - 1;
        let repeats = if is_face { 1 + hold } else { 1 };
        sequence.extend(std::iter::repeat_n(frame, repeats));
    };
    for leg in 0..n - 1 {
        for j in 0..frames_per_leg {
            let t = f64::from(j) / f64::from(frames_per_leg);
            show(set.add(leg, leg + 1, t), j == 0, &mut ids);
        }
    }
    show(set.add(n - 1, n - 1, 0.0), true, &mut ids);
    Plan {
        anchors: faces.shallow_clone(),
        tiles: set.tiles,
        frames: ids.into_iter().map(|id| vec![id]).collect(),
        layout: Layout::SINGLE,
        sequence,
        animated: true,
    }
}

/// A base face (anchor 0) turning into each of `targets` faces (anchors
/// 1..=targets) at once, laid out row by row, three to a row.
fn nine_way(faces: &Tensor, targets: usize, frames: u32) -> Plan {
    let mut set = TileSet::default();
    let frame_tiles: Vec<Vec<usize>> = steps(frames)
        .map(|t| (1..=targets).map(|k| set.add(0, k, t)).collect())
        .collect();
    let columns = targets.min(GRID_COLUMNS);
    Plan {
        anchors: faces.shallow_clone(),
        tiles: set.tiles,
        sequence: (0..frame_tiles.len()).collect(),
        frames: frame_tiles,
        layout: Layout {
            columns: columns as u32,
            rows: targets.div_ceil(GRID_COLUMNS) as u32,
        },
        animated: true,
    }
}

/// The latents `[B, D]` of a batch of tiles, on the anchors' device.
pub fn tile_latents(anchors: &Tensor, tiles: &[Tile]) -> Tensor {
    let device = anchors.device();
    let index = |pick: fn(&Tile) -> i64| {
        Tensor::from_slice(&tiles.iter().map(pick).collect::<Vec<_>>()).to_device(device)
    };
    let from = anchors.index_select(0, &index(|t| t.from as i64));
    let to = anchors.index_select(0, &index(|t| t.to as i64));
    let t: Vec<f32> = tiles.iter().map(|tile| tile.t as f32).collect();
    let t = Tensor::from_slice(&t)
        .to_device(device)
        .to_kind(anchors.kind())
        .unsqueeze(1);
    from * (t.ones_like() - &t) + to * t
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn faces(k: i64) -> Tensor {
        Tensor::arange(k * 4, (Kind::Float, Device::Cpu)).view([k, 4])
    }

    fn op(json: &str) -> Operation {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_edit_adds_the_vector_to_the_face() {
        let edit = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.5]);
        let plan = build(
            &op(r#"{"kind": "edit", "input": "a", "attributes": {"smiling": 1}}"#),
            &faces(1),
            Some(&edit),
            None,
        );
        assert_eq!(plan.frames, [vec![0]]);
        let z = tile_latents(&plan.anchors, &plan.tiles);
        assert_eq!(
            Vec::<f32>::try_from(z.flatten(0, -1)).unwrap(),
            [1.0, 1.0, 1.0, 3.5]
        );
        assert!(!plan.animated);
    }

    #[test]
    fn an_edit_sweep_runs_from_minus_to_plus() {
        let step = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 0.0]);
        let plan = build(
            &op(
                r#"{"kind": "edit_sweep", "input": "a", "attribute": "age", "strength": 1, "frames": 5}"#,
            ),
            &faces(1),
            Some(&step),
            None,
        );
        let z = tile_latents(&plan.anchors, &plan.tiles);
        let first: Vec<f32> = z.select(1, 0).try_into().unwrap();
        assert_eq!(first, [-2.0, -1.0, 0.0, 1.0, 2.0]);
        assert_eq!(plan.sequence, [0, 1, 2, 3, 4]);
        assert!(plan.animated);
    }

    #[test]
    fn a_mix_lands_between_the_faces() {
        let plan = build(
            &op(r#"{"kind": "mix", "from": "a", "to": "b", "alpha": 0.25}"#),
            &faces(2),
            None,
            None,
        );
        let z: Vec<f32> = tile_latents(&plan.anchors, &plan.tiles)
            .flatten(0, -1)
            .try_into()
            .unwrap();
        assert_eq!(z, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn a_mix_sweep_has_the_faces_at_its_ends() {
        let plan = build(
            &op(r#"{"kind": "mix_sweep", "from": "a", "to": "b", "frames": 3}"#),
            &faces(2),
            None,
            None,
        );
        let z = tile_latents(&plan.anchors, &plan.tiles);
        assert!(z.get(0).equal(&faces(2).get(0)));
        assert!(z.get(2).equal(&faces(2).get(1)));
    }

    #[test]
    fn a_chain_visits_every_face_and_holds_there() {
        let plan = build(
            &op(
                r#"{"kind": "morph_chain", "faces": ["a", "b", "c"], "frames_per_leg": 2, "hold": 1}"#,
            ),
            &faces(3),
            None,
            None,
        );
        // Frames: a, a-b, b, b-c, c; faces held once more.
        assert_eq!(plan.frames.len(), 5);
        assert_eq!(plan.sequence, [0, 0, 1, 2, 2, 3, 4, 4]);
        let operation = op(
            r#"{"kind": "morph_chain", "faces": ["a", "b", "c"], "frames_per_leg": 2, "hold": 1}"#,
        );
        assert_eq!(plan.sequence.len() as u64, operation.image_count());
        let z = tile_latents(&plan.anchors, &plan.tiles);
        assert!(z.get(4).equal(&faces(3).get(2)));
    }

    #[test]
    fn a_nine_way_morph_shares_the_base_tile() {
        let plan = build(
            &op(
                r#"{"kind": "nine_way_morph", "base": "b", "targets": ["1","2","3","4","5"], "frames": 4}"#,
            ),
            &faces(6),
            None,
            None,
        );
        assert_eq!(
            plan.layout,
            Layout {
                columns: 3,
                rows: 2
            }
        );
        assert_eq!(plan.frames.len(), 4);
        // The first frame is the base five times: one tile.
        assert!(plan.frames[0].iter().all(|&id| id == plan.frames[0][0]));
        assert_eq!(plan.tiles.len(), 1 + 3 * 5);
        let last: Vec<Tile> = plan.frames[3].iter().map(|&id| plan.tiles[id]).collect();
        assert!(last
            .iter()
            .enumerate()
            .all(|(k, t)| t.from == k + 1 && t.t == 0.0));
    }

    #[test]
    fn samples_are_shown_as_drawn() {
        let samples = faces(3);
        let plan = build(
            &op(r#"{"kind": "sample", "count": 3, "temperature": 0.7}"#),
            &Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
            None,
            Some(&samples),
        );
        assert!(tile_latents(&plan.anchors, &plan.tiles).equal(&samples));
        assert!(!plan.animated);
    }
}
