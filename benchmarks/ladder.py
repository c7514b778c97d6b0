"""Rate and PSNR of a checkpoint at every ladder rung, on a whole folder of images.

    python benchmarks/ladder.py ../shared/data/kodak export/checkpoints/full.pt [more.pt ...]

Judges training checkpoints without exporting them: bpp is the model's own
likelihood of the rounded latents (within about 2% of the range coder's file
sizes, see export/checkpoints/DRAWS.md), PSNR is RGB on 8-bit output. Prints one
row per rung and checkpoint, and BD-rate of each later checkpoint against the
first over the rungs where both are monotone.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.bdrate import bd_rate  # noqa: E402
from export.train import load_images, load_model, pad_to_stride  # noqa: E402


@torch.no_grad()
def ladder(ckpt: str, images: list[np.ndarray], positions: list[float]) -> list[tuple[float, float, float]]:
    """(position, mean bpp, mean RGB PSNR) per ladder position."""
    model, _ = load_model(ckpt)
    model.eval()
    rows = []
    for t in positions:
        bpp, psnr = [], []
        for a in images:
            x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255
            h, w = x.shape[2:]
            out = model(pad_to_stride(x), torch.tensor([t]))
            bits = -(torch.log2(out["y_likelihood"]).sum() + torch.log2(out["z_likelihood"]).sum())
            bpp.append(bits.item() / (h * w))
            x_hat = torch.round(out["x_hat"][..., :h, :w].clamp(0, 1) * 255)
            mse = torch.mean((x_hat - x * 255) ** 2).item()
            psnr.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        rows.append((t, float(np.mean(bpp)), float(np.mean(psnr))))
    return rows


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
    print(f"{'checkpoint':<40} {'position':>8} {'bpp':>7} {'PSNR':>7}")
    for ckpt in a.checkpoints:
        rungs = len(load_model(ckpt)[0].cfg.lambdas)
        positions = [float(t) for t in np.linspace(0, rungs - 1, a.positions)]
        rows = ladder(ckpt, images, positions)
        curves[ckpt] = rows
        for t, bpp, psnr in rows:
            print(f"{ckpt:<40} {t:>8.2f} {bpp:>7.3f} {psnr:>7.2f}")
    first = a.checkpoints[0]
    for ckpt in a.checkpoints[1:]:
        ref, test = monotone(curves[first]), monotone(curves[ckpt])
        print(f"BD-rate {ckpt} vs {first}: {bd_rate(*ref, *test):+.1f}% "
              f"(over {len(ref[0])} and {len(test[0])} monotone rungs)")


def monotone(rows: list[tuple[float, float, float]]) -> tuple[list[float], list[float]]:
    """The (bpp, PSNR) points from the smallest file upward: where rate grows with PSNR."""
    start = int(np.argmin([r[1] for r in rows]))
    keep = rows[start:]
    return [r[1] for r in keep], [r[2] for r in keep]


if __name__ == "__main__":
    main()
