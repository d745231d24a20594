//! Draws the before/after picture of face alignment shown in the README:
//! an example face turned, shrunk and placed off-centre on a larger backdrop
//! (CelebA ships only aligned faces, so the "photo" is made from one), next
//! to what `glow::align` makes of it.
//!
//! ```sh
//! cargo run -p glow --example align_pair -- examples/faces/191770.jpg docs/alignment.png
//! ```

use anyhow::{bail, Context, Result};
use glow::align::{Aligner, Similarity, ALIGNED_HEIGHT};
use image::{imageops, Rgb, RgbImage};
use tch::Device;

/// Size and placement of the face in the made-up photo.
const PHOTO_SIZE: (u32, u32) = (320, 240);
const FACE_SCALE: f64 = 0.6;
const FACE_DEGREES: f64 = -22.0;
const FACE_CENTRE: [f64; 2] = [200.0, 113.0];
/// White space between and around the two pictures.
const GAP: u32 = 8;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [face, out] = args.as_slice() else {
        bail!("usage: align_pair FACE.jpg OUT.png");
    };
    let face = image::open(face).with_context(|| face.clone())?.to_rgb8();

    // The photo: the face placed by the library's own warp, mapping face
    // coordinates to photo coordinates about the face's centre.
    let (fw, fh) = face.dimensions();
    let centre = [f64::from(fw) / 2.0, f64::from(fh) / 2.0];
    let turn = Similarity::new(FACE_SCALE, FACE_DEGREES, [0.0, 0.0]);
    let moved = turn.apply(centre);
    let place = Similarity {
        tx: FACE_CENTRE[0] - moved[0],
        ty: FACE_CENTRE[1] - moved[1],
        ..turn
    };
    let mut photo = backdrop(PHOTO_SIZE.0, PHOTO_SIZE.1);
    paste_warped(&mut photo, &face, &place);

    let aligner = Aligner::load(&glow::align::default_detector_path(), Device::Cpu)?;
    let aligned = aligner.align(&photo, None, "photo")?;

    // Side by side at the photo's height.
    let height = PHOTO_SIZE.1;
    let after_width = aligned.image.width() * height / ALIGNED_HEIGHT;
    let after = imageops::resize(
        &aligned.image,
        after_width,
        height,
        imageops::FilterType::Lanczos3,
    );
    let mut pair = RgbImage::from_pixel(
        PHOTO_SIZE.0 + after_width + 3 * GAP,
        height + 2 * GAP,
        Rgb([255, 255, 255]),
    );
    imageops::replace(&mut pair, &photo, i64::from(GAP), i64::from(GAP));
    imageops::replace(
        &mut pair,
        &after,
        i64::from(PHOTO_SIZE.0 + 2 * GAP),
        i64::from(GAP),
    );
    pair.save(out).with_context(|| out.clone())?;
    println!(
        "{out}: {} face(s) found; turned {:+.1} degrees, scaled {:.2}x",
        aligned.faces.len(),
        aligned.transform.degrees(),
        aligned.transform.scale()
    );
    Ok(())
}

/// A soft two-tone wall.
fn backdrop(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        Rgb([
            (170.0 + 40.0 * u) as u8,
            (180.0 - 30.0 * v) as u8,
            (160.0 + 30.0 * v) as u8,
        ])
    })
}

/// Draws `face` into `photo` through `place` (face to photo coordinates),
/// leaving the photo as it is outside the face's rectangle.
fn paste_warped(photo: &mut RgbImage, face: &RgbImage, place: &Similarity) {
    let (pw, ph) = photo.dimensions();
    let warped = glow::align::warp::warp(face, place, pw, ph);
    let back = place.inverse();
    let (fw, fh) = face.dimensions();
    for (x, y, pixel) in photo.enumerate_pixels_mut() {
        let p = back.apply([f64::from(x) + 0.5, f64::from(y) + 0.5]);
        if p[0] >= 0.0 && p[1] >= 0.0 && p[0] < f64::from(fw) && p[1] < f64::from(fh) {
            *pixel = *warped.get_pixel(x, y);
        }
    }
}
