//! The job spec: one JSON document that says what to render, read the same
//! way by `glow render job.json` on a laptop and by a worker off the queue.
//!
//! A spec names its `version` (currently [`SPEC_VERSION`]), one
//! [`Operation`] (edit, edit sweep, mix, mix sweep, morph chain, nine-way
//! morph, sample, or a probe that renders nothing), the [`OutputOptions`], the [`AlignmentOptions`] (skip
//! face alignment, or pick a face in a group photo) and a seed. Faces are referenced
//! by opaque strings: a path relative to the spec file when rendering
//! locally, an object key when a worker resolves it; resolving them is the
//! caller's business, never this crate's. Every number is bounded and every
//! attribute name checked by [`JobSpec::validate`], so that a spec accepted
//! here cannot ask the renderer for something it cannot do.
//!
//! ```json
//! {
//!   "version": 1,
//!   "operation": { "kind": "edit", "input": "face.jpg",
//!                  "attributes": { "smiling": 1.0, "age": -0.5 } },
//!   "output": { "size": 256 },
//!   "seed": 0
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The spec version this build reads and writes. A change that an older
/// reader would misread (a renamed field, a new meaning) bumps it.
pub const SPEC_VERSION: u32 = 1;

/// The 40 CelebA attributes, in the order of `list_attr_celeba.txt`; an
/// attribute's index here is its index in every direction table.
pub const CELEBA_ATTRIBUTES: [&str; 40] = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
];

/// A user-facing slider name for a CelebA attribute, possibly reversed so
/// that a positive strength reads naturally ("more age" is "less Young").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// The name users write in a spec.
    pub name: &'static str,
    /// The official CelebA attribute it moves along.
    pub attribute: &'static str,
    /// Whether a positive strength moves towards the attribute's negatives.
    pub negated: bool,
}

/// The five sliders of the face editor.
pub const ATTRIBUTE_ALIASES: [Alias; 5] = [
    Alias {
        name: "smiling",
        attribute: "Smiling",
        negated: false,
    },
    Alias {
        name: "age",
        attribute: "Young",
        negated: true,
    },
    Alias {
        name: "blond_hair",
        attribute: "Blond_Hair",
        negated: false,
    },
    Alias {
        name: "beard",
        attribute: "No_Beard",
        negated: true,
    },
    Alias {
        name: "narrow_eyes",
        attribute: "Narrow_Eyes",
        negated: false,
    },
];

/// Most faces a morph chain may pass through; more would make a video long
/// enough to belong to a batch of chains instead.
pub const MAX_CHAIN_FACES: usize = 10;
/// Fewest faces a morph chain needs: one leg from a face to another.
pub const MIN_CHAIN_FACES: usize = 2;
/// Most targets of a nine-way morph: one per tile of its 3x3 grid.
pub const MAX_TARGETS: usize = 9;
/// Most frames in one sweep or one morph leg: 25 s at 24 fps, beyond
/// which steps between frames are too small to see.
pub const MAX_FRAMES: u32 = 600;
/// Most frames one job may render, loop included: keeps a job's output and
/// render time bounded (a few minutes on a CPU worker at the default size).
pub const MAX_TOTAL_FRAMES: u64 = 3000;
/// Most frames a hold (at a chain face, or at the turns of a loop) lasts.
pub const MAX_HOLD_FRAMES: u32 = 240;
/// Smallest output face in pixels: below this a face is unrecognisable.
pub const MIN_SIZE: u32 = 16;
/// Largest output face in pixels: sixteen times the 64 px model, past
/// which upscaling only adds bytes (a nine-way grid is three faces wide).
pub const MAX_SIZE: u32 = 1024;
/// Highest frame rate: browsers and GIF players do not show more.
pub const MAX_FPS: u32 = 60;
/// Largest strength of an attribute edit. A strength of 1.0 is one full
/// positive-minus-negative mean difference; ten of them leave the faces the
/// model knows, so larger values are surely typos.
pub const MAX_STRENGTH: f64 = 10.0;
/// Highest sampling temperature: above 1.0 samples are noisier than the
/// model's own prior, and by 2.0 they are no longer faces.
pub const MAX_TEMPERATURE: f64 = 2.0;
/// Most faces one sample job draws; a contact sheet of more is unreadable.
pub const MAX_SAMPLES: u32 = 64;
/// Most columns of a contact sheet, matching the most tiles it can hold.
pub const MAX_SHEET_COLUMNS: u32 = 64;
/// Highest face number a spec may pick in a photo: in a group of more than
/// a hundred detected faces each is too small to be worth editing.
pub const MAX_FACE_INDEX: u32 = 99;

/// Where a name given in a spec points in the direction table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeRef {
    /// Index into [`CELEBA_ATTRIBUTES`].
    pub index: usize,
    /// True when a positive strength moves against the attribute (`age`).
    pub negated: bool,
}

impl AttributeRef {
    /// The multiplier to apply to the attribute's direction: -1 or 1.
    pub fn sign(&self) -> f64 {
        if self.negated {
            -1.0
        } else {
            1.0
        }
    }

    /// The official CelebA name this reference moves along.
    pub fn attribute(&self) -> &'static str {
        CELEBA_ATTRIBUTES[self.index]
    }
}

/// Looks up an official CelebA attribute name (exact spelling) or one of the
/// [`ATTRIBUTE_ALIASES`].
pub fn resolve_attribute(name: &str) -> Option<AttributeRef> {
    if let Some(alias) = ATTRIBUTE_ALIASES.iter().find(|a| a.name == name) {
        let index = attribute_index(alias.attribute)?;
        return Some(AttributeRef {
            index,
            negated: alias.negated,
        });
    }
    attribute_index(name).map(|index| AttributeRef {
        index,
        negated: false,
    })
}

fn attribute_index(name: &str) -> Option<usize> {
    CELEBA_ATTRIBUTES.iter().position(|a| *a == name)
}

/// A close spelling for an unknown attribute name, compared case- and
/// separator-blind (`blond hair` -> `blond_hair`, `eyeglasses` -> `Eyeglasses`).
fn suggest_attribute(name: &str) -> Option<&'static str> {
    let fold = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    let wanted = fold(name);
    ATTRIBUTE_ALIASES
        .iter()
        .map(|a| a.name)
        .chain(CELEBA_ATTRIBUTES)
        .find(|candidate| fold(candidate) == wanted)
}

/// Why a job spec was rejected. Each message names the field and the value
/// at fault and says what would be accepted.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The text is not JSON, or its shape does not match the spec type
    /// (unknown field, missing field, wrong type, unknown operation kind).
    #[error("job spec does not match version {SPEC_VERSION}: {0}")]
    Json(#[from] serde_json::Error),

    /// The document has no `version` field or one that is not an integer.
    #[error("job spec has no integer `version` field; this build reads version {SPEC_VERSION}")]
    MissingVersion,

    /// The document was written for another version of the spec.
    #[error("job spec version {found} is not supported; this build reads version {SPEC_VERSION}")]
    UnsupportedVersion {
        /// The version the document states.
        found: u64,
    },

    /// An attribute name that is neither an official CelebA name nor an alias.
    #[error(
        "{field}: unknown attribute `{name}`{}; use one of the 40 CelebA names \
         (such as Smiling or Eyeglasses) or a slider (smiling, age, blond_hair, beard, narrow_eyes)",
        suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    UnknownAttribute {
        /// Where in the spec the name appears.
        field: String,
        /// The name as written.
        name: String,
        /// A known name spelled the same up to case and separators.
        suggestion: Option<&'static str>,
    },

    /// A NaN or infinite number (possible in a spec built in code; JSON has
    /// no way to write one).
    #[error("{field} is {value}; it must be a finite number")]
    NotFinite {
        /// Where in the spec the number appears.
        field: String,
        /// The number as given.
        value: f64,
    },

    /// A number outside its allowed range.
    #[error("{field} is {value}; it must be from {min} to {max}")]
    OutOfRange {
        /// Where in the spec the number appears.
        field: String,
        /// The number as given.
        value: f64,
        /// The smallest accepted value.
        min: f64,
        /// The largest accepted value.
        max: f64,
    },

    /// A face reference that is empty or only whitespace.
    #[error("{field} is empty; it must name an input image")]
    EmptyInput {
        /// Where in the spec the reference appears.
        field: String,
    },

    /// An edit that changes nothing.
    #[error("operation.attributes is empty; an edit needs at least one attribute with a strength")]
    NoAttributes,

    /// A morph chain with too few or too many faces.
    #[error(
        "operation.faces lists {count} faces; a morph chain goes through \
         {MIN_CHAIN_FACES} to {MAX_CHAIN_FACES} faces"
    )]
    ChainLength {
        /// How many faces the spec lists.
        count: usize,
    },

    /// A nine-way morph with no targets or more than fit its grid.
    #[error(
        "operation.targets lists {count} faces; a nine-way morph takes 1 to \
         {MAX_TARGETS} targets, one per tile of its 3x3 grid"
    )]
    TargetCount {
        /// How many targets the spec lists.
        count: usize,
    },

    /// An output format the operation cannot produce.
    #[error("output.formats: `{format}` does not apply to a {kind} job: {reason}")]
    FormatNotApplicable {
        /// The requested format.
        format: Format,
        /// The operation kind.
        kind: &'static str,
        /// What the format needs.
        reason: &'static str,
    },

    /// An MP4 with an odd side, which H.264's 4:2:0 chroma cannot halve.
    #[error("output.size is {size}; MP4 output needs an even size (4:2:0 video halves it)")]
    OddVideoSize {
        /// The requested size.
        size: u32,
    },

    /// Looping was asked of an operation that makes still images.
    #[error("output.loop: a {kind} job makes still images, which cannot loop")]
    LoopOnStill {
        /// The operation kind.
        kind: &'static str,
    },

    /// A face was picked in photos the spec says not to align.
    #[error(
        "alignment.faces picks faces, but alignment.skip is true; a face can \
         only be picked in a photo that is aligned"
    )]
    FaceChoiceWithoutAlignment,

    /// A face was picked in a photo the operation does not use.
    #[error("{field}: the operation has no input by that name; pick faces only in its inputs")]
    FaceChoiceForUnknownInput {
        /// Where in the spec the choice appears.
        field: String,
    },

    /// The whole job, loop included, would render too many frames.
    #[error(
        "the {kind} job would render {frames} frames (loop included); at most \
         {MAX_TOTAL_FRAMES} are allowed, so lower the frame or hold counts"
    )]
    TooManyFrames {
        /// The operation kind.
        kind: &'static str,
        /// How many frames it would render.
        frames: u64,
    },
}

/// One render job: what to make, how to write it, and the seed that makes
/// it reproducible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The spec version the document was written for; must be [`SPEC_VERSION`].
    pub version: u32,
    /// What to render.
    pub operation: Operation,
    /// Output size, frame rate, formats and looping; all have defaults.
    #[serde(default)]
    pub output: OutputOptions,
    /// Seed for everything random in the job (the latents of `sample`).
    /// Encoding and decoding are deterministic, so the same inputs, spec
    /// and seed give byte-identical PNGs.
    #[serde(default)]
    pub seed: u64,
    /// Whether input photos are aligned, and which face of a group photo
    /// to use; by default every photo is aligned on its largest face.
    #[serde(default, skip_serializing_if = "AlignmentOptions::is_default")]
    pub alignment: AlignmentOptions,
}

/// How input photos are brought to the framing the model was trained on.
///
/// By default the renderer finds the faces in each photo and warps the
/// largest one to the training framing. A photo with several faces can name
/// another one; faces are numbered from 0, left to right (by the centre of
/// each face), as the render report lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignmentOptions {
    /// Take the photos as already aligned (CelebA's aligned crops, or the
    /// output of an earlier job) and only crop them: no face detection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip: bool,
    /// Input reference to the number of the face to use in that photo.
    /// Photos not listed use their largest face.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub faces: BTreeMap<String, u32>,
}

impl AlignmentOptions {
    /// Whether these are the defaults (written nowhere in a spec's JSON).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The operations Glowline renders. Each face is an opaque input reference.
///
/// Strengths are in units of an attribute's direction: 1.0 moves a face's
/// latent by one full mean(positives) - mean(negatives) difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// One face with any set of attribute edits; the edits add up.
    Edit {
        /// The face to edit.
        input: String,
        /// Attribute or slider name to strength.
        attributes: BTreeMap<String, f64>,
    },

    /// One face moved along one attribute from `-strength` to `+strength`.
    EditSweep {
        /// The face to edit.
        input: String,
        /// Attribute or slider name.
        attribute: String,
        /// The largest strength reached at either end.
        strength: f64,
        /// Frames from one end to the other, both included.
        frames: u32,
    },

    /// Two faces mixed in latent space.
    Mix {
        /// The face at `alpha = 0`.
        from: String,
        /// The face at `alpha = 1`.
        to: String,
        /// How far from `from` towards `to`, in [0, 1].
        alpha: f64,
    },

    /// The mix of two faces swept from `alpha = 0` to `alpha = 1`.
    MixSweep {
        /// The face at the first frame.
        from: String,
        /// The face at the last frame.
        to: String,
        /// Frames from the first face to the second, both included.
        frames: u32,
    },

    /// A morph through several faces in turn (A to B to C ...).
    MorphChain {
        /// The faces, in order.
        faces: Vec<String>,
        /// Frames of each leg, counting its start face but not its end face
        /// (which starts the next leg); the last face closes the video.
        frames_per_leg: u32,
        /// Extra frames each face is held for when the morph reaches it.
        #[serde(default)]
        hold: u32,
    },

    /// One base face turning into up to nine targets at once, tile `i` of a
    /// 3x3 grid going from the base to target `i`.
    NineWayMorph {
        /// The face every tile starts from.
        base: String,
        /// One target per tile, filled row by row.
        targets: Vec<String>,
        /// Frames from the base to the targets, both included.
        frames: u32,
    },

    /// Random faces drawn from the model's prior at a temperature.
    Sample {
        /// How many faces to draw.
        count: u32,
        /// Standard deviation of the prior relative to the trained one;
        /// 0.7 is the Glow paper's choice for clean faces.
        temperature: f64,
    },

    /// Nothing to render: a worker answers a probe without the model and
    /// writes only its report. A probe that succeeds shows that the whole
    /// job system works (submission, dispatch, a worker's claim, S3, the
    /// terminal status); its timings are the plumbing's own cost.
    Probe {},
}

/// How the results are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputOptions {
    /// Side of one output face in pixels; the model's faces are upscaled to
    /// it. A nine-way morph's grid is three faces wide.
    pub size: u32,
    /// Frames per second of the GIF and MP4.
    pub fps: u32,
    /// What to write; empty means the operation's default
    /// (see [`JobSpec::formats`]).
    pub formats: BTreeSet<Format>,
    /// Play animations forward, hold, backward, hold, so they loop smoothly.
    #[serde(rename = "loop")]
    pub loop_playback: bool,
    /// Frames of each hold at the turns of a loop.
    pub loop_hold: u32,
    /// Columns of the contact sheet; `None` lays it out as square as it can.
    pub sheet_columns: Option<u32>,
}

/// Default side of an output face: four times the 64 px model, enough to
/// see a face on a page without making videos heavy.
pub const DEFAULT_SIZE: u32 = 256;
/// Default frame rate: film's rate, smooth for morphs.
pub const DEFAULT_FPS: u32 = 24;
/// Default hold at the turns of a loop: half a second at the default rate.
pub const DEFAULT_LOOP_HOLD: u32 = 12;

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            size: DEFAULT_SIZE,
            fps: DEFAULT_FPS,
            formats: BTreeSet::new(),
            loop_playback: false,
            loop_hold: DEFAULT_LOOP_HOLD,
            sheet_columns: None,
        }
    }
}

/// An output a job can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Still results as PNG: the edited or mixed face, or each sample.
    Png,
    /// Every frame of an animation as its own PNG.
    Frames,
    /// One PNG grid of the results or of (up to 64) animation frames.
    ContactSheet,
    /// An animated GIF.
    Gif,
    /// An H.264 MP4 (yuv420p, fast start) that browsers play.
    Mp4,
}

impl Format {
    /// The name used in specs.
    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Frames => "frames",
            Format::ContactSheet => "contact_sheet",
            Format::Gif => "gif",
            Format::Mp4 => "mp4",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind names of all operations, as [`Operation::kind`] returns them.
pub const KINDS: [&str; 8] = [
    "edit",
    "edit_sweep",
    "mix",
    "mix_sweep",
    "morph_chain",
    "nine_way_morph",
    "sample",
    "probe",
];

impl Operation {
    /// The job kind: the operation's `kind` tag in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Edit { .. } => "edit",
            Operation::EditSweep { .. } => "edit_sweep",
            Operation::Mix { .. } => "mix",
            Operation::MixSweep { .. } => "mix_sweep",
            Operation::MorphChain { .. } => "morph_chain",
            Operation::NineWayMorph { .. } => "nine_way_morph",
            Operation::Sample { .. } => "sample",
            Operation::Probe {} => "probe",
        }
    }

    /// Whether the operation makes an animation (as opposed to still images).
    pub fn is_animation(&self) -> bool {
        !matches!(
            self,
            Operation::Edit { .. }
                | Operation::Mix { .. }
                | Operation::Sample { .. }
                | Operation::Probe {}
        )
    }

    /// The input references in the order the operation uses them.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Operation::Edit { input, .. } | Operation::EditSweep { input, .. } => vec![input],
            Operation::Mix { from, to, .. } | Operation::MixSweep { from, to, .. } => {
                vec![from, to]
            }
            Operation::MorphChain { faces, .. } => faces.iter().map(String::as_str).collect(),
            Operation::NineWayMorph { base, targets, .. } => std::iter::once(base.as_str())
                .chain(targets.iter().map(String::as_str))
                .collect(),
            Operation::Sample { .. } | Operation::Probe {} => Vec::new(),
        }
    }

    /// Images the operation produces before any loop: one per still result
    /// or one per animation frame.
    pub fn image_count(&self) -> u64 {
        match self {
            Operation::Edit { .. } | Operation::Mix { .. } => 1,
            Operation::Sample { count, .. } => u64::from(*count),
            Operation::Probe {} => 0,
            Operation::EditSweep { frames, .. }
            | Operation::MixSweep { frames, .. }
            | Operation::NineWayMorph { frames, .. } => u64::from(*frames),
            Operation::MorphChain {
                faces,
                frames_per_leg,
                hold,
            } => {
                let faces = faces.len() as u64;
                faces.saturating_sub(1) * u64::from(*frames_per_leg) + 1 + faces * u64::from(*hold)
            }
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        for (field, input) in self.input_fields() {
            if input.trim().is_empty() {
                return Err(SpecError::EmptyInput { field });
            }
        }
        match self {
            Operation::Edit { attributes, .. } => {
                if attributes.is_empty() {
                    return Err(SpecError::NoAttributes);
                }
                for (name, strength) in attributes {
                    let field = format!("operation.attributes.{name}");
                    check_attribute(&field, name)?;
                    check_range(&field, *strength, -MAX_STRENGTH, MAX_STRENGTH)?;
                }
            }
            Operation::EditSweep {
                attribute,
                strength,
                frames,
                ..
            } => {
                check_attribute("operation.attribute", attribute)?;
                check_range("operation.strength", *strength, -MAX_STRENGTH, MAX_STRENGTH)?;
                check_count("operation.frames", *frames, 2, MAX_FRAMES)?;
            }
            Operation::Mix { alpha, .. } => check_range("operation.alpha", *alpha, 0.0, 1.0)?,
            Operation::MixSweep { frames, .. } => {
                check_count("operation.frames", *frames, 2, MAX_FRAMES)?
            }
            Operation::MorphChain {
                faces,
                frames_per_leg,
                hold,
            } => {
                if !(MIN_CHAIN_FACES..=MAX_CHAIN_FACES).contains(&faces.len()) {
                    return Err(SpecError::ChainLength { count: faces.len() });
                }
                check_count("operation.frames_per_leg", *frames_per_leg, 1, MAX_FRAMES)?;
                check_count("operation.hold", *hold, 0, MAX_HOLD_FRAMES)?;
            }
            Operation::NineWayMorph {
                targets, frames, ..
            } => {
                if !(1..=MAX_TARGETS).contains(&targets.len()) {
                    return Err(SpecError::TargetCount {
                        count: targets.len(),
                    });
                }
                check_count("operation.frames", *frames, 2, MAX_FRAMES)?;
            }
            Operation::Sample { count, temperature } => {
                check_count("operation.count", *count, 1, MAX_SAMPLES)?;
                check_range("operation.temperature", *temperature, 0.0, MAX_TEMPERATURE)?;
            }
            Operation::Probe {} => {}
        }
        Ok(())
    }

    /// Each input reference with the field it sits in, for error messages.
    fn input_fields(&self) -> Vec<(String, &str)> {
        match self {
            Operation::Edit { input, .. } | Operation::EditSweep { input, .. } => {
                vec![("operation.input".into(), input)]
            }
            Operation::Mix { from, to, .. } | Operation::MixSweep { from, to, .. } => vec![
                ("operation.from".into(), from.as_str()),
                ("operation.to".into(), to.as_str()),
            ],
            Operation::MorphChain { faces, .. } => faces
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("operation.faces[{i}]"), f.as_str()))
                .collect(),
            Operation::NineWayMorph { base, targets, .. } => {
                std::iter::once(("operation.base".to_string(), base.as_str()))
                    .chain(
                        targets
                            .iter()
                            .enumerate()
                            .map(|(i, t)| (format!("operation.targets[{i}]"), t.as_str())),
                    )
                    .collect()
            }
            Operation::Sample { .. } | Operation::Probe {} => Vec::new(),
        }
    }
}

impl JobSpec {
    /// Parses and validates a spec. The version is checked before the shape,
    /// so a document from a newer version is rejected for its version rather
    /// than for a field this build does not know.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        Self::from_value(serde_json::from_str(text)?)
    }

    /// Validates a spec already parsed as JSON (as it arrives inside a
    /// queue message), checking the version first like [`JobSpec::from_json`].
    pub fn from_value(value: serde_json::Value) -> Result<Self, SpecError> {
        match value.get("version").and_then(serde_json::Value::as_u64) {
            None => return Err(SpecError::MissingVersion),
            Some(v) if v != u64::from(SPEC_VERSION) => {
                return Err(SpecError::UnsupportedVersion { found: v })
            }
            Some(_) => {}
        }
        let spec: JobSpec = serde_json::from_value(value)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as pretty JSON, as written into reports and queue messages.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a job spec always serializes")
    }

    /// The job kind name, for queues, database rows and logs.
    pub fn kind(&self) -> &'static str {
        self.operation.kind()
    }

    /// The input references, in the order the operation uses them.
    pub fn inputs(&self) -> Vec<&str> {
        self.operation.inputs()
    }

    /// The formats to write: the requested ones, or when none are requested,
    /// PNG for still results and MP4 plus GIF for animations.
    pub fn formats(&self) -> BTreeSet<Format> {
        if !self.output.formats.is_empty() {
            return self.output.formats.clone();
        }
        if self.operation.is_animation() {
            BTreeSet::from([Format::Mp4, Format::Gif])
        } else {
            BTreeSet::from([Format::Png])
        }
    }

    /// The face to use in the photo `reference`: `None` for the largest.
    pub fn face_choice(&self, reference: &str) -> Option<u32> {
        self.alignment.faces.get(reference).copied()
    }

    /// Frames of the played animation: the rendered frames, and with
    /// looping, the way back and the two holds. For still results, the
    /// number of images.
    pub fn played_frames(&self) -> u64 {
        let n = self.operation.image_count();
        if self.output.loop_playback && self.operation.is_animation() {
            playback_len(n, self.output.loop_hold)
        } else {
            n
        }
    }

    /// Checks everything the renderer relies on; see [`SpecError`] for what
    /// is rejected.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(SpecError::UnsupportedVersion {
                found: u64::from(self.version),
            });
        }
        self.operation.validate()?;
        self.validate_alignment()?;
        self.validate_output()
    }

    fn validate_alignment(&self) -> Result<(), SpecError> {
        let alignment = &self.alignment;
        if alignment.skip && !alignment.faces.is_empty() {
            return Err(SpecError::FaceChoiceWithoutAlignment);
        }
        let inputs = self.inputs();
        for (reference, &index) in &alignment.faces {
            let field = format!("alignment.faces.{reference}");
            if !inputs.contains(&reference.as_str()) {
                return Err(SpecError::FaceChoiceForUnknownInput { field });
            }
            check_count(&field, index, 0, MAX_FACE_INDEX)?;
        }
        Ok(())
    }

    fn validate_output(&self) -> Result<(), SpecError> {
        let out = &self.output;
        let kind = self.kind();
        check_count("output.size", out.size, MIN_SIZE, MAX_SIZE)?;
        check_count("output.fps", out.fps, 1, MAX_FPS)?;
        check_count("output.loop_hold", out.loop_hold, 0, MAX_HOLD_FRAMES)?;
        if let Some(columns) = out.sheet_columns {
            check_count("output.sheet_columns", columns, 1, MAX_SHEET_COLUMNS)?;
        }

        let animation = self.operation.is_animation();
        let probe = matches!(self.operation, Operation::Probe {});
        for format in &out.formats {
            let reason = match format {
                _ if probe => Some("a probe renders nothing and writes only its report"),
                Format::Png if animation => {
                    Some("an animation's frames are written by `frames`, its overview by `contact_sheet`")
                }
                Format::Frames | Format::Gif | Format::Mp4 if !animation => {
                    Some("it needs an animation (edit_sweep, mix_sweep, morph_chain or nine_way_morph)")
                }
                _ => None,
            };
            if let Some(reason) = reason {
                return Err(SpecError::FormatNotApplicable {
                    format: *format,
                    kind,
                    reason,
                });
            }
        }
        if out.size % 2 == 1 && self.formats().contains(&Format::Mp4) {
            return Err(SpecError::OddVideoSize { size: out.size });
        }
        if out.loop_playback && !animation {
            return Err(SpecError::LoopOnStill { kind });
        }

        let frames = self.played_frames();
        if frames > MAX_TOTAL_FRAMES {
            return Err(SpecError::TooManyFrames { kind, frames });
        }
        Ok(())
    }
}

/// Length of a looped animation of `n` frames: forward through all `n`,
/// `hold` repeats of the last, backward through the inner `n - 2`, and
/// `hold` repeats of the first, after which playback wraps to the first.
pub fn playback_len(n: u64, hold: u32) -> u64 {
    if n == 0 {
        return 0;
    }
    n + n.saturating_sub(2) + 2 * u64::from(hold)
}

/// The frame indices of a looped animation of `n` frames (see
/// [`playback_len`]): `0..n`, `n-1` held, `n-2` down to `1`, `0` held.
pub fn playback_order(n: usize, hold: u32) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let hold = hold as usize;
    let mut order: Vec<usize> = (0..n).collect();
    order.extend(std::iter::repeat_n(n - 1, hold));
    order.extend((1..n.saturating_sub(1)).rev());
    order.extend(std::iter::repeat_n(0, hold));
    order
}

fn check_attribute(field: &str, name: &str) -> Result<(), SpecError> {
    match resolve_attribute(name) {
        Some(_) => Ok(()),
        None => Err(SpecError::UnknownAttribute {
            field: field.to_string(),
            name: name.to_string(),
            suggestion: suggest_attribute(name),
        }),
    }
}

fn check_range(field: &str, value: f64, min: f64, max: f64) -> Result<(), SpecError> {
    if !value.is_finite() {
        return Err(SpecError::NotFinite {
            field: field.to_string(),
            value,
        });
    }
    if !(min..=max).contains(&value) {
        return Err(SpecError::OutOfRange {
            field: field.to_string(),
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn check_count(field: &str, value: u32, min: u32, max: u32) -> Result<(), SpecError> {
    if !(min..=max).contains(&value) {
        return Err(SpecError::OutOfRange {
            field: field.to_string(),
            value: f64::from(value),
            min: f64::from(min),
            max: f64::from(max),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<JobSpec, SpecError> {
        JobSpec::from_json(json)
    }

    #[test]
    fn a_strength_with_a_long_mantissa_survives_serialization() {
        // Found by the `job_spec` fuzzer: without serde_json's exact float
        // parsing this came back one unit in the last place off.
        let spec = parse(&edit(
            r#"{"narrow_eyes": 1.737777777777777777777777777777777777777777577771777777777770}"#,
        ))
        .unwrap();
        assert_eq!(parse(&spec.to_json()).unwrap(), spec);
    }

    fn edit(attributes: &str) -> String {
        format!(
            r#"{{"version": 1, "operation": {{"kind": "edit", "input": "a.jpg",
                "attributes": {attributes}}}}}"#
        )
    }

    fn nine_way(targets: usize) -> String {
        let targets: Vec<String> = (0..targets).map(|i| format!("\"t{i}.jpg\"")).collect();
        format!(
            r#"{{"version": 1, "operation": {{"kind": "nine_way_morph", "base": "b.jpg",
                "targets": [{}], "frames": 48}}}}"#,
            targets.join(",")
        )
    }

    fn chain(faces: usize) -> String {
        let faces: Vec<String> = (0..faces).map(|i| format!("\"f{i}.jpg\"")).collect();
        format!(
            r#"{{"version": 1, "operation": {{"kind": "morph_chain",
                "faces": [{}], "frames_per_leg": 24}}}}"#,
            faces.join(",")
        )
    }

    fn with_output(output: &str) -> String {
        format!(
            r#"{{"version": 1, "operation": {{"kind": "mix_sweep", "from": "a.jpg",
                "to": "b.jpg", "frames": 10}}, "output": {output}}}"#
        )
    }

    fn message(result: Result<JobSpec, SpecError>) -> String {
        result.expect_err("spec should be rejected").to_string()
    }

    #[test]
    fn every_operation_parses_and_names_its_kind() {
        let specs = [
            (
                edit(r#"{"smiling": 1.0, "age": -0.5, "Eyeglasses": 2}"#),
                "edit",
            ),
            (
                r#"{"version": 1, "operation": {"kind": "edit_sweep", "input": "a.jpg",
                    "attribute": "beard", "strength": 1.5, "frames": 9}}"#
                    .to_string(),
                "edit_sweep",
            ),
            (
                r#"{"version": 1, "operation": {"kind": "mix", "from": "a.jpg",
                    "to": "b.jpg", "alpha": 0.25}}"#
                    .to_string(),
                "mix",
            ),
            (with_output("{}"), "mix_sweep"),
            (chain(3), "morph_chain"),
            (nine_way(9), "nine_way_morph"),
            (
                r#"{"version": 1, "operation": {"kind": "sample", "count": 8,
                    "temperature": 0.7}, "seed": 42}"#
                    .to_string(),
                "sample",
            ),
            (
                r#"{"version": 1, "operation": {"kind": "probe"}}"#.to_string(),
                "probe",
            ),
        ];
        for (json, kind) in specs {
            let spec = parse(&json).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(spec.kind(), kind);
            assert!(KINDS.contains(&kind));
            let again = JobSpec::from_json(&spec.to_json()).unwrap();
            assert_eq!(again, spec, "{kind} round-trips through JSON");
        }
    }

    #[test]
    fn defaults_fill_output_and_seed() {
        let spec = parse(&chain(2)).unwrap();
        assert_eq!(spec.output, OutputOptions::default());
        assert_eq!(spec.seed, 0);
        assert_eq!(spec.formats(), BTreeSet::from([Format::Gif, Format::Mp4]));
        let still = parse(&edit(r#"{"smiling": 1}"#)).unwrap();
        assert_eq!(still.formats(), BTreeSet::from([Format::Png]));
    }

    #[test]
    fn inputs_are_listed_in_use_order() {
        let spec = parse(&nine_way(3)).unwrap();
        assert_eq!(spec.inputs(), ["b.jpg", "t0.jpg", "t1.jpg", "t2.jpg"]);
        let sample = parse(
            r#"{"version": 1, "operation": {"kind": "sample", "count": 2, "temperature": 0.7}}"#,
        )
        .unwrap();
        assert!(sample.inputs().is_empty());
    }

    #[test]
    fn rejects_wrong_and_missing_version() {
        let newer = r#"{"version": 2, "operation": {"kind": "teleport"}}"#;
        assert!(matches!(
            parse(newer),
            Err(SpecError::UnsupportedVersion { found: 2 })
        ));
        assert!(message(parse(newer)).contains("version 2 is not supported"));
        let value: serde_json::Value = serde_json::from_str(newer).unwrap();
        assert!(matches!(
            JobSpec::from_value(value),
            Err(SpecError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            parse(r#"{"operation": {"kind": "sample", "count": 1, "temperature": 0.7}}"#),
            Err(SpecError::MissingVersion)
        ));
        let mut spec = parse(&chain(2)).unwrap();
        spec.version = 0;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::UnsupportedVersion { found: 0 })
        ));
    }

    #[test]
    fn rejects_unknown_fields_at_every_level() {
        let top = r#"{"version": 1, "operation": {"kind": "sample", "count": 1,
            "temperature": 0.7}, "priority": 3}"#;
        assert!(message(parse(top)).contains("unknown field `priority`"));
        let in_operation = r#"{"version": 1, "operation": {"kind": "sample", "count": 1,
            "temperature": 0.7, "colour": "red"}}"#;
        assert!(message(parse(in_operation)).contains("unknown field `colour`"));
        assert!(message(parse(&with_output(r#"{"sise": 128}"#))).contains("unknown field `sise`"));
        let kind = r#"{"version": 1, "operation": {"kind": "teleport"}}"#;
        assert!(message(parse(kind)).contains("unknown variant `teleport`"));
    }

    #[test]
    fn rejects_unknown_attribute_with_a_suggestion() {
        let err = parse(&edit(r#"{"smiling": 1, "Eyeglases": 1}"#)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SpecError::UnknownAttribute { ref name, .. } if name == "Eyeglases"));
        assert!(text.contains("operation.attributes.Eyeglases"), "{text}");
        let hinted = message(parse(&edit(r#"{"Blond Hair": 1}"#)));
        assert!(hinted.contains("did you mean `blond_hair`?"), "{hinted}");
        let sweep = r#"{"version": 1, "operation": {"kind": "edit_sweep", "input": "a.jpg",
            "attribute": "wings", "strength": 1, "frames": 5}}"#;
        assert!(message(parse(sweep)).contains("operation.attribute: unknown attribute `wings`"));
    }

    #[test]
    fn rejects_an_edit_without_attributes() {
        assert!(matches!(parse(&edit("{}")), Err(SpecError::NoAttributes)));
    }

    #[test]
    fn rejects_non_finite_and_huge_strengths() {
        let mut spec = parse(&edit(r#"{"smiling": 1}"#)).unwrap();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            if let Operation::Edit { attributes, .. } = &mut spec.operation {
                attributes.insert("age".into(), bad);
            }
            let err = spec.validate().unwrap_err();
            assert!(matches!(err, SpecError::NotFinite { .. }), "{bad}");
            assert!(err.to_string().contains("operation.attributes.age"));
        }
        let huge = message(parse(&edit(r#"{"smiling": 1e6}"#)));
        assert!(
            huge.contains("operation.attributes.smiling is 1000000"),
            "{huge}"
        );
        assert!(message(parse(&edit(r#"{"smiling": 1e999}"#))).contains("does not match"));
    }

    #[test]
    fn rejects_too_many_targets_and_none() {
        assert!(parse(&nine_way(9)).is_ok());
        let err = parse(&nine_way(10)).unwrap_err();
        assert!(matches!(err, SpecError::TargetCount { count: 10 }));
        assert!(err.to_string().contains("lists 10 faces"));
        assert!(matches!(
            parse(&nine_way(0)),
            Err(SpecError::TargetCount { count: 0 })
        ));
    }

    #[test]
    fn rejects_chains_too_long_or_too_short() {
        assert!(parse(&chain(10)).is_ok());
        assert!(matches!(
            parse(&chain(11)),
            Err(SpecError::ChainLength { count: 11 })
        ));
        assert!(matches!(
            parse(&chain(1)),
            Err(SpecError::ChainLength { count: 1 })
        ));
    }

    #[test]
    fn rejects_zero_and_huge_frame_counts() {
        let sweep = |frames: u32| {
            format!(
                r#"{{"version": 1, "operation": {{"kind": "mix_sweep", "from": "a",
                    "to": "b", "frames": {frames}}}}}"#
            )
        };
        assert!(message(parse(&sweep(0))).contains("operation.frames is 0"));
        assert!(message(parse(&sweep(1))).contains("from 2 to 600"));
        assert!(message(parse(&sweep(100_000))).contains("operation.frames is 100000"));

        let long_chain = r#"{"version": 1, "operation": {"kind": "morph_chain",
            "faces": ["a","b","c","d","e","f","g","h","i","j"], "frames_per_leg": 500}}"#;
        let err = parse(long_chain).unwrap_err();
        assert!(
            matches!(err, SpecError::TooManyFrames { frames: 4501, .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_output_sizes_and_rates() {
        assert!(message(parse(&with_output(r#"{"size": 0}"#))).contains("output.size is 0"));
        assert!(message(parse(&with_output(r#"{"size": 100000}"#))).contains("from 16 to 1024"));
        assert!(message(parse(&with_output(r#"{"fps": 0}"#))).contains("output.fps is 0"));
        assert!(message(parse(&with_output(r#"{"sheet_columns": 0}"#))).contains("sheet_columns"));
        assert!(message(parse(&with_output(r#"{"size": -5}"#))).contains("does not match"));
        assert!(matches!(
            parse(&with_output(r#"{"size": 255}"#)),
            Err(SpecError::OddVideoSize { size: 255 })
        ));
        assert!(parse(&with_output(r#"{"size": 255, "formats": ["gif"]}"#)).is_ok());
    }

    #[test]
    fn a_probe_has_no_inputs_and_no_formats() {
        let probe = parse(r#"{"version": 1, "operation": {"kind": "probe"}}"#).unwrap();
        assert!(probe.inputs().is_empty());
        assert!(!probe.operation.is_animation());
        assert_eq!(probe.played_frames(), 0);
        let with_png = r#"{"version": 1, "operation": {"kind": "probe"},
            "output": {"formats": ["png"]}}"#;
        assert!(message(parse(with_png)).contains("a probe renders nothing"));
        let with_field = r#"{"version": 1, "operation": {"kind": "probe", "input": "a.jpg"}}"#;
        assert!(message(parse(with_field)).contains("unknown field `input`"));
    }

    #[test]
    fn rejects_formats_the_operation_cannot_make() {
        let err = parse(&with_output(r#"{"formats": ["png"]}"#)).unwrap_err();
        assert!(matches!(
            err,
            SpecError::FormatNotApplicable {
                format: Format::Png,
                ..
            }
        ));
        let still = r#"{"version": 1, "operation": {"kind": "sample", "count": 4,
            "temperature": 0.7}, "output": {"formats": ["mp4"]}}"#;
        assert!(message(parse(still)).contains("`mp4` does not apply to a sample job"));
        let looped = r#"{"version": 1, "operation": {"kind": "sample", "count": 4,
            "temperature": 0.7}, "output": {"loop": true}}"#;
        assert!(matches!(parse(looped), Err(SpecError::LoopOnStill { .. })));
        assert!(message(parse(&with_output(r#"{"formats": ["webm"]}"#))).contains("webm"));
    }

    #[test]
    fn rejects_out_of_range_mix_and_sample_numbers() {
        let mix = r#"{"version": 1, "operation": {"kind": "mix", "from": "a", "to": "b",
            "alpha": 1.5}}"#;
        assert!(message(parse(mix)).contains("operation.alpha is 1.5; it must be from 0 to 1"));
        let sample = |count: u32, t: f64| {
            format!(
                r#"{{"version": 1, "operation": {{"kind": "sample", "count": {count},
                    "temperature": {t}}}}}"#
            )
        };
        assert!(message(parse(&sample(0, 0.7))).contains("operation.count is 0"));
        assert!(message(parse(&sample(1000, 0.7))).contains("operation.count is 1000"));
        assert!(message(parse(&sample(4, -1.0))).contains("operation.temperature is -1"));
    }

    #[test]
    fn rejects_empty_input_references() {
        let spec = r#"{"version": 1, "operation": {"kind": "mix", "from": "a.jpg",
            "to": "  ", "alpha": 0.5}}"#;
        assert!(message(parse(spec)).contains("operation.to is empty"));
        let mut chain = parse(&chain(3)).unwrap();
        if let Operation::MorphChain { faces, .. } = &mut chain.operation {
            faces[2].clear();
        }
        assert!(chain
            .validate()
            .unwrap_err()
            .to_string()
            .contains("operation.faces[2] is empty"));
    }

    #[test]
    fn aliases_resolve_with_their_sign() {
        let age = resolve_attribute("age").unwrap();
        assert_eq!((age.attribute(), age.sign()), ("Young", -1.0));
        let beard = resolve_attribute("beard").unwrap();
        assert_eq!((beard.attribute(), beard.sign()), ("No_Beard", -1.0));
        let smile = resolve_attribute("smiling").unwrap();
        assert_eq!((smile.attribute(), smile.sign()), ("Smiling", 1.0));
        assert_eq!(resolve_attribute("Male").unwrap().index, 20);
        assert!(resolve_attribute("male").is_none());
        for alias in ATTRIBUTE_ALIASES {
            assert!(resolve_attribute(alias.name).is_some(), "{}", alias.name);
        }
    }

    #[test]
    fn frame_counts_cover_chains_and_loops() {
        let spec = parse(
            r#"{"version": 1, "operation": {"kind": "morph_chain", "faces": ["a","b","c"],
                "frames_per_leg": 4, "hold": 2}, "output": {"loop": true, "loop_hold": 3}}"#,
        )
        .unwrap();
        // Two legs of 4, the closing face, and 2 held frames at each of 3 faces.
        assert_eq!(spec.operation.image_count(), 15);
        assert_eq!(spec.played_frames(), playback_len(15, 3));
        assert_eq!(playback_order(4, 1), [0, 1, 2, 3, 3, 2, 1, 0]);
        assert_eq!(playback_order(2, 0), [0, 1]);
        assert_eq!(playback_order(1, 2), [0; 5]);
        for (n, hold) in [(1, 0), (2, 3), (5, 0), (48, 12)] {
            assert_eq!(
                playback_order(n, hold).len() as u64,
                playback_len(n as u64, hold)
            );
        }
    }

    #[test]
    fn alignment_defaults_to_on_and_stays_out_of_the_json() {
        let spec = parse(&edit(r#"{"smiling": 1.0}"#)).unwrap();
        assert!(!spec.alignment.skip);
        assert_eq!(spec.face_choice("a.jpg"), None);
        assert!(!spec.to_json().contains("alignment"));
    }

    #[test]
    fn alignment_can_be_skipped_or_pick_a_face() {
        let skip = r#"{"version": 1, "operation": {"kind": "edit", "input": "a.jpg",
            "attributes": {"smiling": 1.0}}, "alignment": {"skip": true}}"#;
        assert!(parse(skip).unwrap().alignment.skip);

        let pick = r#"{"version": 1, "operation": {"kind": "mix", "from": "group.jpg",
            "to": "b.jpg", "alpha": 0.5}, "alignment": {"faces": {"group.jpg": 2}}}"#;
        let spec = parse(pick).unwrap();
        assert_eq!(spec.face_choice("group.jpg"), Some(2));
        assert_eq!(spec.face_choice("b.jpg"), None);
        assert_eq!(JobSpec::from_json(&spec.to_json()).unwrap(), spec);
    }

    #[test]
    fn rejects_bad_face_choices() {
        let with = |alignment: &str| {
            format!(
                r#"{{"version": 1, "operation": {{"kind": "edit", "input": "a.jpg",
                "attributes": {{"smiling": 1.0}}}}, "alignment": {alignment}}}"#
            )
        };
        let unknown = message(parse(&with(r#"{"faces": {"b.jpg": 0}}"#)));
        assert!(
            unknown.contains("alignment.faces.b.jpg: the operation has no input"),
            "{unknown}"
        );
        let contradictory = message(parse(&with(r#"{"skip": true, "faces": {"a.jpg": 1}}"#)));
        assert!(
            contradictory.contains("alignment.skip is true"),
            "{contradictory}"
        );
        let huge = message(parse(&with(r#"{"faces": {"a.jpg": 1000}}"#)));
        assert!(huge.contains("alignment.faces.a.jpg is 1000"), "{huge}");
        let typo = message(parse(&with(r#"{"skipp": true}"#)));
        assert!(typo.contains("unknown field `skipp`"), "{typo}");
    }
}
