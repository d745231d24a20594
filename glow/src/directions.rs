//! Attribute directions: for each of CelebA's 40 attributes, the mean flat
//! latent of the faces that have it minus the mean latent of those that do
//! not, as in section 5 of the Glow paper.
//!
//! They are computed once per model by encoding the labelled training faces
//! (`glow directions`) and stored beside the model as safetensors
//! (`models/celeba64.safetensors` gets `models/celeba64.directions.safetensors`),
//! with the model's sha256 and the example counts in the metadata so that a
//! table is never applied to a model it was not computed for.
//!
//! Scale: an edit of strength `s` adds `s * (mean(z | positive) - mean(z |
//! negative))` to a face's latent. Strength 1.0 therefore moves a face by one
//! full difference between the average face with the attribute and the
//! average face without it; 0.5 goes halfway, -1.0 the other way. The
//! sliders `age` and `beard` are the negatives of `Young` and `No_Beard`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use contract::spec::{resolve_attribute, AttributeRef, CELEBA_ATTRIBUTES};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::data::{Dataset, Loader, LoaderConfig, Position, Split};
use crate::error::GlowError;
use crate::model::Glow;

/// Number of attributes in a direction table.
pub const ATTRIBUTE_COUNT: usize = CELEBA_ATTRIBUTES.len();

/// Metadata key marking a file as a direction table.
const KIND_KEY: &str = "glowline.kind";
const KIND_VALUE: &str = "attribute_directions";
/// Metadata key of the sha256 of the model file the table belongs to.
pub const MODEL_SHA256_KEY: &str = "glowline.model_sha256";
/// Metadata key of the attribute names, as a JSON list in table order.
const ATTRIBUTES_KEY: &str = "glowline.attributes";
/// Metadata key of the number of faces encoded.
const IMAGES_KEY: &str = "glowline.images";
/// Metadata key of a description of the faces encoded.
const DATA_KEY: &str = "glowline.data";
/// Metadata key stating what strength 1.0 means, for readers of the file.
const SCALE_KEY: &str = "glowline.scale";
const SCALE_TEXT: &str = "strength 1.0 = mean(latent | positive) - mean(latent | negative)";

const VECTORS_TENSOR: &str = "directions";
const POSITIVES_TENSOR: &str = "positives";
const NEGATIVES_TENSOR: &str = "negatives";

/// What can go wrong computing, reading or applying directions.
#[derive(Debug, thiserror::Error)]
pub enum DirectionsError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a direction table this build understands.
    #[error("{path}: not a Glowline direction table: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The table was computed for a different model file.
    #[error(
        "{path}: these directions were computed for the model with sha256 {table}, \
         but the model in use has sha256 {model}; run `glow directions` for this model"
    )]
    ModelMismatch {
        /// The direction file.
        path: PathBuf,
        /// The model hash the table names.
        table: String,
        /// The hash of the model in use.
        model: String,
    },

    /// The table's latents do not have the model's size.
    #[error("the directions have {table} latent dimensions but the model has {model}")]
    DimensionMismatch {
        /// Latent size of the table.
        table: i64,
        /// Latent size of the model.
        model: i64,
    },

    /// A name that is neither a CelebA attribute nor a slider alias.
    #[error("unknown attribute `{0}`")]
    UnknownAttribute(String),

    /// The data held no face on one side of an attribute, so its direction is undefined.
    #[error(
        "attribute {attribute} has {positives} positive and {negatives} negative examples in \
         the faces its direction was computed from; both sides need at least one"
    )]
    NoExamples {
        /// The official attribute name.
        attribute: &'static str,
        /// Faces with the attribute.
        positives: u64,
        /// Faces without it.
        negatives: u64,
    },

    /// Labels that do not fit the table.
    #[error("bad labels: {0}")]
    Labels(String),

    /// The model failed.
    #[error(transparent)]
    Model(#[from] GlowError),

    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Sums of latents on each side of every attribute, fed batch by batch.
pub struct DirectionAccumulator {
    /// `[40, D]` f64 sums of the latents of faces with each attribute.
    positive_sums: Tensor,
    /// `[40, D]` f64 sums of the latents of faces without it.
    negative_sums: Tensor,
    positives: [u64; ATTRIBUTE_COUNT],
    negatives: [u64; ATTRIBUTE_COUNT],
    images: u64,
}

impl DirectionAccumulator {
    /// An empty accumulator for latents of `latent_dim` numbers, summing on `device`.
    pub fn new(latent_dim: i64, device: Device) -> Self {
        let zeros = || Tensor::zeros([ATTRIBUTE_COUNT as i64, latent_dim], (Kind::Double, device));
        Self {
            positive_sums: zeros(),
            negative_sums: zeros(),
            positives: [0; ATTRIBUTE_COUNT],
            negatives: [0; ATTRIBUTE_COUNT],
            images: 0,
        }
    }

    /// Adds flat latents `[B, D]` with their labels, one row of 40 values of
    /// +1 or -1 per face (CelebA's convention).
    pub fn add(
        &mut self,
        latents: &Tensor,
        labels: &[[i8; ATTRIBUTE_COUNT]],
    ) -> Result<(), DirectionsError> {
        let batch = labels.len() as i64;
        if latents.size() != [batch, self.positive_sums.size()[1]] {
            return Err(DirectionsError::Labels(format!(
                "{} label rows for latents of shape {:?}",
                labels.len(),
                latents.size()
            )));
        }
        let mut flags = Vec::with_capacity(labels.len() * ATTRIBUTE_COUNT);
        for row in labels {
            for (a, &value) in row.iter().enumerate() {
                match value {
                    1 => self.positives[a] += 1,
                    -1 => self.negatives[a] += 1,
                    other => {
                        return Err(DirectionsError::Labels(format!(
                            "{} is {other}, not 1 or -1",
                            CELEBA_ATTRIBUTES[a]
                        )))
                    }
                }
                flags.push(f64::from(value == 1));
            }
        }

        // [40, B] x [B, D]: each attribute's sum over the faces on each side.
        let device = self.positive_sums.device();
        let positive = Tensor::from_slice(&flags)
            .view([batch, ATTRIBUTE_COUNT as i64])
            .to_device(device)
            .tr();
        let negative = positive.ones_like() - &positive;
        let z = latents.to_device(device).to_kind(Kind::Double);
        self.positive_sums += positive.matmul(&z);
        self.negative_sums += negative.matmul(&z);
        self.images += labels.len() as u64;
        Ok(())
    }

    /// The directions: mean of the positives minus mean of the negatives
    /// (zero for an attribute with no faces on one side; using it is an error).
    pub fn finish(self, model_sha256: &str, data: &str) -> Directions {
        let counts = |c: &[u64; ATTRIBUTE_COUNT]| {
            Tensor::from_slice(&c.map(|n| n.max(1) as f64))
                .view([ATTRIBUTE_COUNT as i64, 1])
                .to_device(self.positive_sums.device())
        };
        let defined: Vec<f64> = (0..ATTRIBUTE_COUNT)
            .map(|a| f64::from(self.positives[a] > 0 && self.negatives[a] > 0))
            .collect();
        let defined = Tensor::from_slice(&defined)
            .view([ATTRIBUTE_COUNT as i64, 1])
            .to_device(self.positive_sums.device());
        let difference = &self.positive_sums / counts(&self.positives)
            - &self.negative_sums / counts(&self.negatives);
        let vectors = (difference * defined)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        Directions {
            vectors,
            positives: self.positives,
            negatives: self.negatives,
            model_sha256: model_sha256.to_string(),
            images: self.images,
            data: data.to_string(),
        }
    }
}

/// A direction table: one latent-space vector per CelebA attribute, in the
/// order of [`CELEBA_ATTRIBUTES`], with the example counts behind each.
#[derive(Debug)]
pub struct Directions {
    /// `[40, D]` f32 on the CPU.
    vectors: Tensor,
    positives: [u64; ATTRIBUTE_COUNT],
    negatives: [u64; ATTRIBUTE_COUNT],
    model_sha256: String,
    images: u64,
    data: String,
}

impl Directions {
    /// Where the directions of the model at `model_path` live:
    /// `NAME.safetensors` gets `NAME.directions.safetensors`.
    pub fn path_for_model(model_path: &Path) -> PathBuf {
        let stem = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        model_path.with_file_name(format!("{stem}.directions.safetensors"))
    }

    /// Latent size of the vectors.
    pub fn latent_dim(&self) -> i64 {
        self.vectors.size()[1]
    }

    /// sha256 of the model file the table was computed for.
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    /// Faces encoded to compute the table.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// What the faces were (a folder and split), as recorded at computation.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Faces with and without the attribute at `index`.
    pub fn counts(&self, index: usize) -> (u64, u64) {
        (self.positives[index], self.negatives[index])
    }

    /// The vector of an attribute or slider name, signed for aliases
    /// (`age` gives minus the `Young` vector), `[D]` f32 on the CPU.
    pub fn vector(&self, name: &str) -> Result<Tensor, DirectionsError> {
        let attribute = resolve_attribute(name)
            .ok_or_else(|| DirectionsError::UnknownAttribute(name.to_string()))?;
        self.signed_vector(attribute)
    }

    fn signed_vector(&self, attribute: AttributeRef) -> Result<Tensor, DirectionsError> {
        let (positives, negatives) = self.counts(attribute.index);
        if positives == 0 || negatives == 0 {
            return Err(DirectionsError::NoExamples {
                attribute: attribute.attribute(),
                positives,
                negatives,
            });
        }
        Ok(self.vectors.get(attribute.index as i64) * attribute.sign())
    }

    /// The sum of `strength * vector(name)` over a set of edits, `[D]`.
    pub fn edit_vector(&self, edits: &BTreeMap<String, f64>) -> Result<Tensor, DirectionsError> {
        let mut total = Tensor::zeros([self.latent_dim()], (Kind::Float, Device::Cpu));
        for (name, strength) in edits {
            total += self.vector(name)? * *strength;
        }
        Ok(total)
    }

    /// Checks that the table belongs to the model with `model_sha256` and
    /// `latent_dim`; `path` names the table in the error.
    pub fn check_model(
        &self,
        path: &Path,
        model_sha256: &str,
        latent_dim: i64,
    ) -> Result<(), DirectionsError> {
        if self.model_sha256 != model_sha256 {
            return Err(DirectionsError::ModelMismatch {
                path: path.to_path_buf(),
                table: self.model_sha256.clone(),
                model: model_sha256.to_string(),
            });
        }
        if self.latent_dim() != latent_dim {
            return Err(DirectionsError::DimensionMismatch {
                table: self.latent_dim(),
                model: latent_dim,
            });
        }
        Ok(())
    }

    /// Writes the table to `path` (via a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<(), DirectionsError> {
        let vectors = self.vectors.contiguous();
        let numel = vectors.numel();
        let mut vector_bytes = vec![0u8; numel * 4];
        vectors.f_copy_data_u8(&mut vector_bytes, numel)?;
        let count_bytes = |c: &[u64; ATTRIBUTE_COUNT]| -> Vec<u8> {
            c.iter().flat_map(|n| (*n as i64).to_le_bytes()).collect()
        };
        let positive_bytes = count_bytes(&self.positives);
        let negative_bytes = count_bytes(&self.negatives);
        let format_error = |e: safetensors::SafeTensorError| DirectionsError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let shape = vec![ATTRIBUTE_COUNT, self.latent_dim() as usize];
        let views = vec![
            (
                VECTORS_TENSOR,
                TensorView::new(Dtype::F32, shape, &vector_bytes).map_err(format_error)?,
            ),
            (
                POSITIVES_TENSOR,
                TensorView::new(Dtype::I64, vec![ATTRIBUTE_COUNT], &positive_bytes)
                    .map_err(format_error)?,
            ),
            (
                NEGATIVES_TENSOR,
                TensorView::new(Dtype::I64, vec![ATTRIBUTE_COUNT], &negative_bytes)
                    .map_err(format_error)?,
            ),
        ];
        let metadata = HashMap::from([
            (KIND_KEY.to_string(), KIND_VALUE.to_string()),
            (MODEL_SHA256_KEY.to_string(), self.model_sha256.clone()),
            (
                ATTRIBUTES_KEY.to_string(),
                serde_json::to_string(&CELEBA_ATTRIBUTES[..]).expect("names serialize"),
            ),
            (IMAGES_KEY.to_string(), self.images.to_string()),
            (DATA_KEY.to_string(), self.data.clone()),
            (SCALE_KEY.to_string(), SCALE_TEXT.to_string()),
        ]);

        let io_error = |source| DirectionsError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let bytes = safetensors::serialize(views, &Some(metadata)).map_err(format_error)?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(io_error)?;
        std::fs::rename(&tmp, path).map_err(io_error)
    }

    /// Reads a table written by [`Directions::save`].
    pub fn load(path: &Path) -> Result<Directions, DirectionsError> {
        let bytes = std::fs::read(path).map_err(|source| DirectionsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| DirectionsError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| bad(format!("no `{key}` in the metadata")))
        };
        if field(KIND_KEY)? != KIND_VALUE {
            return Err(bad(format!("`{KIND_KEY}` is not {KIND_VALUE}")));
        }
        let names: Vec<String> = serde_json::from_str(&field(ATTRIBUTES_KEY)?)
            .map_err(|e| bad(format!("bad attribute list: {e}")))?;
        if names != CELEBA_ATTRIBUTES {
            return Err(bad(
                "its attributes are not CelebA's 40 in file order".into()
            ));
        }
        let images = field(IMAGES_KEY)?
            .parse()
            .map_err(|e| bad(format!("bad image count: {e}")))?;

        let tensors =
            SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let view = tensors
            .tensor(VECTORS_TENSOR)
            .map_err(|_| bad(format!("no `{VECTORS_TENSOR}` tensor")))?;
        if view.dtype() != Dtype::F32
            || view.shape().len() != 2
            || view.shape()[0] != ATTRIBUTE_COUNT
        {
            return Err(bad(format!(
                "`{VECTORS_TENSOR}` must be f32 [{ATTRIBUTE_COUNT}, D], found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let shape = [ATTRIBUTE_COUNT as i64, view.shape()[1] as i64];
        let vectors = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?;
        let counts = |name: &str| -> Result<[u64; ATTRIBUTE_COUNT], DirectionsError> {
            let view = tensors
                .tensor(name)
                .map_err(|_| bad(format!("no `{name}` tensor")))?;
            if view.dtype() != Dtype::I64 || view.shape() != [ATTRIBUTE_COUNT] {
                return Err(bad(format!("`{name}` must be i64 [{ATTRIBUTE_COUNT}]")));
            }
            let mut out = [0u64; ATTRIBUTE_COUNT];
            for (slot, chunk) in out.iter_mut().zip(view.data().chunks_exact(8)) {
                let value = i64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                *slot =
                    u64::try_from(value).map_err(|_| bad(format!("negative count in `{name}`")))?;
            }
            Ok(out)
        };
        Ok(Directions {
            vectors,
            positives: counts(POSITIVES_TENSOR)?,
            negatives: counts(NEGATIVES_TENSOR)?,
            model_sha256: field(MODEL_SHA256_KEY)?,
            images,
            data: metadata.get(DATA_KEY).cloned().unwrap_or_default(),
        })
    }
}

/// How [`compute`] reads the faces.
#[derive(Clone, Debug)]
pub struct ComputeOptions {
    /// Faces encoded at once.
    pub batch_size: usize,
    /// Threads decoding JPEGs ahead of the model.
    pub workers: usize,
}

impl Default for ComputeOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            workers: 2,
        }
    }
}

/// Encodes the labelled training faces of a CelebA-style `dataset` with
/// `model` and returns their directions. `on_batch` hears how many faces
/// each batch held (for a progress bar). Unreadable images are skipped with
/// a warning by the loader.
pub fn compute(
    model: &Glow,
    model_sha256: &str,
    dataset: &Dataset,
    options: &ComputeOptions,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Directions, DirectionsError> {
    if dataset.attribute_names != CELEBA_ATTRIBUTES {
        return Err(DirectionsError::Labels(format!(
            "{}: needs list_attr_celeba.txt with CelebA's 40 attributes in their usual order",
            dataset.root.display()
        )));
    }
    let entries: Vec<_> = dataset
        .split(Split::Train)
        .into_iter()
        .filter(|e| e.attributes.is_some())
        .collect();
    if entries.is_empty() {
        return Err(DirectionsError::Labels(format!(
            "{}: no labelled faces in the training split",
            dataset.root.display()
        )));
    }
    let config = LoaderConfig {
        batch_size: options.batch_size,
        image_size: model.config().image_size,
        shuffle: false,
        flip: false,
        drop_last: false,
        seed: 0,
        workers: options.workers,
        prefetch: 2,
        epochs: Some(1),
    };
    let loader = Loader::new(entries.clone(), config, Position::default())?;
    let mut acc = DirectionAccumulator::new(model.latent_dim(), model.device());
    for batch in loader {
        let labels: Vec<[i8; ATTRIBUTE_COUNT]> = batch
            .indices
            .iter()
            .map(|&i| entries[i].attributes.expect("filtered to labelled entries"))
            .collect();
        let latents = model.encode_images(&batch.images)?;
        acc.add(&latents, &labels)?;
        on_batch(labels.len());
    }
    let data = format!(
        "{} (train split, {} faces)",
        dataset.root.display(),
        acc.images
    );
    Ok(acc.finish(model_sha256, &data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels with only `Smiling` (index 31) and `Young` (index 39) varying.
    fn labels(smiling: bool, young: bool) -> [i8; ATTRIBUTE_COUNT] {
        let mut row = [-1i8; ATTRIBUTE_COUNT];
        row[0] = 1; // 5_o_Clock_Shadow: positive for every face.
        if smiling {
            row[31] = 1;
        }
        if young {
            row[39] = 1;
        }
        row
    }

    fn table() -> Directions {
        let mut acc = DirectionAccumulator::new(3, Device::Cpu);
        let z = Tensor::from_slice(&[
            1.0f32, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 4.0, 0.0,
        ])
        .view([4, 3]);
        let rows = [
            labels(true, false),
            labels(true, false),
            labels(false, true),
            labels(false, true),
        ];
        acc.add(&z, &rows).unwrap();
        acc.finish("abc123", "synthetic")
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap()
    }

    #[test]
    fn a_direction_is_the_difference_of_the_two_means() {
        let d = table();
        // Smiling: mean of [1,0,0] and [3,0,0] minus mean of [0,2,0] and [0,4,0].
        assert_eq!(values(&d.vector("Smiling").unwrap()), [2.0, -3.0, 0.0]);
        assert_eq!(values(&d.vector("smiling").unwrap()), [2.0, -3.0, 0.0]);
        assert_eq!(d.counts(31), (2, 2));
        assert_eq!(d.images(), 4);
    }

    #[test]
    fn aliases_flip_the_sign() {
        let d = table();
        assert_eq!(values(&d.vector("Young").unwrap()), [-2.0, 3.0, 0.0]);
        assert_eq!(values(&d.vector("age").unwrap()), [2.0, -3.0, 0.0]);
    }

    #[test]
    fn edits_add_up_with_their_strengths() {
        let d = table();
        let edits = BTreeMap::from([("smiling".to_string(), 0.5), ("Young".to_string(), 2.0)]);
        assert_eq!(values(&d.edit_vector(&edits).unwrap()), [-3.0, 4.5, 0.0]);
    }

    #[test]
    fn one_sided_attributes_and_unknown_names_are_errors() {
        let d = table();
        let err = d.vector("5_o_Clock_Shadow").unwrap_err();
        assert!(matches!(
            err,
            DirectionsError::NoExamples {
                positives: 4,
                negatives: 0,
                ..
            }
        ));
        assert!(err.to_string().contains("both sides need at least one"));
        assert!(matches!(
            d.vector("Wings"),
            Err(DirectionsError::UnknownAttribute(_))
        ));
    }

    #[test]
    fn labels_must_be_plus_or_minus_one() {
        let mut acc = DirectionAccumulator::new(2, Device::Cpu);
        let mut row = labels(true, true);
        row[5] = 0;
        let err = acc
            .add(&Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)), &[row])
            .unwrap_err();
        assert!(err.to_string().contains("Bangs is 0"), "{err}");
        let err = acc
            .add(&Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)), &[row])
            .unwrap_err();
        assert!(err.to_string().contains("1 label rows"), "{err}");
    }

    #[test]
    fn save_and_load_round_trip_and_check_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = Directions::path_for_model(&dir.path().join("tiny.safetensors"));
        assert!(path.ends_with("tiny.directions.safetensors"));
        let d = table();
        d.save(&path).unwrap();
        let back = Directions::load(&path).unwrap();
        assert_eq!(values(&back.vector("smiling").unwrap()), [2.0, -3.0, 0.0]);
        assert_eq!(back.counts(39), (2, 2));
        assert_eq!(
            (back.model_sha256(), back.images(), back.data()),
            ("abc123", 4, "synthetic")
        );
        back.check_model(&path, "abc123", 3).unwrap();
        let err = back
            .check_model(&path, "def456", 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sha256 abc123") && err.contains("def456"),
            "{err}"
        );
        assert!(matches!(
            back.check_model(&path, "abc123", 4),
            Err(DirectionsError::DimensionMismatch { table: 3, model: 4 })
        ));
    }

    #[test]
    fn loading_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.directions.safetensors");
        std::fs::write(&path, b"not a table").unwrap();
        let err = Directions::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("junk.directions.safetensors") && err.contains("not safetensors"),
            "{err}"
        );
        let missing = Directions::load(&dir.path().join("absent.safetensors")).unwrap_err();
        assert!(matches!(missing, DirectionsError::Io { .. }));
    }
}
