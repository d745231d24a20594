//! `glow`: Glowline's offline tool. Trains, evaluates and runs the Glow
//! model locally, with no server at all.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "glow",
    version,
    about = "Glow flow model: train, evaluate, sample, encode and render faces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a face folder, with checkpoints that can be resumed.
    Train(cli::train::TrainArgs),
    /// Write a shipped (f16) model from a training checkpoint, with its test bits/dim.
    Export(cli::train::ExportArgs),
    /// Print bits per dimension of a model on a data split.
    Eval(cli::run::EvalArgs),
    /// Draw random faces at a temperature into a PNG grid.
    Sample(cli::run::SampleArgs),
    /// Encode faces and decode them again: originals above, reconstructions below.
    Reconstruct(cli::run::ReconstructArgs),
    /// Print a model file's config and metadata.
    Info(cli::run::InfoArgs),
    /// Measure encode, decode and training speed of a config on this machine.
    Bench(cli::bench::BenchArgs),
    /// Render a job spec (edit, mix, morph, sample) to PNG, GIF and MP4.
    Render(cli::render::RenderArgs),
    /// Compute a model's attribute directions from labelled CelebA faces.
    Directions(cli::render::DirectionsArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Train(args) => cli::train::train(args),
        Command::Export(args) => cli::train::export(args),
        Command::Eval(args) => cli::run::eval(args),
        Command::Sample(args) => cli::run::sample(args),
        Command::Reconstruct(args) => cli::run::reconstruct(args),
        Command::Info(args) => cli::run::info(args),
        Command::Bench(args) => cli::bench::bench(args),
        Command::Render(args) => cli::render::render(args),
        Command::Directions(args) => cli::render::directions(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
