#!/usr/bin/env python3
"""Plots bits/dim against images seen from one or more `metrics.jsonl` logs.

Usage: plot_training.py OUT.png METRICS.jsonl [METRICS.jsonl ...]

Lines from all logs are merged by images seen (a later log wins where two
report the same count), so the logs of a run resumed or warm-started across
machines draw one curve. Training bits/dim is the mean since the previous
line; validation bits/dim is measured on the preset's fixed validation subset.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    points = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{number}: not JSON: {e}")
                points[row["images_seen"]] = row
    return [points[k] for k in sorted(points)]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip())
    out, paths = sys.argv[1], sys.argv[2:]
    rows = load(paths)
    if not rows:
        sys.exit("no metrics lines in " + ", ".join(paths))
    seen = [r["images_seen"] for r in rows]
    train = [r["train_bits_per_dim"] for r in rows]
    valid = [(r["images_seen"], r["valid_bits_per_dim"]) for r in rows if r.get("valid_bits_per_dim") is not None]

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(seen, train, label="training (mean since previous point)", color="#888888", linewidth=1)
    if valid:
        ax.plot([v[0] for v in valid], [v[1] for v in valid], label="validation subset", color="#c0392b", marker="o", markersize=2.5, linewidth=1.5)
    ax.set_xlabel("images seen")
    ax.set_ylabel("bits/dim (5-bit)")
    # The first points of a run from scratch sit far above the rest: show
    # at most one bit/dim above the lowest point.
    every = train + [v[1] for v in valid]
    low = min(every)
    ax.set_ylim(low - 0.02, min(max(every), low + 1.0) + 0.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out} from {len(rows)} points")


if __name__ == "__main__":
    main()
