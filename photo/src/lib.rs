//! Decoding input photos safely, for the Glow renderer and anything else
//! that takes pictures from users.
//!
//! [`decode_image`] turns PNG, JPEG or WebP bytes of any pixel format
//! (grayscale, alpha, 16-bit, CMYK JPEG) into 8-bit RGB, honouring the EXIF
//! orientation, and refuses empty, truncated, tiny or oversized files with
//! an error naming the input. Oversized means a decompression bomb: the
//! header's dimensions and the decoder's memory are checked against
//! [`ImageLimits`] before any pixel buffer is allocated.
//!
//! This crate has no libtorch in it, so that it can be fuzzed on its own
//! (`fuzz/`, target `image_decode`).

#[cfg(feature = "samples")]
pub mod samples;

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage, Rgba};

/// Smallest side, in pixels, of a photo we accept by default: half the 64 px
/// model, below which the face crop would be upscaled into mush.
pub const DEFAULT_MIN_SIDE: u32 = 32;
/// Largest side by default: a 100-megapixel camera's 12,000 px, with room.
pub const DEFAULT_MAX_SIDE: u32 = 16_384;
/// Most bytes a decoder may allocate by default: a 16,384 x 16,384 RGBA8
/// image is 1 GiB, so this still accepts any real photo of 180 megapixels.
pub const DEFAULT_MAX_ALLOC: u64 = 768 * 1024 * 1024;

/// Most bytes the decoder may allocate while it reads a file's header and
/// metadata, before the pixels: real ICC profiles and EXIF blocks are well
/// under a megabyte.
pub const MAX_HEADER_ALLOC: u64 = 16 * 1024 * 1024;

/// Bounds on the photos a render accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// A photo whose width or height is below this is rejected as too small.
    pub min_side: u32,
    /// A photo whose header claims a larger width or height is rejected
    /// before decoding.
    pub max_side: u32,
    /// Most bytes the decoder may allocate, output image included.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            min_side: DEFAULT_MIN_SIDE,
            max_side: DEFAULT_MAX_SIDE,
            max_alloc: DEFAULT_MAX_ALLOC,
        }
    }
}

/// Why an input photo was refused. Every variant names the input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The reference could not be read.
    #[error("{name}: cannot read: {source}")]
    Read {
        /// The input reference.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file has no bytes.
    #[error("{name}: the file is empty (0 bytes)")]
    Empty {
        /// The input reference.
        name: String,
    },

    /// The bytes are not a PNG, JPEG or WebP image.
    #[error("{name}: not a PNG, JPEG or WebP image{}", found.map(|f| format!(" (it is {f})")).unwrap_or_default())]
    NotAnImage {
        /// The input reference.
        name: String,
        /// The image format detected, when it is one we do not take.
        found: Option<&'static str>,
    },

    /// The file ends before the image does, or its data is corrupt.
    #[error("{name}: the {format} data is truncated or corrupt: {detail}")]
    Corrupt {
        /// The input reference.
        name: String,
        /// The format the header announced.
        format: &'static str,
        /// The decoder's description.
        detail: String,
    },

    /// The image is too small to hold a usable face.
    #[error("{name}: the image is {width}x{height}; photos need at least {min} px on each side")]
    TooSmall {
        /// The input reference.
        name: String,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The configured minimum.
        min: u32,
    },

    /// The header claims dimensions or memory beyond the limits (a
    /// decompression bomb, or simply a photo too large to accept).
    #[error("{name}: the image claims {}; the limit is {max_side} px per side and {} MiB of memory", describe_claim(*width, *height), max_alloc / (1024 * 1024))]
    TooLarge {
        /// The input reference.
        name: String,
        /// The claimed width, when the header was read.
        width: Option<u32>,
        /// The claimed height, when the header was read.
        height: Option<u32>,
        /// The configured side limit.
        max_side: u32,
        /// The configured memory limit.
        max_alloc: u64,
    },
}

fn describe_claim(width: Option<u32>, height: Option<u32>) -> String {
    match (width, height) {
        (Some(w), Some(h)) => format!("{w}x{h} pixels"),
        _ => "more memory than allowed".to_string(),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "an unsupported format",
    }
}

/// Decodes a photo to 8-bit RGB. `name` labels every error.
///
/// Transparent pixels are composited over white (the usual page
/// background), 16-bit channels are rounded to 8 bits, grayscale is spread
/// to three channels, and the EXIF orientation is applied so that a phone
/// photo stands upright.
pub fn decode_image(
    bytes: &[u8],
    name: &str,
    limits: &ImageLimits,
) -> Result<RgbImage, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty { name: name.into() });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("reading from memory cannot fail");
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        other => {
            return Err(InputError::NotAnImage {
                name: name.into(),
                found: other.map(format_name),
            })
        }
    };

    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(InputError::Corrupt {
            name: name.into(),
            format: "JPEG",
            detail: "the file ends before the image's end marker".into(),
        });
    }

    let too_large = |width, height| InputError::TooLarge {
        name: name.into(),
        width,
        height,
        max_side: limits.max_side,
        max_alloc: limits.max_alloc,
    };
    let classify = |e: ImageError| match e {
        ImageError::Limits(_) => too_large(None, None),
        other => InputError::Corrupt {
            name: name.into(),
            format: format_name(format),
            detail: other.to_string(),
        },
    };

    // The header alone: dimensions are checked before a buffer exists. No
    // side limit yet, so that an oversized claim is reported with its
    // dimensions; but a memory bound, because reading the header already
    // inflates compressed metadata (a PNG's ICC profile), which a bomb
    // can make gigabytes large.
    let mut reader = reader;
    let mut header_limits = image::Limits::no_limits();
    header_limits.max_alloc = Some(MAX_HEADER_ALLOC.min(limits.max_alloc));
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width > limits.max_side
        || height > limits.max_side
        || decoder.total_bytes() > limits.max_alloc
    {
        return Err(too_large(Some(width), Some(height)));
    }
    if width < limits.min_side || height < limits.min_side {
        return Err(InputError::TooSmall {
            name: name.into(),
            width,
            height,
            min: limits.min_side,
        });
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_alloc);
    decoder.set_limits(decoder_limits).map_err(classify)?;

    let orientation = decoder.orientation().map_err(classify)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    image.apply_orientation(orientation);
    Ok(to_rgb(image))
}

/// Whether a JPEG's segments run from its start marker to its end marker.
///
/// The JPEG decoder fills a file cut short with gray instead of failing, so
/// truncation is detected here: walk the marker segments, skip each scan's
/// entropy-coded data (where a 0xFF byte is followed by 0x00 stuffing or a
/// restart marker), and require an end-of-image marker. Data after the end
/// marker (some cameras append previews or motion clips) is allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    let is_restart = |m: u8| (0xD0..=0xD7).contains(&m);
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != SOI {
        return false;
    }
    let mut at = 2;
    loop {
        // Markers may be padded with extra 0xFF bytes.
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return false;
        };
        at += 2;
        if marker == EOI {
            return true;
        }
        if is_restart(marker) || marker == 0x01 {
            continue;
        }
        let Some(length) = bytes
            .get(at..at + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        at += length;
        if at > bytes.len() {
            return false;
        }
        if marker == SOS {
            // Entropy-coded data runs to the next marker that is neither
            // byte stuffing nor a restart.
            loop {
                match (bytes.get(at), bytes.get(at + 1)) {
                    (Some(0xFF), Some(&next)) if next != 0x00 && !is_restart(next) => break,
                    (Some(_), Some(_)) => at += 1,
                    _ => return false,
                }
            }
        }
    }
}

/// 8-bit RGB of any decoded image, alpha composited over white.
fn to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, Rgba([r, g, b, a])) in rgb.pixels_mut().zip(rgba.pixels()) {
        let over_white = |c: u8| {
            let (c, a) = (u32::from(c), u32::from(*a));
            // Rounded c * a / 255 + 255 * (255 - a) / 255 in integers.
            ((c * a + 255 * (255 - a) + 127) / 255) as u8
        };
        *out = image::Rgb([over_white(*r), over_white(*g), over_white(*b)]);
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Luma, LumaA, Rgb};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 3) as u8, (y * 2) as u8, 128])
        })
    }

    fn decode(bytes: &[u8]) -> Result<RgbImage, InputError> {
        decode_image(bytes, "face.x", &ImageLimits::default())
    }

    #[test]
    fn reads_png_jpeg_and_webp() {
        let image = DynamicImage::ImageRgb8(gradient(80, 60));
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let rgb = decode(&encode(&image, format)).unwrap();
            assert_eq!(rgb.dimensions(), (80, 60), "{format:?}");
            let p = rgb.get_pixel(40, 30);
            assert!((i32::from(p[0]) - 120).abs() <= 8, "{format:?} {p:?}");
        }
    }

    #[test]
    fn converts_gray_alpha_and_sixteen_bit() {
        let gray = DynamicImage::ImageLuma8(image::ImageBuffer::from_pixel(40, 40, Luma([90u8])));
        assert_eq!(
            *decode(&encode(&gray, ImageFormat::Png))
                .unwrap()
                .get_pixel(3, 3),
            Rgb([90, 90, 90])
        );

        let transparent =
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_pixel(40, 40, LumaA([0u8, 0])));
        let half = DynamicImage::ImageRgba8(image::ImageBuffer::from_pixel(
            40,
            40,
            Rgba([0u8, 0, 0, 128]),
        ));
        assert_eq!(
            *decode(&encode(&transparent, ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 0),
            Rgb([255; 3])
        );
        assert_eq!(
            *decode(&encode(&half, ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 0),
            Rgb([127; 3])
        );

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            40,
            40,
            Rgb([65535u16, 32896, 0]),
        ));
        assert_eq!(
            *decode(&encode(&deep, ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 0),
            Rgb([255, 128, 0])
        );
    }

    #[test]
    fn converts_cmyk_jpeg() {
        // 64x64 in four quadrants, red, green, blue and white, saved as CMYK
        // (Adobe's inverted form) by ImageMagick.
        let rgb = decode(include_bytes!("../tests/data/cmyk.jpg")).unwrap();
        let near =
            |p: &Rgb<u8>, want: [u8; 3]| p.0.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 24);
        for ((x, y), want) in [
            ((8, 8), [255, 0, 0]),
            ((56, 8), [0, 255, 0]),
            ((8, 56), [0, 0, 255]),
            ((56, 56), [255; 3]),
        ] {
            let p = rgb.get_pixel(x, y);
            assert!(near(p, want), "({x}, {y}) is {p:?}, expected {want:?}");
        }
    }

    #[test]
    fn applies_the_exif_orientation() {
        // Stored 40 wide and 60 tall, red above blue, tagged "rotate 90
        // degrees clockwise to display" (EXIF orientation 6).
        let stored = RgbImage::from_fn(40, 60, |_, y| {
            if y < 30 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let bytes = crate::samples::jpeg_with_orientation_6(&stored);

        let upright = decode(&bytes).unwrap();
        assert_eq!(upright.dimensions(), (60, 40));
        assert!(
            upright.get_pixel(55, 20)[0] > 200,
            "the top is now on the right"
        );
        assert!(
            upright.get_pixel(5, 20)[2] > 200,
            "the bottom is now on the left"
        );
    }

    #[test]
    fn rejects_empty_and_non_images() {
        assert!(matches!(decode(b""), Err(InputError::Empty { .. })));
        let err = decode(b"hello, this is text and not a picture").unwrap_err();
        assert!(matches!(err, InputError::NotAnImage { found: None, .. }));
        assert!(
            err.to_string()
                .starts_with("face.x: not a PNG, JPEG or WebP image"),
            "{err}"
        );
        let gif = encode(&DynamicImage::ImageRgb8(gradient(40, 40)), ImageFormat::Gif);
        assert!(decode(&gif)
            .unwrap_err()
            .to_string()
            .contains("(it is GIF)"));
    }

    #[test]
    fn rejects_truncated_files() {
        let image = DynamicImage::ImageRgb8(gradient(96, 96));
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let bytes = encode(&image, format);
            // Half the file, and just the last pixel rows (the end chunk or
            // marker follows them).
            for cut in [bytes.len() / 2, bytes.len() - 20] {
                match decode(&bytes[..cut]) {
                    Err(err @ InputError::Corrupt { .. }) => {
                        assert!(err.to_string().contains("truncated or corrupt"), "{err}")
                    }
                    Err(other) => panic!("{format:?} cut at {cut}: {other}"),
                    Ok(_) => panic!("{format:?} cut at {cut} decoded"),
                }
            }
        }
    }

    #[test]
    fn accepts_data_after_a_jpeg_end_marker() {
        let mut bytes = encode(
            &DynamicImage::ImageRgb8(gradient(48, 48)),
            ImageFormat::Jpeg,
        );
        bytes.extend_from_slice(b"trailing camera data \xFF\xD8");
        assert_eq!(decode(&bytes).unwrap().dimensions(), (48, 48));
    }

    #[test]
    fn rejects_tiny_images_with_a_configurable_limit() {
        let bytes = encode(&DynamicImage::ImageRgb8(gradient(8, 8)), ImageFormat::Png);
        let err = decode(&bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("is 8x8; photos need at least 32 px"),
            "{err}"
        );
        let lenient = ImageLimits {
            min_side: 8,
            ..ImageLimits::default()
        };
        assert_eq!(
            decode_image(&bytes, "x", &lenient).unwrap().dimensions(),
            (8, 8)
        );
    }

    #[test]
    fn rejects_a_decompression_bomb_before_allocating() {
        // A valid PNG header that claims 50000x50000 RGB pixels, with one
        // compressed row of data: decoding it would need 7 GB.
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&[0u8; 3 * 64 * 64], 64, 64, image::ExtendedColorType::Rgb8)
            .unwrap();
        let ihdr = 16; // 8-byte signature, 4-byte length, 4-byte "IHDR".
        bytes[ihdr..ihdr + 4].copy_from_slice(&50_000u32.to_be_bytes());
        bytes[ihdr + 4..ihdr + 8].copy_from_slice(&50_000u32.to_be_bytes());
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());

        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::TooLarge {
                    width: Some(50_000),
                    height: Some(50_000),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("claims 50000x50000 pixels"),
            "{err}"
        );

        let strict = ImageLimits {
            max_side: 4096,
            max_alloc: 1024,
            ..ImageLimits::default()
        };
        let normal = encode(&DynamicImage::ImageRgb8(gradient(64, 64)), ImageFormat::Png);
        assert!(matches!(
            decode_image(&normal, "x", &strict),
            Err(InputError::TooLarge { .. })
        ));
    }
}
