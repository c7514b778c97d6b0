"""Mean bpp (real file sizes) and RGB PSNR of the shipped model on a folder of images.

    python benchmarks/kodak.py ../shared/data/kodak [--qualities 25 50 75 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

import codec
from codec import metrics
from codec.session import default_bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 25, 50, 75, 100])
    a = p.parse_args()
    paths = sorted(f for f in Path(a.folder).iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".ppm"})
    images = []
    for f in paths:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    b = default_bundle()
    print(f"model {b.model_id} ({b.manifest['config']}), {len(images)} images from {a.folder}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'quality':>7} {'bpp':>7} {'PSNR dB':>8} {'enc s':>6} {'dec s':>6}")
    for q in a.qualities:
        bpps, psnrs, enc, dec = [], [], [], []
        for im in images:
            t0 = time.perf_counter()
            data = codec.compress(im, quality=q)
            t1 = time.perf_counter()
            out = codec.decompress(data)
            t2 = time.perf_counter()
            bpps.append(8 * len(data) / (im.width * im.height))
            psnrs.append(metrics.psnr(im, out))
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        print(f"{q:>7} {np.mean(bpps):>7.4f} {np.mean(psnrs):>8.2f} {np.median(enc):>6.3f} {np.median(dec):>6.3f}")


if __name__ == "__main__":
    main()
