#!/usr/bin/env bash
# Sets everything up (skipping what is there) and runs Glowline's main job
# locally, with no server: the shipped model turns one example face into nine
# others at once (MP4, GIF and a contact sheet), and moves another face along
# the five attribute sliders. Results land in out/demo/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

scripts/setup.sh
cargo build --release -p glow
glow=target/release/glow
out=out/demo

"$glow" render examples/jobs/nine-way-morph.json --out "$out/nine-way-morph"
for slider in smiling age blond_hair beard narrow_eyes; do
    "$glow" render "examples/jobs/edit-$slider.json" --out "$out/edit-$slider"
done
echo "demo outputs are in $out/: nine-way-morph/animation.mp4 and .gif, and one contact sheet per slider"
