//! How a caller watches and stops a render: [`RenderHooks`] hears progress
//! and is asked, between batches and frames, whether to stop.
//!
//! The command line shows an indicatif progress bar and stops on Ctrl-C
//! ([`ProgressBarHooks`]); a queue worker records progress in its database
//! and stops when a job is cancelled, through the same trait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The stages of a render, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading and decoding the input photos.
    ReadInputs,
    /// Encoding faces to latents.
    Encode,
    /// Decoding latents to faces, batch by batch.
    Decode,
    /// Writing PNG, GIF and MP4 files.
    Write,
}

impl Stage {
    /// A short name for logs and progress bars.
    pub fn name(self) -> &'static str {
        match self {
            Stage::ReadInputs => "reading inputs",
            Stage::Encode => "encoding",
            Stage::Decode => "decoding",
            Stage::Write => "writing",
        }
    }
}

/// Callbacks a render makes while it runs. Both have no-op defaults.
pub trait RenderHooks {
    /// A new stage begins.
    fn stage(&self, _stage: Stage) {}

    /// The whole job is `fraction` (0 to 1) done.
    fn progress(&self, _fraction: f32) {}

    /// Polled between batches and between written frames: returning true
    /// stops the render with [`RenderError::Cancelled`](super::RenderError::Cancelled).
    fn should_cancel(&self) -> bool {
        false
    }
}

/// Hooks that do nothing: a render that runs to the end unwatched.
pub struct NoHooks;

impl RenderHooks for NoHooks {}

/// Steps of the progress bar: per mille, fine enough for any job.
const BAR_STEPS: u64 = 1000;

/// How often the bar redraws by itself (for its elapsed time and ETA).
const BAR_TICK: Duration = Duration::from_millis(200);

/// A terminal progress bar, and a flag that stops the render when set
/// (the command line sets it on Ctrl-C).
pub struct ProgressBarHooks {
    bar: ProgressBar,
    cancel: Arc<AtomicBool>,
}

impl ProgressBarHooks {
    /// A bar on stderr, stopping when `cancel` becomes true.
    pub fn new(cancel: Arc<AtomicBool>) -> Self {
        let bar = ProgressBar::new(BAR_STEPS);
        bar.set_style(
            ProgressStyle::with_template("{msg:>15} [{bar:40}] {percent:>3}% {elapsed} ETA {eta}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(BAR_TICK);
        Self { bar, cancel }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl RenderHooks for ProgressBarHooks {
    fn stage(&self, stage: Stage) {
        self.bar.set_message(stage.name());
    }

    fn progress(&self, fraction: f32) {
        self.bar
            .set_position((f64::from(fraction.clamp(0.0, 1.0)) * BAR_STEPS as f64) as u64);
    }

    fn should_cancel(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
