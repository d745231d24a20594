//! Hostile and broken photos, each refused with the exact reason, in
//! bounded time, and without disturbing the next decode.

use std::time::{Duration, Instant};

use photo::samples::{self, PNG_RGB, PNG_RGBA};
use photo::{decode_image, ImageLimits, InputError};

/// Longest any refusal may take: every check happens before the pixels.
const QUICK: Duration = Duration::from_secs(2);

/// Decodes `bytes` as `name` with the default limits, in bounded time, and
/// checks that a valid photo still decodes afterwards.
fn decode(bytes: &[u8], name: &str) -> Result<(u32, u32), String> {
    let started = Instant::now();
    let result = decode_image(bytes, name, &ImageLimits::default())
        .map(|image| image.dimensions())
        .map_err(|e| e.to_string());
    assert!(
        started.elapsed() < QUICK,
        "{name} took {:?}",
        started.elapsed()
    );
    let next = decode_image(&samples::png(64, 64), "next.png", &ImageLimits::default());
    assert_eq!(next.unwrap().dimensions(), (64, 64), "after {name}");
    result
}

#[test]
fn a_png_claiming_100000_pixels_a_side_is_refused_from_its_header() {
    assert_eq!(
        decode(
            &samples::png_claiming(100_000, 100_000, PNG_RGB),
            "bomb.png"
        ),
        Err(
            "bomb.png: the image claims 100000x100000 pixels; the limit is 16384 px per side \
             and 768 MiB of memory"
                .into()
        )
    );
}

#[test]
fn a_png_within_the_side_limit_but_over_the_memory_limit_is_refused() {
    // 16384 x 16384 RGBA is 1 GiB of pixels.
    assert_eq!(
        decode(&samples::png_claiming(16_384, 16_384, PNG_RGBA), "wide.png"),
        Err(
            "wide.png: the image claims 16384x16384 pixels; the limit is 16384 px per side \
             and 768 MiB of memory"
                .into()
        )
    );
}

#[test]
fn a_jpeg_claiming_65000_pixels_a_side_is_refused_from_its_header() {
    assert_eq!(
        decode(&samples::jpeg_claiming(65_000, 65_000), "bomb.jpg"),
        Err(
            "bomb.jpg: the image claims 65000x65000 pixels; the limit is 16384 px per side \
             and 768 MiB of memory"
                .into()
        )
    );
}

#[test]
fn a_png_with_zero_dimensions_is_corrupt() {
    assert_eq!(
        decode(&samples::png_claiming(0, 0, PNG_RGB), "empty.png"),
        Err(
            "empty.png: the PNG data is truncated or corrupt: Format error decoding Png: \
             Invalid image dimensions"
                .into()
        )
    );
}

#[test]
fn a_png_whose_header_checksum_is_wrong_is_corrupt() {
    let err = decode(&samples::png_bad_checksum(), "flipped.png").unwrap_err();
    assert!(
        err.starts_with(
            "flipped.png: the PNG data is truncated or corrupt: Format error decoding Png: \
             CRC error"
        ),
        "{err}"
    );
}

#[test]
fn pixel_data_that_inflates_past_its_rows_decodes_only_the_rows() {
    // 256 MiB of zeros in 256 KiB: the decoder stops once 64 rows are read.
    let bomb = samples::png_pixel_bomb(256 << 20);
    assert!(bomb.len() < 1 << 20);
    assert_eq!(decode(&bomb, "deep.png"), Ok((64, 64)));
}

#[test]
fn an_image_too_small_for_a_face_is_refused() {
    assert_eq!(
        decode(&samples::png(31, 64), "thumb.png"),
        Err("thumb.png: the image is 31x64; photos need at least 32 px on each side".into())
    );
}

#[test]
fn a_gif_is_named_as_a_gif() {
    assert_eq!(
        decode(&samples::gif(64, 64), "anim.gif"),
        Err("anim.gif: not a PNG, JPEG or WebP image (it is GIF)".into())
    );
}

#[test]
fn text_and_empty_files_are_not_images() {
    assert_eq!(
        decode(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "face.svg"),
        Err("face.svg: not a PNG, JPEG or WebP image".into())
    );
    assert_eq!(
        decode(b"", "nothing.png"),
        Err("nothing.png: the file is empty (0 bytes)".into())
    );
}

#[test]
fn files_cut_short_are_corrupt() {
    let png = samples::png(64, 64);
    let cut = png.len() / 2;
    let err = decode(&samples::truncated(png, cut), "half.png").unwrap_err();
    assert!(
        err.starts_with("half.png: the PNG data is truncated or corrupt: "),
        "{err}"
    );
    let jpeg = samples::jpeg(64, 64);
    let cut = jpeg.len() - 10;
    assert_eq!(
        decode(&samples::truncated(jpeg, cut), "half.jpg"),
        Err(
            "half.jpg: the JPEG data is truncated or corrupt: the file ends before the \
             image's end marker"
                .into()
        )
    );
    let err = decode(&samples::truncated(samples::webp(64, 64), 40), "half.webp").unwrap_err();
    assert!(
        err.starts_with("half.webp: the WebP data is truncated or corrupt: "),
        "{err}"
    );
}

#[test]
fn the_configured_limits_apply() {
    let strict = ImageLimits {
        max_side: 1000,
        ..ImageLimits::default()
    };
    let err = decode_image(&samples::jpeg(1001, 40), "wide.jpg", &strict).unwrap_err();
    assert!(matches!(
        err,
        InputError::TooLarge {
            width: Some(1001),
            height: Some(40),
            max_side: 1000,
            ..
        }
    ));
}
