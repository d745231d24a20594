//! Pictures out: upscaling decoded faces, laying out tiles and contact
//! sheets, and writing PNG and animated GIF files.
//!
//! Faces leave the model at its own size (64 px for the shipped model) and
//! are upscaled with a Lanczos3 filter, the sharpest of the image crate's
//! filters without visible ringing at these ratios. PNGs are written with
//! fixed encoder settings, so the same pixels always give the same bytes.
//! GIFs get a palette per frame from the image crate's NeuQuant quantizer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::codecs::gif::{GifEncoder, Repeat};
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::{Delay, ImageEncoder, ImageError, Rgb, RgbImage};

use super::plan::Layout;

/// Most frames a contact sheet shows; longer animations are sampled evenly,
/// first and last frame included.
pub const MAX_SHEET_TILES: usize = 64;

/// NeuQuant's sampling factor for GIF palettes (1 is best and slowest, 30
/// fastest). 10 looks the same as 1 on smooth face gradients at a fraction
/// of the time.
pub const GIF_QUANTIZER_SPEED: i32 = 10;

/// Background of grid cells with no tile (a nine-way morph with fewer than
/// nine targets leaves some of its last row empty).
const EMPTY_CELL: Rgb<u8> = Rgb([0, 0, 0]);

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Creating or writing the file failed.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The encoder refused the image.
    #[error("{path}: cannot encode: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: ImageError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode_error(path: &Path) -> impl FnOnce(ImageError) -> OutputError + '_ {
    move |source| OutputError::Encode {
        path: path.to_path_buf(),
        source,
    }
}

/// `face` resized to `size` x `size` with Lanczos3 (returned as is when it
/// already has that size).
pub fn upscale(face: &RgbImage, size: u32) -> RgbImage {
    if face.dimensions() == (size, size) {
        return face.clone();
    }
    image::imageops::resize(face, size, size, FilterType::Lanczos3)
}

/// The frame of `tiles` (model-size faces, row by row) in `layout`, each
/// face `size` px wide.
pub fn compose(tiles: &[&RgbImage], layout: Layout, size: u32) -> RgbImage {
    if layout == Layout::SINGLE {
        return upscale(tiles[0], size);
    }
    let mut frame = RgbImage::from_pixel(layout.columns * size, layout.rows * size, EMPTY_CELL);
    for (i, tile) in tiles.iter().enumerate() {
        let (row, column) = (i as u32 / layout.columns, i as u32 % layout.columns);
        let face = upscale(tile, size);
        image::imageops::replace(
            &mut frame,
            &face,
            i64::from(column * size),
            i64::from(row * size),
        );
    }
    frame
}

/// Indices of at most [`MAX_SHEET_TILES`] of `n` frames, evenly spread,
/// first and last included.
pub fn sheet_picks(n: usize) -> Vec<usize> {
    if n <= MAX_SHEET_TILES {
        return (0..n).collect();
    }
    let last = (MAX_SHEET_TILES - 1) as f64;
    (0..MAX_SHEET_TILES)
        .map(|i| (i as f64 * (n - 1) as f64 / last).round() as usize)
        .collect()
}

/// A grid of equally sized `cells`, `columns` wide (as square as possible
/// when `None`).
pub fn contact_sheet(cells: &[RgbImage], columns: Option<u32>) -> RgbImage {
    let n = cells.len() as u32;
    let columns = columns
        .unwrap_or_else(|| (f64::from(n).sqrt().ceil()) as u32)
        .clamp(1, n.max(1));
    let rows = n.div_ceil(columns).max(1);
    let (w, h) = cells.first().map_or((1, 1), RgbImage::dimensions);
    let mut sheet = RgbImage::from_pixel(columns * w, rows * h, EMPTY_CELL);
    for (i, cell) in cells.iter().enumerate() {
        let (row, column) = (i as u32 / columns, i as u32 % columns);
        image::imageops::replace(&mut sheet, cell, i64::from(column * w), i64::from(row * h));
    }
    sheet
}

/// Writes `image` as a PNG with fixed settings (default zlib level,
/// adaptive filtering), so identical pixels give identical files.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<(), OutputError> {
    let file = File::create(path).map_err(io_error(path))?;
    let mut writer = BufWriter::new(file);
    PngEncoder::new_with_quality(&mut writer, CompressionType::Default, PngFilter::Adaptive)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(encode_error(path))?;
    writer.flush().map_err(io_error(path))
}

/// The GIF file, shared between the encoder (which writes the trailer when
/// dropped, ignoring errors) and [`GifWriter::finish`], which flushes it and
/// reports the first error any write met.
#[derive(Clone)]
struct SharedFile {
    inner: Arc<Mutex<(BufWriter<File>, Option<std::io::Error>)>>,
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.inner.lock().expect("gif file lock");
        let (file, first_error) = &mut *guard;
        file.write(buf).inspect_err(|e| {
            first_error.get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut guard = self.inner.lock().expect("gif file lock");
        guard.0.flush()
    }
}

/// An animated GIF being written frame by frame, looping forever.
pub struct GifWriter {
    encoder: GifEncoder<SharedFile>,
    file: SharedFile,
    delay: Delay,
    path: PathBuf,
}

impl GifWriter {
    /// Starts `path` at `fps` frames per second. GIF counts time in
    /// hundredths of a second, so rates that do not divide 100 are rounded
    /// down per frame (24 fps plays at 25).
    pub fn create(path: &Path, fps: u32) -> Result<Self, OutputError> {
        let file = SharedFile {
            inner: Arc::new(Mutex::new((
                BufWriter::new(File::create(path).map_err(io_error(path))?),
                None,
            ))),
        };
        let mut encoder = GifEncoder::new_with_speed(file.clone(), GIF_QUANTIZER_SPEED);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(encode_error(path))?;
        Ok(Self {
            encoder,
            file,
            delay: Delay::from_numer_denom_ms(1000, fps.max(1)),
            path: path.to_path_buf(),
        })
    }

    /// Appends one frame.
    pub fn push(&mut self, frame: &RgbImage) -> Result<(), OutputError> {
        let rgba = image::DynamicImage::ImageRgb8(frame.clone()).into_rgba8();
        self.encoder
            .encode_frame(image::Frame::from_parts(rgba, 0, 0, self.delay))
            .map_err(encode_error(&self.path))
    }

    /// Writes the trailer and flushes the file.
    pub fn finish(self) -> Result<(), OutputError> {
        let GifWriter {
            encoder,
            mut file,
            path,
            ..
        } = self;
        drop(encoder);
        file.flush().map_err(io_error(&path))?;
        let first_error = file.inner.lock().expect("gif file lock").1.take();
        match first_error {
            Some(e) => Err(io_error(&path)(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::AnimationDecoder;

    fn solid(size: u32, value: u8) -> RgbImage {
        RgbImage::from_pixel(size, size, Rgb([value, value / 2, 255 - value]))
    }

    #[test]
    fn compose_places_tiles_row_by_row() {
        let tiles = [solid(4, 10), solid(4, 20), solid(4, 30), solid(4, 40)];
        let refs: Vec<&RgbImage> = tiles.iter().collect();
        let frame = compose(
            &refs,
            Layout {
                columns: 3,
                rows: 2,
            },
            8,
        );
        assert_eq!(frame.dimensions(), (24, 16));
        assert_eq!(frame.get_pixel(4, 4)[0], 10);
        assert_eq!(frame.get_pixel(20, 4)[0], 30);
        assert_eq!(frame.get_pixel(4, 12)[0], 40);
        assert_eq!(*frame.get_pixel(20, 12), EMPTY_CELL);
    }

    #[test]
    fn sheet_picks_spread_over_long_animations() {
        assert_eq!(sheet_picks(3), [0, 1, 2]);
        let picks = sheet_picks(1000);
        assert_eq!(picks.len(), MAX_SHEET_TILES);
        assert_eq!((picks[0], picks[MAX_SHEET_TILES - 1]), (0, 999));
        assert!(picks.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn contact_sheet_is_square_unless_told() {
        let cells: Vec<RgbImage> = (0..5).map(|i| solid(10, i * 40)).collect();
        assert_eq!(contact_sheet(&cells, None).dimensions(), (30, 20));
        assert_eq!(contact_sheet(&cells, Some(5)).dimensions(), (50, 10));
    }

    #[test]
    fn png_bytes_depend_only_on_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let image = upscale(&solid(16, 77), 64);
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        write_png(&image, &a).unwrap();
        write_png(&image, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(image::open(&a).unwrap().to_rgb8(), image);
    }

    #[test]
    fn gif_holds_every_frame_at_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gif");
        let mut gif = GifWriter::create(&path, 20).unwrap();
        for i in 0..7 {
            gif.push(&solid(32, i * 30)).unwrap();
        }
        gif.finish().unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
            File::open(&path).unwrap(),
        ))
        .unwrap();
        let frames = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 7);
        assert_eq!(frames[0].buffer().dimensions(), (32, 32));
        assert_eq!(frames[3].delay().numer_denom_ms(), (50, 1));
    }

    #[test]
    fn unwritable_paths_are_named() {
        let err = write_png(&solid(4, 0), Path::new("/nonexistent-dir/x.png")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent-dir/x.png: cannot write"),
            "{err}"
        );
    }
}
