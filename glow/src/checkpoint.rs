//! Model files: safetensors with the model config in the metadata.
//!
//! A file alone rebuilds its model: [`Glow::load`] reads the config from the
//! metadata key `glowline.config`, builds the model and fills every variable.
//! Training checkpoints carry extra tensors (optimizer moments, prefixed
//! `optim.`) and extra metadata (progress, data); shipped models are written
//! in f16 to halve their size and loaded back as f32.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::config::GlowConfig;
use crate::error::{GlowError, Result};
use crate::model::Glow;

/// Metadata key holding the model config as JSON.
pub const CONFIG_KEY: &str = "glowline.config";
/// Metadata key of the file format version.
const FORMAT_KEY: &str = "glowline.format";
const FORMAT_VERSION: &str = "1";
/// Names of tensors that are not model variables start with this.
pub const OPTIMIZER_PREFIX: &str = "optim.";

/// Floating point precision of the stored model variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

/// A tensor's bytes ready for safetensors.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn stored(t: &Tensor, precision: Precision) -> Result<Stored> {
    let (kind, dtype) = match precision {
        Precision::F32 => (Kind::Float, Dtype::F32),
        Precision::F16 => (Kind::Half, Dtype::F16),
    };
    let t = t.detach().to_device(Device::Cpu).to_kind(kind).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    Ok(Stored {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        bytes,
    })
}

/// Writes the model's variables (and `extra` tensors, kept in f32) with the
/// config and `metadata` to `path`, atomically (a temporary file is renamed).
pub fn save(
    glow: &Glow,
    path: &Path,
    precision: Precision,
    extra: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<(String, Stored)> = Vec::new();
    let mut variables: Vec<(String, Tensor)> = glow.var_store().variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in &variables {
        tensors.push((name.clone(), stored(t, precision)?));
    }
    for (name, t) in extra {
        tensors.push((name.clone(), stored(t, Precision::F32)?));
    }
    let views = tensors
        .iter()
        .map(|(name, s)| {
            TensorView::new(s.dtype, s.shape.clone(), &s.bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| GlowError::checkpoint(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;

    let mut info: HashMap<String, String> = metadata.clone().into_iter().collect();
    info.insert(
        CONFIG_KEY.into(),
        serde_json::to_string(glow.config()).expect("config serializes"),
    );
    info.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| GlowError::io(dir, e))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, &Some(info), &tmp)
        .map_err(|e| GlowError::checkpoint(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| GlowError::io(path, e))
}

/// A model file read into memory.
pub struct ModelFile {
    bytes: Vec<u8>,
    pub config: GlowConfig,
    pub metadata: BTreeMap<String, String>,
}

impl ModelFile {
    /// Reads `path` and its metadata, without building a model.
    pub fn read(path: &Path) -> Result<ModelFile> {
        let bytes = std::fs::read(path).map_err(|e| GlowError::io(path, e))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| GlowError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        let metadata: BTreeMap<String, String> = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let config_json = metadata.get(CONFIG_KEY).ok_or_else(|| {
            GlowError::checkpoint(
                path,
                format!("no `{CONFIG_KEY}` in the metadata: not a Glowline model"),
            )
        })?;
        let config: GlowConfig = serde_json::from_str(config_json)
            .map_err(|e| GlowError::checkpoint(path, format!("bad model config: {e}")))?;
        Ok(ModelFile {
            bytes,
            config,
            metadata,
        })
    }

    fn tensors(&self, path: &Path) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| GlowError::checkpoint(path, e.to_string()))
    }

    /// Copies the stored variables into `glow`, whose config must match.
    pub fn load_into(&self, glow: &Glow, path: &Path) -> Result<()> {
        if let Some(differences) = self.config.differences(glow.config()) {
            return Err(GlowError::ConfigMismatch {
                path: path.into(),
                differences,
            });
        }
        let file = self.tensors(path)?;
        let variables = glow.var_store().variables();
        for name in file.names() {
            if !name.starts_with(OPTIMIZER_PREFIX) && !variables.contains_key(name.as_str()) {
                return Err(GlowError::checkpoint(
                    path,
                    format!("unexpected tensor `{name}`"),
                ));
            }
        }
        tch::no_grad(|| {
            for (name, var) in &variables {
                let t = read_tensor(&file, name, path)?;
                if t.size() != var.size() {
                    return Err(GlowError::checkpoint(
                        path,
                        format!(
                            "tensor `{name}` has shape {:?}, the model wants {:?}",
                            t.size(),
                            var.size()
                        ),
                    ));
                }
                var.shallow_clone()
                    .copy_(&t.to_kind(var.kind()).to_device(var.device()));
            }
            Ok(())
        })?;
        glow.refresh_initialized();
        glow.weights_changed();
        Ok(())
    }

    /// The extra tensor `name` (e.g. an optimizer moment), if the file has it.
    pub fn extra_tensor(&self, name: &str, path: &Path) -> Result<Option<Tensor>> {
        let file = self.tensors(path)?;
        if !file.names().iter().any(|n| n.as_str() == name) {
            return Ok(None);
        }
        read_tensor(&file, name, path).map(Some)
    }
}

fn read_tensor(file: &SafeTensors<'_>, name: &str, path: &Path) -> Result<Tensor> {
    let view = file
        .tensor(name)
        .map_err(|_| GlowError::checkpoint(path, format!("missing tensor `{name}`")))?;
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        other => {
            return Err(GlowError::checkpoint(
                path,
                format!("tensor `{name}` has unsupported dtype {other:?}"),
            ))
        }
    };
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?.to_kind(Kind::Float))
}

impl Glow {
    /// Loads a model file, building the model its metadata describes.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Glow> {
        let path = path.as_ref();
        let file = ModelFile::read(path)?;
        let glow = Glow::new(&file.config, device)?;
        file.load_into(&glow, path)?;
        Ok(glow)
    }

    /// Saves the model alone (no optimizer state) with `metadata`.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        precision: Precision,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        save(self, path.as_ref(), precision, &[], metadata)
    }
}
