"""File sizes of two bundles on the same images: what a re-export of the same weights costs in rate.

    python benchmarks/bundle_sizes.py ../shared/data/kodak BUNDLE_A BUNDLE_B [--qualities 0 25 50 75 100]

For example the integer scale path at 8-bit weights (the default) against 12
(``python -m export.bundle CKPT runs/b12 --scale_weight_bits 12``). With the
same weights and graphs the symbols, and so the pixels, are the same; only the
tables chosen for them differ, so the size is the whole difference. Prints the
total bytes of every image at each quality and B's change against A.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from codec import api
from codec.session import Bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("a", help="the reference bundle folder")
    p.add_argument("b", help="the bundle compared with it")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 25, 50, 75, 100])
    args = p.parse_args()
    a, b = Bundle(args.a), Bundle(args.b)
    images = []
    for f in sorted(Path(args.folder).glob("*.png")):
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    if not images:
        raise SystemExit(f"no .png images in {args.folder}")
    print(f"{len(images)} images; A = {args.a} ({a.model_id}), B = {args.b} ({b.model_id})")
    print(f"{'quality':>7} {'bytes A':>10} {'bytes B':>10} {'B vs A':>8}")
    for q in args.qualities:
        size_a = sum(len(api.compress(im, q, a)) for im in images)
        size_b = sum(len(api.compress(im, q, b)) for im in images)
        print(f"{q:>7} {size_a:>10} {size_b:>10} {100 * (size_b / size_a - 1):>+7.3f}%")


if __name__ == "__main__":
    main()
