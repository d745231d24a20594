//! Any bytes as an input photo: decoding never panics and never allocates
//! past the limits, and an accepted image lies within them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use photo::{decode_image, ImageLimits};

/// Small bounds, so that the fuzzer spends its time in the decoders rather
/// than in filling large buffers; libFuzzer's own `-rss_limit_mb` catches
/// an allocation that slips past them.
const LIMITS: ImageLimits = ImageLimits {
    min_side: 1,
    max_side: 1024,
    max_alloc: 16 * 1024 * 1024,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = decode_image(data, "fuzz input", &LIMITS) {
        let (width, height) = image.dimensions();
        assert!(width >= 1 && height >= 1);
        // EXIF orientation may swap the sides, so check both against the bound.
        assert!(width <= LIMITS.max_side && height <= LIMITS.max_side);
    }
});
