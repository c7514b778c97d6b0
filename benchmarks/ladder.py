"""Rate and PSNR of checkpoints at evenly spaced ladder positions, on a whole folder of images.

    python benchmarks/ladder.py ../shared/data/kodak export/checkpoints/full.pt [more.pt ...]

Judges training checkpoints without exporting them, with the trainer's own
evaluation (export.train.evaluate): bpp from the range coder against tables
frozen from the weights (indexes from the float σ) and from the model's
likelihoods, RGB PSNR on 8-bit output. Prints one row per position and
checkpoint, then the BD-rate (real bpp) of each later checkpoint against the
first over the positions where rate grows with quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.bdrate import bd_rate  # noqa: E402
from export.train import evaluate, load_images, load_model  # noqa: E402


def monotone(rows: list[dict]) -> tuple[list[float], list[float]]:
    """The (bpp, PSNR) points from the smallest file upward: where rate grows with PSNR."""
    start = int(np.argmin([r["bpp_real"] for r in rows]))
    keep = rows[start:]
    return [r["bpp_real"] for r in keep], [r["psnr"] for r in keep]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--positions", type=int, default=10, help="evenly spaced ladder positions, ends included")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    images = load_images(a.folder, 0, 1)
    curves = {}
    print(f"{len(images)} images from {a.folder}")
    print(f"{'checkpoint':<40} {'position':>8} {'bpp':>7} {'(est.)':>7} {'PSNR':>7}")
    for ckpt in a.checkpoints:
        model, _ = load_model(ckpt)
        positions = [float(t) for t in np.linspace(0, len(model.cfg.lambdas) - 1, a.positions)]
        curves[ckpt] = evaluate(model, images, positions)
        for r in curves[ckpt]:
            print(f"{ckpt:<40} {r['rung']:>8.2f} {r['bpp_real']:>7.3f} {r['bpp_estimated']:>7.3f} {r['psnr']:>7.2f}")
    first = a.checkpoints[0]
    for ckpt in a.checkpoints[1:]:
        ref, test = monotone(curves[first]), monotone(curves[ckpt])
        print(f"BD-rate {ckpt} vs {first}: {bd_rate(*ref, *test):+.1f}% "
              f"(over {len(ref[0])} and {len(test[0])} monotone positions)")


if __name__ == "__main__":
    main()
