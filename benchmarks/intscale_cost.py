"""Rate cost of the integer scale path against float σ indexes, on a folder of images.

    python benchmarks/intscale_cost.py ../shared/data/kodak --model runs/full --checkpoint export/checkpoints/full.pt \
        [--qualities 0 25 50 75 100]

For hyperprior bundles. The float σ is h_s's from the bundle's checkpoint, in PyTorch: the
bundle's hyper decoder graph holds only μ. A channel-conditional model's float σ per slice exists only
in PyTorch: benchmarks/conditional.py measures its integer path from the checkpoint.

Distortion is identical by construction (ŷ = round(y − μ) + μ whatever table
codes it), so the cost is the size difference; reported as BD-rate too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import codec
from codec import entropy, intscale, metrics
from codec.bdrate import bd_rate
from codec.session import Bundle, bundle_at
from codec.tiling import analyse, z_symbols
from export.bundle import float_sigma
from export.train import load_model


def float_index_bytes(im: Image.Image, quality: int, b: Bundle, model) -> int:
    """File size if y were coded with indexes from the float σ (what CompressAI does)."""
    gain, _ = b.gains(quality)
    y, z = analyse(b, np.asarray(im), gain)
    z_sym = z_symbols(b, z, quality)
    z_hat = b.hyper_input(z_sym, quality)
    (mu,) = b.run("hyper_decoder", z_hat=z_hat[None])
    idx = intscale.float_indexes(float_sigma(model, z_hat), b._tables["scale_table"])
    z_ids = np.broadcast_to(np.arange(z_sym.shape[0])[:, None, None], z_sym.shape)
    z_bytes = entropy.encode(z_sym, z_ids, b.z_tables)
    y_bytes = entropy.encode(np.round(y - mu[0]).astype(np.int64), idx, b.y_tables)
    return 36 + len(z_bytes) + len(y_bytes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 25, 50, 75, 100])
    p.add_argument("--model", help="a bundle folder (default: the shipped model)")
    p.add_argument("--checkpoint", required=True, help="the weights that bundle was exported from")
    a = p.parse_args()
    b = bundle_at(a.model)
    if b.slices:
        raise SystemExit(f"{b.path} is a channel-conditional model: its slices' float σ exists only in PyTorch; "
                         "measure its integer path with benchmarks/conditional.py ../shared/data/kodak CHECKPOINT")
    model = load_model(a.checkpoint)[0].eval()
    images = []
    for f in sorted(Path(a.folder).glob("*.png")):
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    rows = []
    print(f"{'quality':>7} {'bpp float σ':>12} {'bpp integer':>12} {'change':>8} {'PSNR':>7}")
    for q in a.qualities:
        fb, ib, ps = [], [], []
        for im in images:
            data = codec.compress(im, quality=q, bundle=b)
            pixels = im.width * im.height
            ib.append(8 * len(data) / pixels)
            fb.append(8 * float_index_bytes(im, q, b, model) / pixels)
            ps.append(metrics.psnr(im, codec.decompress(data, bundle=b)))
        rows.append((np.mean(fb), np.mean(ib), np.mean(ps)))
        print(f"{q:>7} {rows[-1][0]:>12.4f} {rows[-1][1]:>12.4f} {100 * (rows[-1][1] / rows[-1][0] - 1):>+7.2f}% "
              f"{rows[-1][2]:>7.2f}")
    f, i, ps = (list(v) for v in zip(*rows, strict=True))
    print(f"BD-rate of the integer path vs float σ indexes: {bd_rate(f, ps, i, ps):+.2f}% "
          f"({len(images)} images)")


if __name__ == "__main__":
    main()
