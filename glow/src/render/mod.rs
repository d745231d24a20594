//! Rendering a job: face edits, mixes, morph videos and samples from a
//! [`JobSpec`], written as PNG, GIF and MP4 with a JSON report.
//!
//! [`Renderer::render`] is the one entry point, used by `glow render` on a
//! laptop and by queue workers alike. It reads the input photos through an
//! [`InputSource`], aligns each face to the training framing ([`crate::align`],
//! unless the spec skips it), crops and encodes them, turns the operation into a
//! [`plan`] of latents to decode, decodes them in batches sized to a memory
//! budget (reporting progress and honouring cancellation between batches
//! through [`RenderHooks`]), then upscales and writes the outputs:
//!
//! | file | made for |
//! | --- | --- |
//! | `result.png` | `png` of an edit or a mix |
//! | `sample_NN.png` | `png` of a sample job, one per face |
//! | `frames/frame_NNNN.png` | `frames`: every distinct frame of an animation |
//! | `contact_sheet.png` | `contact_sheet`: the stills, or up to 64 frames |
//! | `animation.gif`, `animation.mp4` | `gif`, `mp4` of an animation |
//! | `report.json` | always: see [`RenderReport`] |
//!
//! Encoding, decoding, resizing and PNG encoding are all deterministic, so
//! the same inputs, spec and seed give byte-identical PNGs on one machine
//! and device.

pub mod hooks;
pub mod input;
pub mod output;
pub mod plan;
pub mod report;
pub mod video;

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use contract::spec::{playback_order, Format, JobSpec, Operation, SpecError};
use image::RgbImage;
use tch::Tensor;

use crate::align::{AlignError, Aligner};
use crate::config::GlowConfig;
use crate::data::{face_tensor, tensor_to_image};
use crate::directions::{Directions, DirectionsError};
use crate::error::GlowError;
use crate::model::Glow;

pub use hooks::{NoHooks, ProgressBarHooks, RenderHooks, Stage};
pub use input::{decode_image, DirInputs, ImageLimits, InputError, InputSource};
pub use output::OutputError;
pub use report::{sha256_file, FrameCounts, InputFaces, RenderReport, Timings, REPORT_FILE};
pub use video::VideoError;

use output::{compose, contact_sheet, sheet_picks, write_png, GifWriter};
use plan::{Layout, Plan};
use report::timed;
use video::Mp4Writer;

/// The still of an edit or a mix.
pub const RESULT_FILE: &str = "result.png";
/// Folder of an animation's frames.
pub const FRAMES_DIR: &str = "frames";
/// The contact sheet.
pub const CONTACT_SHEET_FILE: &str = "contact_sheet.png";
/// The animated GIF.
pub const GIF_FILE: &str = "animation.gif";
/// The MP4 video.
pub const MP4_FILE: &str = "animation.mp4";

/// Default memory for one decode batch's activations: small enough to leave
/// room for the rest of a 2 GB worker, large enough for a full batch.
pub const DEFAULT_DECODE_MEMORY: u64 = 512 * 1024 * 1024;
/// Most faces decoded at once: beyond this a CPU gains nothing per face and
/// progress and cancellation get coarse.
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Hidden feature maps of a coupling network alive at once while decoding
/// (input, two activations, output), each `width` channels at half the
/// image size: they dominate a decode's memory.
const LIVE_HIDDEN_MAPS: u64 = 4;
/// Copies of a whole image's worth of values alive at once (the latents,
/// the level being inverted and its halves, the squeeze, the output).
const LIVE_IMAGE_COPIES: u64 = 8;

/// Share of a job's progress done once the inputs are read and encoded.
const PROGRESS_ENCODED: f32 = 0.05;
/// Share done once every tile is decoded; writing takes the rest.
const PROGRESS_DECODED: f32 = 0.75;

/// Settings of the renderer that are not part of a job.
#[derive(Clone, Debug)]
pub struct RenderConfig {
    /// Bounds on input photos.
    pub limits: ImageLimits,
    /// Bytes of activations one decode batch may use.
    pub decode_memory: u64,
    /// Most faces per decode batch.
    pub max_batch: usize,
    /// The `ffmpeg` program used for MP4.
    pub ffmpeg: PathBuf,
    /// The face detector's weights (see [`crate::align`]), loaded when a
    /// job first needs alignment.
    pub detector: PathBuf,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            limits: ImageLimits::default(),
            decode_memory: DEFAULT_DECODE_MEMORY,
            max_batch: DEFAULT_MAX_BATCH,
            ffmpeg: PathBuf::from("ffmpeg"),
            detector: crate::align::default_detector_path(),
        }
    }
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The spec is invalid.
    #[error("invalid job spec: {0}")]
    Spec(#[from] SpecError),

    /// An input photo was refused.
    #[error(transparent)]
    Input(#[from] InputError),

    /// An input photo has no usable face, or the detector is missing.
    #[error(transparent)]
    Align(#[from] AlignError),

    /// The attribute directions are missing a name, mismatched or unreadable.
    #[error(transparent)]
    Directions(#[from] DirectionsError),

    /// An edit was asked of a renderer without directions.
    #[error(
        "a {kind} job needs the model's attribute directions; compute them with `glow directions`"
    )]
    NoDirections {
        /// The job kind.
        kind: &'static str,
    },

    /// The model failed.
    #[error(transparent)]
    Model(#[from] GlowError),

    /// A PNG or GIF could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),

    /// The MP4 could not be made.
    #[error(transparent)]
    Video(#[from] VideoError),

    /// The output folder or report could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// [`RenderHooks::should_cancel`] asked to stop.
    #[error("the render was cancelled")]
    Cancelled,

    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Faces per decode batch for `config` within `memory` bytes, at most
/// `max_batch` and at least one. It depends only on its arguments, never on
/// free memory at the time, so that a job renders the same way every time.
pub fn decode_batch_size(config: &GlowConfig, memory: u64, max_batch: usize) -> usize {
    let half = (config.image_size / 2).max(1) as u64;
    let hidden = LIVE_HIDDEN_MAPS * config.width as u64 * half * half;
    let images = LIVE_IMAGE_COPIES * config.dims() as u64;
    let per_image = (hidden + images) * std::mem::size_of::<f32>() as u64;
    usize::try_from(memory / per_image.max(1))
        .unwrap_or(usize::MAX)
        .clamp(1, max_batch.max(1))
}

/// Renders jobs with one loaded model (and its directions, for edits).
pub struct Renderer<'a> {
    model: &'a Glow,
    model_sha256: String,
    directions: Option<&'a Directions>,
    config: RenderConfig,
    /// The face detector, loaded on the model's device by the first job
    /// that aligns a photo.
    aligner: OnceCell<Aligner>,
}

fn check_cancel(hooks: &dyn RenderHooks) -> Result<(), RenderError> {
    if hooks.should_cancel() {
        return Err(RenderError::Cancelled);
    }
    Ok(())
}

impl<'a> Renderer<'a> {
    /// A renderer for `model`, whose file has sha256 `model_sha256`, with
    /// `directions` computed for that model (see [`Directions::check_model`]).
    pub fn new(
        model: &'a Glow,
        model_sha256: impl Into<String>,
        directions: Option<&'a Directions>,
        config: RenderConfig,
    ) -> Self {
        Self {
            model,
            model_sha256: model_sha256.into(),
            directions,
            config,
            aligner: OnceCell::new(),
        }
    }

    /// Faces decoded per batch by this renderer.
    pub fn decode_batch(&self) -> usize {
        decode_batch_size(
            self.model.config(),
            self.config.decode_memory,
            self.config.max_batch,
        )
    }

    /// Renders `spec` into `out_dir` (created if needed), reading faces from
    /// `inputs`, and writes `report.json` there. On error or cancellation a
    /// partial MP4 is removed; other files already written stay.
    pub fn render(
        &self,
        spec: &JobSpec,
        inputs: &dyn InputSource,
        out_dir: &Path,
        hooks: &dyn RenderHooks,
    ) -> Result<RenderReport, RenderError> {
        let started = Instant::now();
        spec.validate()?;
        let formats = spec.formats();
        if formats.contains(&Format::Mp4) {
            video::check_encoder(&self.config.ffmpeg)?;
        }
        let edit = self.edit_vector(&spec.operation)?;
        std::fs::create_dir_all(out_dir).map_err(|source| RenderError::Io {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let mut timings = Timings::default();

        hooks.stage(Stage::ReadInputs);
        let (photos, faces_found) =
            timed(&mut timings.read_inputs, || self.read_faces(spec, inputs))?;
        check_cancel(hooks)?;

        hooks.stage(Stage::Encode);
        let (faces, samples) = timed(&mut timings.encode, || self.encode(spec, &photos))?;
        hooks.progress(PROGRESS_ENCODED);
        check_cancel(hooks)?;

        let plan = plan::build(&spec.operation, &faces, edit.as_ref(), samples.as_ref());
        tracing::info!(
            kind = spec.kind(),
            frames = plan.frames.len(),
            tiles = plan.tiles.len(),
            batch = self.decode_batch(),
            "decoding"
        );
        hooks.stage(Stage::Decode);
        let tiles = self.decode(&plan, hooks, &mut timings)?;

        hooks.stage(Stage::Write);
        let mut writer = Writer {
            spec,
            plan: &plan,
            tiles: &tiles,
            out_dir,
            formats: &formats,
            timings: &mut timings,
            outputs: Vec::new(),
        };
        let (played, frame_size) = if plan.animated {
            writer.animation(&self.config.ffmpeg, hooks)?
        } else {
            writer.stills(hooks)?
        };
        writer.contact_sheet()?;
        let outputs = writer.outputs;
        hooks.progress(1.0);
        timings.total = started.elapsed().as_secs_f64();
        tracing::info!(
            kind = spec.kind(),
            played,
            seconds = timings.total,
            out = %out_dir.display(),
            "rendered"
        );

        let report = RenderReport {
            spec: spec.clone(),
            kind: spec.kind().to_string(),
            model_sha256: self.model_sha256.clone(),
            seed: spec.seed,
            frames: FrameCounts {
                rendered: plan.frames.len(),
                played,
                tiles_decoded: plan.tiles.len(),
            },
            frame_size,
            fps: spec.output.fps,
            outputs,
            device: crate::device::describe(self.model.device()),
            decode_batch: self.decode_batch(),
            faces: faces_found,
            timings,
            glowline_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let path = out_dir.join(REPORT_FILE);
        let json = serde_json::to_string_pretty(&report).expect("reports serialize");
        std::fs::write(&path, json + "\n").map_err(|source| RenderError::Io { path, source })?;
        Ok(report)
    }

    /// The latent offset of an edit (the sum of its attributes) or of an
    /// edit sweep's far end (`strength * d`); `None` for other operations.
    fn edit_vector(&self, operation: &Operation) -> Result<Option<Tensor>, RenderError> {
        let needs = matches!(
            operation,
            Operation::Edit { .. } | Operation::EditSweep { .. }
        );
        if !needs {
            return Ok(None);
        }
        let directions = self.directions.ok_or(RenderError::NoDirections {
            kind: operation.kind(),
        })?;
        if directions.latent_dim() != self.model.latent_dim() {
            return Err(DirectionsError::DimensionMismatch {
                table: directions.latent_dim(),
                model: self.model.latent_dim(),
            }
            .into());
        }
        let vector = match operation {
            Operation::Edit { attributes, .. } => directions.edit_vector(attributes)?,
            Operation::EditSweep {
                attribute,
                strength,
                ..
            } => directions.vector(attribute)? * *strength,
            _ => unreachable!("only edits reach here"),
        };
        Ok(Some(vector.to_device(self.model.device())))
    }

    /// The input photos, decoded, aligned unless the spec skips it, and
    /// cropped to the model's size, as uint8 `[K, 3, S, S]` in the order of
    /// [`JobSpec::inputs`]; with the faces found in each aligned photo.
    fn read_faces(
        &self,
        spec: &JobSpec,
        inputs: &dyn InputSource,
    ) -> Result<(Vec<Tensor>, Vec<InputFaces>), RenderError> {
        let size = self.model.config().image_size;
        let mut faces = Vec::new();
        let mut found = Vec::new();
        for reference in spec.inputs() {
            let bytes = inputs.read(reference)?;
            let photo = decode_image(&bytes, reference, &self.config.limits)?;
            if spec.alignment.skip {
                faces.push(face_tensor(&photo, size));
                continue;
            }
            let choice = spec.face_choice(reference).map(|i| i as usize);
            let aligned = self.aligner()?.align(&photo, choice, reference)?;
            tracing::info!(
                input = reference,
                faces = aligned.faces.len(),
                chosen = aligned.chosen,
                scale = aligned.transform.scale(),
                degrees = aligned.transform.degrees(),
                "aligned"
            );
            faces.push(face_tensor(&aligned.image, size));
            found.push(InputFaces {
                input: reference.to_string(),
                found: aligned.faces.len(),
                used: aligned.chosen,
            });
        }
        Ok((faces, found))
    }

    /// The face detector, loaded on first use.
    fn aligner(&self) -> Result<&Aligner, AlignError> {
        if let Some(aligner) = self.aligner.get() {
            return Ok(aligner);
        }
        let loaded = Aligner::load(&self.config.detector, self.model.device())?;
        Ok(self.aligner.get_or_init(|| loaded))
    }

    /// Latents of the input faces `[K, D]` and, for a sample job, the drawn
    /// latents.
    fn encode(
        &self,
        spec: &JobSpec,
        photos: &[Tensor],
    ) -> Result<(Tensor, Option<Tensor>), RenderError> {
        let faces = if photos.is_empty() {
            Tensor::zeros(
                [0, self.model.latent_dim()],
                (tch::Kind::Float, self.model.device()),
            )
        } else {
            self.model.encode_images(&Tensor::stack(photos, 0))?
        };
        let samples = match spec.operation {
            Operation::Sample { count, temperature } => Some(self.model.sample_latents(
                i64::from(count),
                temperature,
                spec.seed,
            )),
            _ => None,
        };
        Ok((faces, samples))
    }

    /// Every distinct tile of the plan at the model's size, decoded in batches.
    fn decode(
        &self,
        plan: &Plan,
        hooks: &dyn RenderHooks,
        timings: &mut Timings,
    ) -> Result<Vec<RgbImage>, RenderError> {
        let batch = self.decode_batch();
        let total = plan.tiles.len().max(1) as f32;
        let mut tiles = Vec::with_capacity(plan.tiles.len());
        for chunk in plan.tiles.chunks(batch) {
            check_cancel(hooks)?;
            let images = timed(&mut timings.decode, || {
                self.model
                    .decode_images(&plan::tile_latents(&plan.anchors, chunk))
            })?;
            for i in 0..chunk.len() as i64 {
                tiles.push(tensor_to_image(&images.get(i)));
            }
            let done = tiles.len() as f32 / total;
            hooks.progress(PROGRESS_ENCODED + (PROGRESS_DECODED - PROGRESS_ENCODED) * done);
        }
        Ok(tiles)
    }
}

/// The writing stage of one render.
struct Writer<'r> {
    spec: &'r JobSpec,
    plan: &'r Plan,
    tiles: &'r [RgbImage],
    out_dir: &'r Path,
    formats: &'r BTreeSet<Format>,
    timings: &'r mut Timings,
    /// Files written so far, relative to `out_dir`.
    outputs: Vec<String>,
}

impl Writer<'_> {
    /// Frame `index` with each face `size` px wide.
    fn frame(&mut self, index: usize, size: u32) -> RgbImage {
        let tiles: Vec<&RgbImage> = self.plan.frames[index]
            .iter()
            .map(|&t| &self.tiles[t])
            .collect();
        let layout = self.plan.layout;
        timed(&mut self.timings.compose, || compose(&tiles, layout, size))
    }

    fn png(&mut self, image: &RgbImage, name: String) -> Result<(), RenderError> {
        let path = self.out_dir.join(&name);
        timed(&mut self.timings.png, || write_png(image, &path))?;
        self.outputs.push(name);
        Ok(())
    }

    /// The stills of an edit, a mix or a sample job. Returns the number of
    /// images and their size.
    fn stills(&mut self, hooks: &dyn RenderHooks) -> Result<(usize, [u32; 2]), RenderError> {
        let size = self.spec.output.size;
        let n = self.plan.frames.len();
        if self.formats.contains(&Format::Png) {
            for index in 0..n {
                check_cancel(hooks)?;
                let image = self.frame(index, size);
                let name = match self.spec.operation {
                    Operation::Sample { .. } => format!("sample_{index:02}.png"),
                    _ => RESULT_FILE.to_string(),
                };
                self.png(&image, name)?;
                hooks.progress(
                    PROGRESS_DECODED + (1.0 - PROGRESS_DECODED) * (index + 1) as f32 / n as f32,
                );
            }
        }
        Ok((n, [size, size]))
    }

    /// The GIF, MP4 and frame PNGs of an animation, frame by frame in
    /// playing order (a loop plays the frames back). Returns the number of
    /// frames played and the frame size.
    fn animation(
        &mut self,
        ffmpeg: &Path,
        hooks: &dyn RenderHooks,
    ) -> Result<(usize, [u32; 2]), RenderError> {
        let output = &self.spec.output;
        let size = output.size;
        let Layout { columns, rows } = self.plan.layout;
        let (width, height) = (columns * size, rows * size);
        let order: Vec<usize> = if output.loop_playback {
            playback_order(self.plan.sequence.len(), output.loop_hold)
                .into_iter()
                .map(|i| self.plan.sequence[i])
                .collect()
        } else {
            self.plan.sequence.clone()
        };

        let mut gif = match self.formats.contains(&Format::Gif) {
            true => Some(GifWriter::create(&self.out_dir.join(GIF_FILE), output.fps)?),
            false => None,
        };
        // Dropping an unfinished writer stops ffmpeg and removes the partial file.
        let mut mp4 = match self.formats.contains(&Format::Mp4) {
            true => Some(Mp4Writer::create(
                ffmpeg,
                &self.out_dir.join(MP4_FILE),
                width,
                height,
                output.fps,
            )?),
            false => None,
        };
        let frames = self.formats.contains(&Format::Frames);
        if frames {
            let dir = self.out_dir.join(FRAMES_DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|source| RenderError::Io { path: dir, source })?;
        }

        let mut written = vec![false; self.plan.frames.len()];
        let mut last: Option<(usize, RgbImage)> = None;
        for (k, &index) in order.iter().enumerate() {
            check_cancel(hooks)?;
            let image = match last.take() {
                Some((shown, image)) if shown == index => image,
                _ => self.frame(index, size),
            };
            if frames && !written[index] {
                self.png(&image, format!("{FRAMES_DIR}/frame_{index:04}.png"))?;
                written[index] = true;
            }
            if let Some(gif) = gif.as_mut() {
                timed(&mut self.timings.gif, || gif.push(&image))?;
            }
            if let Some(mp4) = mp4.as_mut() {
                timed(&mut self.timings.mp4, || mp4.push(&image))?;
            }
            last = Some((index, image));
            let done = (k + 1) as f32 / order.len() as f32;
            hooks.progress(PROGRESS_DECODED + (1.0 - PROGRESS_DECODED) * 0.95 * done);
        }

        if let Some(gif) = gif {
            timed(&mut self.timings.gif, || gif.finish())?;
            self.outputs.push(GIF_FILE.to_string());
        }
        if let Some(mp4) = mp4 {
            timed(&mut self.timings.mp4, || mp4.finish())?;
            self.outputs.push(MP4_FILE.to_string());
        }
        Ok((order.len(), [width, height]))
    }

    /// The contact sheet, when asked for: the stills, or up to 64 frames
    /// evenly picked, each about one output face wide.
    fn contact_sheet(&mut self) -> Result<(), RenderError> {
        if !self.formats.contains(&Format::ContactSheet) {
            return Ok(());
        }
        let Layout { columns, rows } = self.plan.layout;
        let cell_face = (self.spec.output.size / columns.max(rows)).max(1);
        let cells: Vec<RgbImage> = sheet_picks(self.plan.frames.len())
            .into_iter()
            .map(|index| self.frame(index, cell_face))
            .collect();
        let sheet = timed(&mut self.timings.compose, || {
            contact_sheet(&cells, self.spec.output.sheet_columns)
        });
        self.png(&sheet, CONTACT_SHEET_FILE.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_batches_follow_the_memory_budget() {
        let config = GlowConfig::default();
        assert_eq!(decode_batch_size(&config, 0, 64), 1);
        assert_eq!(decode_batch_size(&config, u64::MAX, 64), 64);
        let small = decode_batch_size(&config, 32 * 1024 * 1024, 64);
        let large = decode_batch_size(&config, 64 * 1024 * 1024, 64);
        assert!(1 < small && small < large && large < 64, "{small} {large}");
    }
}
