//! Input photos: where their bytes come from.
//!
//! A job names its faces by opaque references ([`InputSource`] resolves them:
//! [`DirInputs`] reads files relative to a folder, a worker supplies bytes it
//! downloaded). Turning the bytes into a picture, with every check against
//! bad and hostile files, is the `photo` crate's [`decode_image`],
//! re-exported here.

use std::path::{Path, PathBuf};

pub use photo::{
    decode_image, ImageLimits, InputError, DEFAULT_MAX_ALLOC, DEFAULT_MAX_SIDE, DEFAULT_MIN_SIDE,
};

/// Resolves the input references of a job to bytes.
pub trait InputSource {
    /// The bytes of the input named `reference`.
    fn read(&self, reference: &str) -> Result<Vec<u8>, InputError>;
}

/// Inputs read as files relative to a folder (absolute references are used
/// as they are), as `glow render` does with the folder of the spec file.
#[derive(Clone, Debug)]
pub struct DirInputs {
    /// The folder relative references start from.
    pub root: PathBuf,
}

impl DirInputs {
    /// Inputs relative to `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The path a reference stands for.
    pub fn path(&self, reference: &str) -> PathBuf {
        self.root.join(Path::new(reference))
    }
}

impl InputSource for DirInputs {
    fn read(&self, reference: &str) -> Result<Vec<u8>, InputError> {
        let path = self.path(reference);
        std::fs::read(&path).map_err(|source| InputError::Read {
            name: path.display().to_string(),
            source,
        })
    }
}

/// Inputs already in memory, keyed by reference (a worker's downloads).
impl InputSource for std::collections::HashMap<String, Vec<u8>> {
    fn read(&self, reference: &str) -> Result<Vec<u8>, InputError> {
        self.get(reference)
            .cloned()
            .ok_or_else(|| InputError::Read {
                name: reference.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such input was provided",
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_inputs_resolve_relative_to_their_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"bytes").unwrap();
        let inputs = DirInputs::new(dir.path());
        assert_eq!(inputs.read("a.png").unwrap(), b"bytes");
        let err = inputs.read("missing.jpg").unwrap_err().to_string();
        assert!(err.contains("missing.jpg: cannot read"), "{err}");
    }
}
