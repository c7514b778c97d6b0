"""Speed and memory benchmark (issue 5): prints a table, writes JSON.

    python benchmarks/speed.py ../shared/data/kodak/kodim23.png \\
        [--compressai-python /path/to/venv/bin/python] [--big-megapixels 50] [--json results/speed.json] \\
        [--model BUNDLE]   # e.g. the full-size model: python -m export.bundle export/checkpoints/full.pt runs/full

CompressAI needs torch 2.14 and numpy<2, so it lives in a venv of its own:
    python -m venv ../caivenv && ../caivenv/bin/pip install torch==2.14.1 compressai
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codec import speed


def megapixels(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1000:  # also NaN; an image over 1,000 MP would not fit in memory
        raise argparse.ArgumentTypeError(f"{text} megapixels: give 0 to 1000")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--megapixels", type=megapixels, default=12.0,
                   help="size of the upscaled photo-sized image (0: none)")
    p.add_argument("--big-megapixels", type=megapixels, default=0.0,
                   help="also a round trip of this size for peak RSS (0: none)")
    p.add_argument("--compressai-python")
    p.add_argument("--model", help="a bundle folder (default: the shipped model), e.g. the full-size one")
    p.add_argument("--tile-workers", type=int, default=0,
                   help="threads for the tiles and bands of large images (0 = one per core up to 4)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads onic codes with, and CompressAI's torch (0 = every core; 1 = one core's speed)")
    p.add_argument("--json")
    a = p.parse_args()
    report = speed.run(a.image, a.quality, a.repeat, a.megapixels, a.compressai_python, a.big_megapixels, a.model,
                       a.tile_workers, a.threads)
    print(speed.format_report(report))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
