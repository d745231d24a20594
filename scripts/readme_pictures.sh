#!/usr/bin/env bash
# Redraws the README's pictures of the shipped model from the committed
# example faces and jobs, so that each new snapshot of the model brings its
# own pictures:
#
#   docs/samples.png          8 samples at T = 0, 0.5, 0.7 and 1.0 (rows)
#   docs/reconstructions.png  the 16 example faces (test split) over their reconstructions
#   docs/edit-sliders.png     the five sliders from -1 to +1 (examples/jobs/edit-*.json)
#   docs/nine-way-morph.gif   examples/jobs/nine-way-morph.json at README size
#
#   scripts/readme_pictures.sh [GLOW_BINARY]    # default target/release/glow
#
# The training curve is drawn by scripts/plot_training.py from the metrics
# log instead. Seeds are fixed, so the same model draws the same pictures.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

glow="${1:-target/release/glow}"
model=models/celeba64.safetensors
torch_lib="$(python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Stacks PNGs top to bottom into one.
stack() {
    local out="$1"
    shift
    local inputs=()
    for file in "$@"; do inputs+=(-i "$file"); done
    ffmpeg -loglevel error -y "${inputs[@]}" -filter_complex "vstack=inputs=$#" "$out"
}

rows=()
for temperature in 0 0.5 0.7 1.0; do
    "$glow" sample --model "$model" --n 8 --cols 8 --seed 0 \
        --temperature "$temperature" --out "$work/samples-$temperature.png"
    rows+=("$work/samples-$temperature.png")
done
stack docs/samples.png "${rows[@]}"

"$glow" reconstruct --model "$model" --out docs/reconstructions.png examples/faces/*.jpg

rows=()
for attribute in smiling age blond_hair beard narrow_eyes; do
    "$glow" render "examples/jobs/edit-$attribute.json" --model "$model" --out "$work/edit-$attribute"
    rows+=("$work/edit-$attribute/contact_sheet.png")
done
stack docs/edit-sliders.png "${rows[@]}"

# The demo's morph, smaller and shorter so that the GIF stays light.
jq '.operation.frames = 24 | .output.size = 64 | .output.fps = 12 | .output.formats = ["gif"]' \
    examples/jobs/nine-way-morph.json >"$work/nine-way-morph.json"
"$glow" render "$work/nine-way-morph.json" --model "$model" --inputs examples/jobs --out "$work/morph"
cp "$work/morph/"*.gif docs/nine-way-morph.gif
echo "readme_pictures: wrote docs/samples.png, docs/reconstructions.png, docs/edit-sliders.png, docs/nine-way-morph.gif"
