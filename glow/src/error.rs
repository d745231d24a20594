//! Typed errors of the `glow` library. Each names the input that was wrong.

use std::path::PathBuf;

/// Everything the model, its checkpoints and its data loader can refuse.
#[derive(Debug, thiserror::Error)]
pub enum GlowError {
    #[error("invalid model config: {0}")]
    Config(String),

    #[error("the model's ActNorm layers are not initialized: run a data-dependent initialization (the first training batch) or load a trained checkpoint")]
    Uninitialized,

    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{path}: the checkpoint's model config differs from the requested one: {differences}")]
    ConfigMismatch { path: PathBuf, differences: String },

    #[error("bad input tensor: {0}")]
    Input(String),

    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },

    #[error("training diverged at step {step}: the loss is {value} (not finite)")]
    NonFinite { step: u64, value: f64 },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl GlowError {
    /// A checkpoint error for `path` with a message.
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        GlowError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GlowError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = GlowError> = std::result::Result<T, E>;
