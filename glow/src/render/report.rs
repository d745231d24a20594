//! The JSON report written beside a render's outputs (`report.json`): the
//! job spec, the model's hash, the seed, the frame counts, the files made
//! and how long each stage took.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use contract::spec::JobSpec;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// File name of the report in the output folder.
pub const REPORT_FILE: &str = "report.json";

/// What a render did.
#[derive(Clone, Debug, Serialize)]
pub struct RenderReport {
    /// The job, as rendered.
    pub spec: JobSpec,
    /// The job kind.
    pub kind: String,
    /// sha256 of the model file, hex.
    pub model_sha256: String,
    /// The seed the job ran with.
    pub seed: u64,
    /// Frame and tile counts.
    pub frames: FrameCounts,
    /// Width and height of one output frame (or still) in pixels.
    pub frame_size: [u32; 2],
    /// Frames per second of the animations.
    pub fps: u32,
    /// Files written, relative to the output folder, in writing order.
    pub outputs: Vec<String>,
    /// Where the model ran.
    pub device: String,
    /// Faces decoded per batch.
    pub decode_batch: usize,
    /// The faces found in each aligned input photo, in the order of the
    /// spec's inputs; empty when the spec skips alignment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<InputFaces>,
    /// Seconds spent in each stage.
    pub timings: Timings,
    /// The Glowline version that rendered.
    pub glowline_version: String,
}

/// The faces found in one input photo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InputFaces {
    /// The input reference.
    pub input: String,
    /// How many faces the detector found.
    pub found: usize,
    /// The face that was aligned, numbered from 0 left to right.
    pub used: usize,
}

/// How many pictures a render made.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FrameCounts {
    /// Distinct frames (or stills) rendered.
    pub rendered: usize,
    /// Frames played by the GIF and MP4, holds and loop included.
    pub played: usize,
    /// Faces decoded by the model (a nine-way frame holds several).
    pub tiles_decoded: usize,
}

/// Seconds per stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Reading, decoding, aligning and cropping the input photos.
    pub read_inputs: f64,
    /// Encoding the inputs (or drawing the samples).
    pub encode: f64,
    /// Decoding every tile.
    pub decode: f64,
    /// Upscaling and laying out frames.
    pub compose: f64,
    /// Writing PNGs (stills, frames, contact sheet).
    pub png: f64,
    /// Quantizing and writing the GIF.
    pub gif: f64,
    /// Sending frames to ffmpeg and waiting for the MP4.
    pub mp4: f64,
    /// The whole render, report excluded.
    pub total: f64,
}

/// Adds the time a closure takes to a timing slot.
pub fn timed<T>(slot: &mut f64, work: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = work();
    *slot += start.elapsed().as_secs_f64();
    out
}

/// The sha256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc.txt");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn timed_accumulates() {
        let mut slot = 1.0;
        let value = timed(&mut slot, || 7);
        assert_eq!(value, 7);
        assert!(slot >= 1.0);
    }
}
