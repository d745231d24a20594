//! Image files for tests and for the fuzzer's seed corpus: small valid
//! pictures in every accepted format, and hostile ones (headers that lie
//! about their size, decompression bombs, broken checksums) built by
//! rewriting valid files, so that each differs from a real photo in exactly
//! one way.

use std::io::{Cursor, Write};

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat, Rgb, RgbImage};

/// The eight bytes every PNG starts with.
const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// Where the IHDR chunk's data starts: the signature, then the chunk's
/// length and type.
const IHDR_DATA: usize = 16;
/// PNG colour type of 8-bit RGB with alpha.
pub const PNG_RGBA: u8 = 6;
/// PNG colour type of 8-bit RGB.
pub const PNG_RGB: u8 = 2;

/// A gradient whose colours depend on `seed`, so that two samples differ.
pub fn gradient(width: u32, height: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x as u8).wrapping_mul(3).wrapping_add(seed),
            (y as u8).wrapping_mul(2),
            seed.wrapping_mul(37),
        ])
    })
}

/// `image` encoded as `format`.
pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image.clone())
        .write_to(&mut bytes, format)
        .expect("encoding to memory cannot fail");
    bytes.into_inner()
}

/// A valid PNG of `width` x `height`.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(&gradient(width, height, 0), ImageFormat::Png)
}

/// A valid baseline JPEG of `width` x `height`.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(&gradient(width, height, 0), ImageFormat::Jpeg)
}

/// A valid lossless WebP of `width` x `height`.
pub fn webp(width: u32, height: u32) -> Vec<u8> {
    encode(&gradient(width, height, 0), ImageFormat::WebP)
}

/// `image` as a JPEG tagged with EXIF orientation 6 ("rotate 90 degrees
/// clockwise to display"), as a phone held sideways writes it: decoding
/// should turn it a quarter to the right.
pub fn jpeg_with_orientation_6(image: &RgbImage) -> Vec<u8> {
    let exif = [
        0x49, 0x49, 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00, // little-endian TIFF, IFD at 8
        0x01, 0x00, // one entry
        0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00,
        0x00, // Orientation = 6
        0x00, 0x00, 0x00, 0x00, // no next IFD
    ];
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 95);
    encoder
        .set_exif_metadata(exif.to_vec())
        .expect("the JPEG encoder takes EXIF");
    encoder
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .expect("encoding to memory cannot fail");
    bytes
}

/// A valid GIF of `width` x `height` (a format photos are not taken in).
pub fn gif(width: u32, height: u32) -> Vec<u8> {
    encode(&gradient(width, height, 0), ImageFormat::Gif)
}

/// One PNG chunk: length, type, data and the CRC of type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(kind);
    hasher.update(data);
    let length = u32::try_from(data.len()).expect("a PNG chunk holds under 4 GiB");
    let mut chunk = length.to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&hasher.finalize().to_be_bytes());
    chunk
}

/// An IHDR chunk's data: 8-bit samples of `color_type`, no interlacing.
fn ihdr(width: u32, height: u32, color_type: u8) -> Vec<u8> {
    let mut data = width.to_be_bytes().to_vec();
    data.extend_from_slice(&height.to_be_bytes());
    data.extend_from_slice(&[8, color_type, 0, 0, 0]);
    data
}

/// `length` zero bytes, zlib-compressed: about a thousandth of the size.
pub fn zlib_zeros(length: usize) -> Vec<u8> {
    const BLOCK: usize = 1 << 20;
    let zeros = vec![0u8; BLOCK.min(length)];
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let mut left = length;
    while left > 0 {
        let n = left.min(BLOCK);
        encoder
            .write_all(&zeros[..n])
            .expect("writing to memory cannot fail");
        left -= n;
    }
    encoder.finish().expect("writing to memory cannot fail")
}

/// A PNG whose header claims `width` x `height` pixels of `color_type`
/// (see [`PNG_RGB`], [`PNG_RGBA`]) with a correct checksum, followed by the
/// pixel data of a 64 x 64 picture: a decoder that trusts the header
/// allocates for the claim before it finds the data missing.
pub fn png_claiming(width: u32, height: u32, color_type: u8) -> Vec<u8> {
    let mut bytes = PNG_SIGNATURE.to_vec();
    bytes.extend(png_chunk(b"IHDR", &ihdr(width, height, color_type)));
    bytes.extend(png_chunk(b"IDAT", &zlib_zeros(64 * (64 * 3 + 1))));
    bytes.extend(png_chunk(b"IEND", &[]));
    bytes
}

/// A valid 64 x 64 PNG whose pixel data inflates to `inflated` bytes, far
/// more than its rows need: the decoder must stop at the rows it needs.
pub fn png_pixel_bomb(inflated: usize) -> Vec<u8> {
    let mut bytes = PNG_SIGNATURE.to_vec();
    bytes.extend(png_chunk(b"IHDR", &ihdr(64, 64, PNG_RGB)));
    bytes.extend(png_chunk(b"IDAT", &zlib_zeros(inflated)));
    bytes.extend(png_chunk(b"IEND", &[]));
    bytes
}

/// A valid 64 x 64 PNG carrying an ICC profile that inflates to `inflated`
/// bytes: metadata read with the header, before any size check on pixels.
pub fn png_profile_bomb(inflated: usize) -> Vec<u8> {
    let mut profile = b"icc\0\0".to_vec();
    profile.extend(zlib_zeros(inflated));
    let mut bytes = PNG_SIGNATURE.to_vec();
    bytes.extend(png_chunk(b"IHDR", &ihdr(64, 64, PNG_RGB)));
    bytes.extend(png_chunk(b"iCCP", &profile));
    bytes.extend(png_chunk(b"IDAT", &zlib_zeros(64 * (64 * 3 + 1))));
    bytes.extend(png_chunk(b"IEND", &[]));
    bytes
}

/// A valid 64 x 64 PNG with one bit of its header flipped, so that the
/// header's checksum no longer matches.
pub fn png_bad_checksum() -> Vec<u8> {
    let mut bytes = png(64, 64);
    bytes[IHDR_DATA + 2] ^= 0x01;
    bytes
}

/// A baseline JPEG whose frame header claims `width` x `height` pixels,
/// followed by the scan data of a 64 x 64 picture.
pub fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = jpeg(64, 64);
    let frame = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has a start-of-frame marker");
    // Marker, length (2), precision (1), then height and width.
    bytes[frame + 5..frame + 7].copy_from_slice(&height.to_be_bytes());
    bytes[frame + 7..frame + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// The first `keep` bytes of `bytes`: a file cut short in transfer.
pub fn truncated(mut bytes: Vec<u8>, keep: usize) -> Vec<u8> {
    bytes.truncate(keep);
    bytes
}
