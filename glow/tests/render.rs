//! Renders every operation end to end with a tiny Glow model made inside
//! the test (initialized from the test faces, saved and loaded back like a
//! shipped model) and checks what lands on disk: file names, frame counts,
//! sizes, that the GIF decodes and ffprobe reads the MP4, byte-identical
//! PNGs for a repeated job, and a clear error for each kind of bad input.
//!
//! Needs `ffmpeg` and `ffprobe` on the PATH (scripts/setup.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

mod common;

use common::photo;
use contract::spec::{JobSpec, CELEBA_ATTRIBUTES};
use glow::directions::{DirectionAccumulator, Directions, ATTRIBUTE_COUNT};
use glow::render::{
    sha256_file, DirInputs, InputError, NoHooks, RenderConfig, RenderError, RenderHooks,
    RenderReport, Renderer, VideoError,
};
use glow::Glow;
use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, DynamicImage, ImageFormat, RgbImage};
use tch::{Device, Kind, Tensor};

/// Output face size of the test jobs: even, so MP4 works.
const OUT: u32 = 32;

/// A tiny model, its directions and a folder of test faces.
struct Fixture {
    dir: tempfile::TempDir,
    model: Glow,
    sha256: String,
    directions: Directions,
}

/// The test faces, in several formats.
const FACES: [&str; 6] = ["a.png", "b.jpg", "c.webp", "d.png", "e.jpg", "f.png"];

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in FACES.iter().enumerate() {
            let format = ImageFormat::from_path(name).unwrap();
            DynamicImage::ImageRgb8(photo(i as u32, 80, 96))
                .save_with_format(dir.path().join(name), format)
                .unwrap();
        }

        let model_path = dir.path().join("tiny.safetensors");
        common::save_tiny_model(&model_path);
        let model = Glow::load(&model_path, Device::Cpu).unwrap();
        let sha256 = sha256_file(&model_path).unwrap();

        // Directions from random latents with alternating labels: every
        // attribute has faces on both sides.
        let mut acc = DirectionAccumulator::new(model.latent_dim(), Device::Cpu);
        let latents = Tensor::randn([8, model.latent_dim()], (Kind::Float, Device::Cpu));
        let labels: Vec<[i8; ATTRIBUTE_COUNT]> = (0..8)
            .map(|i| std::array::from_fn(|a| if (i + a) % 2 == 0 { 1 } else { -1 }))
            .collect();
        acc.add(&latents, &labels).unwrap();
        let directions = acc.finish(&sha256, "test latents");

        Fixture {
            dir,
            model,
            sha256,
            directions,
        }
    }

    fn renderer(&self) -> Renderer<'_> {
        Renderer::new(
            &self.model,
            self.sha256.clone(),
            Some(&self.directions),
            RenderConfig::default(),
        )
    }

    fn render(&self, spec: &str, out: &str) -> Result<(RenderReport, PathBuf), RenderError> {
        self.render_with(&self.renderer(), spec, out, &NoHooks)
    }

    fn render_with(
        &self,
        renderer: &Renderer<'_>,
        spec: &str,
        out: &str,
        hooks: &dyn RenderHooks,
    ) -> Result<(RenderReport, PathBuf), RenderError> {
        let mut spec = JobSpec::from_json(spec)?;
        // The test photos are coloured ovals, not faces, so they go to the
        // model unaligned; tests/align.rs renders real faces.
        spec.alignment.skip = true;
        let out = self.dir.path().join(out);
        let report = renderer.render(&spec, &DirInputs::new(self.dir.path()), &out, hooks)?;
        Ok((report, out))
    }
}

fn png(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn gif_frames(path: &Path) -> Vec<image::Frame> {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap()
}

/// (frame count, width, height, codec, pixel format) of an MP4, read by ffprobe.
fn probe_mp4(path: &Path) -> (usize, u32, u32, String, String) {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height,codec_name,pix_fmt",
        ])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    (
        field("nb_read_frames").parse().unwrap(),
        field("width").parse().unwrap(),
        field("height").parse().unwrap(),
        field("codec_name"),
        field("pix_fmt"),
    )
}

fn assert_faststart(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let find = |tag: &[u8]| bytes.windows(4).position(|w| w == tag).unwrap();
    assert!(
        find(b"moov") < find(b"mdat"),
        "the index must precede the media data"
    );
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_edit_moves_the_face_and_reports_the_job() {
    let fx = Fixture::new();
    let spec = |strength: f64| {
        format!(
            r#"{{"version": 1, "operation": {{"kind": "edit", "input": "a.png",
                "attributes": {{"smiling": {strength}, "Eyeglasses": {strength}}}}},
                "output": {{"size": {OUT}, "formats": ["png"]}}}}"#
        )
    };
    let (report, out) = fx.render(&spec(2.0), "edit").unwrap();
    assert_eq!(files_in(&out), ["report.json", "result.png"]);
    let edited = png(&out.join("result.png"));
    assert_eq!(edited.dimensions(), (OUT, OUT));
    assert_eq!(report.frames.rendered, 1);

    let (_, plain) = fx.render(&spec(0.0), "edit-zero").unwrap();
    assert_ne!(
        png(&plain.join("result.png")),
        edited,
        "an edit changes the face"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["kind"], "edit");
    assert_eq!(json["model_sha256"], fx.sha256.as_str());
    assert_eq!(json["spec"]["operation"]["input"], "a.png");
    assert_eq!(json["frames"]["rendered"], 1);
    assert_eq!(json["seed"], 0);
    for stage in ["read_inputs", "encode", "decode", "compose", "png", "total"] {
        assert!(json["timings"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
}

#[test]
fn an_edit_sweep_writes_frames_gif_and_mp4() {
    let fx = Fixture::new();
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "edit_sweep", "input": "b.jpg",
            "attribute": "beard", "strength": 1.5, "frames": 7}},
            "output": {{"size": {OUT}, "fps": 10, "formats": ["frames", "gif", "mp4"]}}}}"#
    );
    let (report, out) = fx.render(&spec, "sweep").unwrap();
    assert_eq!(
        files_in(&out),
        ["animation.gif", "animation.mp4", "frames", "report.json"]
    );
    let frames = files_in(&out.join("frames"));
    assert_eq!(frames.len(), 7);
    assert_eq!(frames[0], "frame_0000.png");
    assert_eq!(
        png(&out.join("frames/frame_0006.png")).dimensions(),
        (OUT, OUT)
    );
    assert_ne!(
        png(&out.join("frames/frame_0000.png")),
        png(&out.join("frames/frame_0006.png"))
    );

    let gif = gif_frames(&out.join("animation.gif"));
    assert_eq!(gif.len(), 7);
    assert_eq!(gif[0].buffer().dimensions(), (OUT, OUT));
    assert_eq!(gif[0].delay().numer_denom_ms(), (100, 1));

    let (count, width, height, codec, pix_fmt) = probe_mp4(&out.join("animation.mp4"));
    assert_eq!((count, width, height), (7, OUT, OUT));
    assert_eq!((codec.as_str(), pix_fmt.as_str()), ("h264", "yuv420p"));
    assert_faststart(&out.join("animation.mp4"));
    assert_eq!((report.frames.rendered, report.frames.played), (7, 7));
    assert_eq!(report.outputs.len(), 9);
}

#[test]
fn a_mix_lands_on_its_faces_at_the_ends() {
    let fx = Fixture::new();
    let mix = |alpha: f64, out: &str| {
        let spec = format!(
            r#"{{"version": 1, "operation": {{"kind": "mix", "from": "a.png", "to": "c.webp",
                "alpha": {alpha}}}, "output": {{"size": {OUT}}}}}"#
        );
        std::fs::read(fx.render(&spec, out).unwrap().1.join("result.png")).unwrap()
    };
    let sweep = format!(
        r#"{{"version": 1, "operation": {{"kind": "mix_sweep", "from": "a.png", "to": "c.webp",
            "frames": 5}}, "output": {{"size": {OUT}, "formats": ["frames", "contact_sheet"],
            "sheet_columns": 5}}}}"#
    );
    let (_, out) = fx.render(&sweep, "mix-sweep").unwrap();
    let frame = |i: usize| std::fs::read(out.join(format!("frames/frame_{i:04}.png"))).unwrap();
    assert_eq!(mix(0.0, "mix0"), frame(0), "alpha 0 is the first face");
    assert_eq!(mix(1.0, "mix1"), frame(4), "alpha 1 is the second face");
    let middle = mix(0.5, "mix-half");
    assert_ne!(middle, frame(0));
    assert_eq!(middle, frame(2), "the sweep's middle frame is the half mix");
    assert_eq!(
        png(&out.join("contact_sheet.png")).dimensions(),
        (5 * OUT, OUT)
    );
}

#[test]
fn a_looped_mix_sweep_plays_back_and_holds() {
    let fx = Fixture::new();
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "mix_sweep", "from": "d.png", "to": "e.jpg",
            "frames": 6}}, "output": {{"size": {OUT}, "loop": true, "loop_hold": 3}}}}"#
    );
    let (report, out) = fx.render(&spec, "loop").unwrap();
    // 6 forward, 3 held, 4 back, 3 held.
    assert_eq!(report.frames.played, 16);
    assert_eq!(gif_frames(&out.join("animation.gif")).len(), 16);
    assert_eq!(probe_mp4(&out.join("animation.mp4")).0, 16);
    let gif = gif_frames(&out.join("animation.gif"));
    assert_eq!(
        gif[1].buffer(),
        gif[gif.len() - 4].buffer(),
        "frame 1 comes back on the way home"
    );
}

#[test]
fn a_morph_chain_visits_each_face_with_holds() {
    let fx = Fixture::new();
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "morph_chain",
            "faces": ["a.png", "b.jpg", "c.webp"], "frames_per_leg": 3, "hold": 2}},
            "output": {{"size": {OUT}, "formats": ["mp4", "gif", "frames"]}}}}"#
    );
    let (report, out) = fx.render(&spec, "chain").unwrap();
    // Two legs of three, the last face, and two extra frames at each face.
    assert_eq!((report.frames.rendered, report.frames.played), (7, 13));
    assert_eq!(files_in(&out.join("frames")).len(), 7);
    assert_eq!(probe_mp4(&out.join("animation.mp4")).0, 13);
    assert_eq!(gif_frames(&out.join("animation.gif")).len(), 13);
}

#[test]
fn a_nine_way_morph_is_a_grid_video() {
    let fx = Fixture::new();
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "nine_way_morph", "base": "a.png",
            "targets": ["b.jpg", "c.webp", "d.png", "e.jpg", "f.png"], "frames": 4}},
            "output": {{"size": {OUT}, "formats": ["mp4", "gif", "contact_sheet", "frames"]}}}}"#
    );
    let (report, out) = fx.render(&spec, "nine").unwrap();
    // Five targets fill a 3x2 grid.
    assert_eq!(report.frame_size, [3 * OUT, 2 * OUT]);
    let (count, width, height, _, _) = probe_mp4(&out.join("animation.mp4"));
    assert_eq!((count, width, height), (4, 3 * OUT, 2 * OUT));
    let gif = gif_frames(&out.join("animation.gif"));
    assert_eq!(
        (gif.len(), gif[0].buffer().dimensions()),
        (4, (3 * OUT, 2 * OUT))
    );
    assert_eq!(
        report.frames.tiles_decoded,
        1 + 3 * 5,
        "the base is decoded once"
    );

    // The first frame shows the base in every tile; the sixth cell is empty.
    let first = png(&out.join("frames/frame_0000.png"));
    let tile = |img: &RgbImage, c: u32, r: u32| {
        image::imageops::crop_imm(img, c * OUT, r * OUT, OUT, OUT).to_image()
    };
    assert_eq!(tile(&first, 0, 0), tile(&first, 1, 1));
    assert!(tile(&first, 2, 1).pixels().all(|p| p.0 == [0; 3]));
    let last = png(&out.join("frames/frame_0003.png"));
    assert_ne!(
        tile(&last, 0, 0),
        tile(&last, 1, 0),
        "each tile ends on its own target"
    );
    // Four frames in a 2x2 sheet; each grid is shrunk to about one face
    // wide (faces of OUT / 3 px).
    let face = OUT / 3;
    assert_eq!(
        png(&out.join("contact_sheet.png")).dimensions(),
        (2 * 3 * face, 2 * 2 * face)
    );
}

#[test]
fn samples_are_reproducible_from_the_seed() {
    let fx = Fixture::new();
    let spec = |seed: u64| {
        format!(
            r#"{{"version": 1, "operation": {{"kind": "sample", "count": 4, "temperature": 0.7}},
                "output": {{"size": {OUT}, "formats": ["png", "contact_sheet"]}}, "seed": {seed}}}"#
        )
    };
    let (report, out) = fx.render(&spec(7), "samples").unwrap();
    assert_eq!(
        files_in(&out),
        [
            "contact_sheet.png",
            "report.json",
            "sample_00.png",
            "sample_01.png",
            "sample_02.png",
            "sample_03.png"
        ]
    );
    assert_eq!(report.seed, 7);
    assert_eq!(
        png(&out.join("contact_sheet.png")).dimensions(),
        (2 * OUT, 2 * OUT)
    );
    let (_, again) = fx.render(&spec(7), "samples-again").unwrap();
    let (_, other) = fx.render(&spec(8), "samples-other").unwrap();
    let bytes = |dir: &Path| std::fs::read(dir.join("sample_02.png")).unwrap();
    assert_eq!(bytes(&out), bytes(&again));
    assert_ne!(bytes(&out), bytes(&other));
}

#[test]
fn the_same_job_gives_byte_identical_pngs() {
    let fx = Fixture::new();
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "nine_way_morph", "base": "b.jpg",
            "targets": ["a.png", "c.webp", "d.png"], "frames": 3}},
            "output": {{"size": {OUT}, "formats": ["frames", "contact_sheet"]}}}}"#
    );
    let (_, first) = fx.render(&spec, "same-1").unwrap();
    let (_, second) = fx.render(&spec, "same-2").unwrap();
    for name in [
        "frames/frame_0000.png",
        "frames/frame_0001.png",
        "frames/frame_0002.png",
        "contact_sheet.png",
    ] {
        assert_eq!(
            std::fs::read(first.join(name)).unwrap(),
            std::fs::read(second.join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn bad_inputs_are_refused_with_their_name() {
    let fx = Fixture::new();
    let good = std::fs::read(fx.dir.path().join("a.png")).unwrap();
    std::fs::write(fx.dir.path().join("empty.png"), b"").unwrap();
    std::fs::write(fx.dir.path().join("notes.jpg"), b"this is a text file").unwrap();
    std::fs::write(fx.dir.path().join("cut.png"), &good[..good.len() / 2]).unwrap();
    DynamicImage::ImageRgb8(photo(1, 8, 8))
        .save(fx.dir.path().join("tiny.png"))
        .unwrap();

    let edit = |input: &str| {
        let spec = format!(
            r#"{{"version": 1, "operation": {{"kind": "mix", "from": "a.png", "to": "{input}",
                "alpha": 0.5}}, "output": {{"size": {OUT}}}}}"#
        );
        let err = fx.render(&spec, "bad").unwrap_err();
        assert!(err.to_string().contains(input), "{err}");
        err
    };
    assert!(matches!(
        edit("empty.png"),
        RenderError::Input(InputError::Empty { .. })
    ));
    assert!(matches!(
        edit("notes.jpg"),
        RenderError::Input(InputError::NotAnImage { .. })
    ));
    assert!(matches!(
        edit("cut.png"),
        RenderError::Input(InputError::Corrupt { .. })
    ));
    assert!(matches!(
        edit("tiny.png"),
        RenderError::Input(InputError::TooSmall { width: 8, .. })
    ));
    assert!(matches!(
        edit("missing.png"),
        RenderError::Input(InputError::Read { .. })
    ));
}

#[test]
fn a_png_claiming_50000_pixels_a_side_is_refused() {
    let fx = Fixture::new();
    let mut bytes = std::fs::read(fx.dir.path().join("a.png")).unwrap();
    // Rewrite the header's width and height, and its checksum.
    bytes[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(fx.dir.path().join("bomb.png"), bytes).unwrap();
    let spec = r#"{"version": 1, "operation": {"kind": "edit", "input": "bomb.png",
        "attributes": {"smiling": 1}}}"#;
    let err = fx.render(spec, "bomb").unwrap_err();
    assert!(
        matches!(err, RenderError::Input(InputError::TooLarge { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("bomb.png: the image claims 50000x50000"),
        "{err}"
    );
}

#[test]
fn an_invalid_spec_is_refused_before_any_work() {
    let fx = Fixture::new();
    let too_many = r#"{"version": 1, "operation": {"kind": "nine_way_morph", "base": "a.png",
        "targets": ["a","b","c","d","e","f","g","h","i","j"], "frames": 4}}"#;
    let err = fx.render(too_many, "invalid").unwrap_err();
    assert!(err.to_string().contains("lists 10 faces"), "{err}");
    assert!(!fx.dir.path().join("invalid").exists());
}

#[test]
fn edits_need_directions_for_this_model() {
    let fx = Fixture::new();
    let renderer = Renderer::new(&fx.model, fx.sha256.clone(), None, RenderConfig::default());
    let spec = r#"{"version": 1, "operation": {"kind": "edit", "input": "a.png",
        "attributes": {"smiling": 1}}}"#;
    let err = fx
        .render_with(&renderer, spec, "no-directions", &NoHooks)
        .unwrap_err();
    assert!(
        matches!(err, RenderError::NoDirections { kind: "edit" }),
        "{err}"
    );

    let path = fx.dir.path().join("other.directions.safetensors");
    fx.directions.save(&path).unwrap();
    let loaded = Directions::load(&path).unwrap();
    assert!(loaded
        .check_model(&path, &fx.sha256, fx.model.latent_dim())
        .is_ok());
    assert!(loaded
        .check_model(&path, "0000", fx.model.latent_dim())
        .is_err());
    assert_eq!(CELEBA_ATTRIBUTES.len(), ATTRIBUTE_COUNT);
}

#[test]
fn a_missing_encoder_fails_before_decoding() {
    let fx = Fixture::new();
    let config = RenderConfig {
        ffmpeg: PathBuf::from("/nonexistent/ffmpeg"),
        ..RenderConfig::default()
    };
    let renderer = Renderer::new(&fx.model, fx.sha256.clone(), None, config);
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "mix_sweep", "from": "a.png", "to": "b.jpg",
            "frames": 3}}, "output": {{"size": {OUT}, "formats": ["mp4"]}}}}"#
    );
    let err = fx
        .render_with(&renderer, &spec, "no-ffmpeg", &NoHooks)
        .unwrap_err();
    assert!(
        matches!(err, RenderError::Video(VideoError::EncoderMissing { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("leave mp4 out of output.formats"),
        "{err}"
    );
    assert!(
        !fx.dir.path().join("no-ffmpeg").exists(),
        "nothing was started"
    );
}

/// Records progress and cancels after a number of polls.
struct Watcher {
    polls_before_cancel: usize,
    polls: AtomicUsize,
    progress: Mutex<Vec<f32>>,
}

impl RenderHooks for Watcher {
    fn progress(&self, fraction: f32) {
        self.progress.lock().unwrap().push(fraction);
    }

    fn should_cancel(&self) -> bool {
        self.polls.fetch_add(1, Ordering::SeqCst) >= self.polls_before_cancel
    }
}

#[test]
fn progress_rises_to_one_and_cancellation_stops_the_render() {
    let fx = Fixture::new();
    let spec = format!(
        r#"{{"version": 1, "operation": {{"kind": "mix_sweep", "from": "a.png", "to": "b.jpg",
            "frames": 12}}, "output": {{"size": {OUT}}}}}"#
    );
    let watch = Watcher {
        polls_before_cancel: usize::MAX,
        polls: AtomicUsize::new(0),
        progress: Mutex::new(Vec::new()),
    };
    fx.render_with(&fx.renderer(), &spec, "watched", &watch)
        .unwrap();
    let seen = watch.progress.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&1.0));
    assert!(
        watch.polls.load(Ordering::SeqCst) > 12,
        "polled between frames"
    );

    let cancel = Watcher {
        polls_before_cancel: 5,
        polls: AtomicUsize::new(0),
        progress: Mutex::new(Vec::new()),
    };
    let err = fx
        .render_with(&fx.renderer(), &spec, "cancelled", &cancel)
        .unwrap_err();
    assert!(matches!(err, RenderError::Cancelled), "{err}");
    let out = fx.dir.path().join("cancelled");
    assert!(
        !out.join("animation.mp4").exists(),
        "a partial MP4 is removed"
    );
    assert!(!out.join("report.json").exists());
}
