//! A PNG whose ICC profile inflates to a gigabyte must not make the decoder
//! allocate it: metadata read with the header has a small memory budget
//! (`photo::MAX_HEADER_ALLOC`). Alone in its test binary, so that the
//! process's peak memory is this test's.

use photo::samples;
use photo::{decode_image, ImageLimits};

/// The process's peak resident memory in KiB, from Linux's /proc.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[test]
fn an_icc_profile_bomb_is_not_inflated() {
    let bomb = samples::png_profile_bomb(1 << 30);
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let before = peak_kib();

    let image = decode_image(&bomb, "profile.png", &ImageLimits::default()).unwrap();

    assert_eq!(image.dimensions(), (64, 64));
    let grown_mib = (peak_kib() - before) / 1024;
    assert!(
        grown_mib < 64,
        "decoding grew the peak memory by {grown_mib} MiB"
    );
}
