"""Pick training images for the device, a few MiB-bounded parts at a time.

    python -m export.pack_data ../shared/data/train data/train --parts 2 --mib 26 --seed 2

A device call carries at most 64 MiB, so the training set travels in parts
(data/train/a, data/train/b, …) over successive calls to one warm machine. The
files are copied unchanged (re-encoding would put JPEG artefacts into a model
meant to reach 37 dB); each part is a seeded random draw across all sources.
Use the draw's number as the seed, so that successive draws see other images.
"""

from __future__ import annotations

import argparse
import random
import shutil
import string
from pathlib import Path


def pack(src: str | Path, dst: str | Path, parts: int, mib: float, seed: int = 0) -> list[int]:
    """Copy a random choice of images into ``parts`` subfolders of at most ``mib`` MiB each."""
    paths = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    random.Random(seed).shuffle(paths)
    counts = []
    for name in string.ascii_lowercase[:parts]:
        folder = Path(dst) / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        budget = int(mib * 2**20)
        n = 0
        while paths and paths[0].stat().st_size <= budget:
            p = paths.pop(0)
            budget -= p.stat().st_size
            shutil.copyfile(p, folder / p.name)
            n += 1
        counts.append(n)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--mib", type=float, default=26.0)
    ap.add_argument("--seed", type=int, default=0, help="the draw's number: each draw sees other images")
    a = ap.parse_args(argv)
    print(f"images per part: {pack(a.src, a.dst, a.parts, a.mib, a.seed)}")


if __name__ == "__main__":
    main()
