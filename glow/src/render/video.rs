//! MP4 output through the system `ffmpeg` binary.
//!
//! Frames are piped to `ffmpeg` as raw RGB24 and encoded with libx264 to
//! H.264 in yuv420p (the pixel format every browser decodes), with the index
//! moved to the front (`+faststart`) so a page can start playing before the
//! download ends.
//!
//! Why a subprocess: libx264 behind ffmpeg is the best-kept H.264 encoder
//! there is, and the `ffmpeg` command line is a stable interface, so nothing
//! here breaks when a distribution moves to the next libav* major version, as
//! bindings (ffmpeg-next and friends) do, and the build needs no C headers.
//! The pure-Rust alternatives would need an MP4 muxer, a colour converter
//! and Cisco's OpenH264 built from source, for worse quality per byte. A
//! missing `ffmpeg`, or one built without libx264, is an error before any
//! frame is decoded, never a silent fallback to another format.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use image::RgbImage;

/// x264's constant rate factor: 18 is visually lossless for most content,
/// and faces upscaled from 64 px have little detail to spend bits on.
pub const MP4_CRF: u8 = 18;

/// x264's speed preset: `medium` is its default trade of speed for size; the
/// videos are short, so encoding time is small either way.
const X264_PRESET: &str = "medium";

/// Why an MP4 could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// `ffmpeg` is not installed (or not at the configured path).
    #[error(
        "MP4 output needs the `{program}` program, which was not found ({source}); install \
         ffmpeg (scripts/setup.sh does), point GLOWLINE_FFMPEG at it, or leave mp4 out of \
         output.formats"
    )]
    EncoderMissing {
        /// The program that was run.
        program: String,
        /// The error starting it.
        #[source]
        source: std::io::Error,
    },

    /// `ffmpeg` runs but cannot encode H.264.
    #[error(
        "`{program}` has no libx264 encoder, which MP4 output needs; install an ffmpeg \
         built with libx264 (Debian's is)"
    )]
    NoH264 {
        /// The program that was run.
        program: String,
    },

    /// `ffmpeg` failed while encoding.
    #[error("{path}: ffmpeg failed ({status}): {stderr}")]
    Failed {
        /// The MP4 being written.
        path: PathBuf,
        /// How ffmpeg ended.
        status: String,
        /// What ffmpeg printed.
        stderr: String,
    },

    /// Talking to `ffmpeg` failed.
    #[error("{path}: {source}")]
    Io {
        /// The MP4 being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `ffmpeg` exists and has libx264, before any work is done.
pub fn check_encoder(ffmpeg: &Path) -> Result<(), VideoError> {
    let program = ffmpeg.display().to_string();
    let output = Command::new(ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-encoders"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VideoError::EncoderMissing {
            program: program.clone(),
            source,
        })?;
    let listing = String::from_utf8_lossy(&output.stdout);
    if !listing.split_whitespace().any(|word| word == "libx264") {
        return Err(VideoError::NoH264 { program });
    }
    Ok(())
}

/// An MP4 being written by an `ffmpeg` child process. Dropped before
/// [`Mp4Writer::finish`] succeeded (an error, a cancellation), it stops
/// ffmpeg and removes the partial file.
pub struct Mp4Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Collects ffmpeg's messages so its pipe never fills up and blocks it.
    stderr: Option<JoinHandle<String>>,
    path: PathBuf,
    size: (u32, u32),
    /// Set once the file is complete.
    finished: bool,
}

impl Mp4Writer {
    /// Starts `ffmpeg` writing `path` from frames of `width` x `height` at
    /// `fps`. Both sides must be even: 4:2:0 chroma halves them.
    pub fn create(
        ffmpeg: &Path,
        path: &Path,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Self, VideoError> {
        let io = |source| VideoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut child = Command::new(ffmpeg)
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
            .args(["-video_size", &format!("{width}x{height}")])
            .args(["-framerate", &fps.to_string(), "-i", "pipe:0", "-an"])
            .args(["-c:v", "libx264", "-preset", X264_PRESET])
            .args(["-crf", &MP4_CRF.to_string(), "-pix_fmt", "yuv420p"])
            .args(["-movflags", "+faststart"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => VideoError::EncoderMissing {
                    program: ffmpeg.display().to_string(),
                    source,
                },
                _ => io(source),
            })?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            // A read error only loses ffmpeg's message, not the video.
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            stderr: Some(reader),
            path: path.to_path_buf(),
            size: (width, height),
            finished: false,
        })
    }

    /// Sends one frame to the encoder.
    pub fn push(&mut self, frame: &RgbImage) -> Result<(), VideoError> {
        assert_eq!(
            frame.dimensions(),
            self.size,
            "every frame has the video's size"
        );
        let stdin = self.stdin.as_mut().expect("stdin is open until finish");
        if let Err(e) = stdin.write_all(frame.as_raw()) {
            // A closed pipe means ffmpeg quit; its own message says why.
            return Err(match self.wait() {
                Err(failed) => failed,
                Ok(()) => VideoError::Io {
                    path: self.path.clone(),
                    source: e,
                },
            });
        }
        Ok(())
    }

    /// Closes the stream and waits for the file to be complete.
    pub fn finish(mut self) -> Result<(), VideoError> {
        self.wait()?;
        self.finished = true;
        Ok(())
    }

    fn wait(&mut self) -> Result<(), VideoError> {
        self.stdin = None;
        let status = self.child.wait().map_err(|source| VideoError::Io {
            path: self.path.clone(),
            source,
        })?;
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if !status.success() {
            return Err(VideoError::Failed {
                path: self.path.clone(),
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(())
    }
}

impl Drop for Mp4Writer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.stdin = None;
        // The process may have exited already; either way it is gone after
        // this, and so is the partial file, if any.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ffmpeg_is_a_clear_error() {
        let missing = Path::new("/nonexistent/ffmpeg");
        let err = check_encoder(missing).unwrap_err();
        assert!(matches!(err, VideoError::EncoderMissing { .. }));
        assert!(
            err.to_string()
                .contains("needs the `/nonexistent/ffmpeg` program"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = Mp4Writer::create(missing, &dir.path().join("a.mp4"), 16, 16, 24)
            .err()
            .expect("no encoder");
        assert!(matches!(err, VideoError::EncoderMissing { .. }));
    }

    #[test]
    fn an_ffmpeg_without_h264_is_refused() {
        // `true` runs and lists nothing, like an ffmpeg built without encoders.
        let err = check_encoder(Path::new("true")).unwrap_err();
        assert!(matches!(err, VideoError::NoH264 { .. }), "{err}");
    }
}
