"""Overlapping tiles against independently coded tiles: rate cost and seams, on a folder of images.

    python benchmarks/tiles.py ../shared/data/kodak [--tile 256] [--quality 50]

onic runs g_a and g_s in overlapping tiles that reproduce the whole-image
result exactly (tests/test_exact.py), so they cost no rate and leave no seams.
The alternative, coding each tile as its own file, would let tiles decode with
no shared latents. This prints what it would cost: bytes against the whole
image, PSNR overall, and PSNR in the 4-pixel bands along tile edges (seams)
against the tile interiors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import codec
from codec import metrics


def seam_mask(h: int, w: int, tile: int, width: int = 4) -> np.ndarray:
    """True within ``width`` pixels of an inner tile edge."""
    rows = np.zeros(h, bool)
    cols = np.zeros(w, bool)
    for e in range(tile, h, tile):
        rows[max(0, e - width) : e + width] = True
    for e in range(tile, w, tile):
        cols[max(0, e - width) : e + width] = True
    return rows[:, None] | cols[None, :]


def independent_tiles(rgb: np.ndarray, tile: int, quality: int) -> tuple[int, np.ndarray]:
    out = np.empty_like(rgb)
    size = 0
    for r in range(0, rgb.shape[0], tile):
        for c in range(0, rgb.shape[1], tile):
            data = codec.compress(np.ascontiguousarray(rgb[r : r + tile, c : c + tile]), quality)
            size += len(data)
            out[r : r + tile, c : c + tile] = np.asarray(codec.decompress(data))
    return size, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--quality", type=int, default=50)
    a = p.parse_args()
    rows = []
    for f in sorted(Path(a.folder).glob("*.png")):
        with Image.open(f) as im:
            rgb = np.asarray(im.convert("RGB"))
        whole = codec.compress(rgb, a.quality)
        x_whole = np.asarray(codec.decompress(whole))
        size, x_tiles = independent_tiles(rgb, a.tile, a.quality)
        seams = seam_mask(*rgb.shape[:2], a.tile)
        rows.append((len(whole), size, metrics.psnr(rgb, x_whole), metrics.psnr(rgb, x_tiles),
                     metrics.psnr(rgb[seams], x_whole[seams]), metrics.psnr(rgb[seams], x_tiles[seams]),
                     metrics.psnr(rgb[~seams], x_tiles[~seams])))
    w, t, pw, pt, sw, st, it = (np.array(v) for v in zip(*rows, strict=True))
    print(f"{len(rows)} images, quality {a.quality}, tiles of {a.tile} pixels")
    print(f"{'':<26}{'bytes':>10}{'PSNR':>8}{'PSNR at seams':>15}")
    print(f"{'overlapping (= whole)':<26}{w.mean():>10.0f}{pw.mean():>8.2f}{sw.mean():>15.2f}")
    print(f"{'independently coded':<26}{t.mean():>10.0f}{pt.mean():>8.2f}{st.mean():>15.2f}"
          f"   (interior {it.mean():.2f})")
    print(f"independent tiles cost {100 * (t.sum() / w.sum() - 1):+.1f}% bytes and "
          f"{pt.mean() - pw.mean():+.2f} dB; their seams are {st.mean() - it.mean():+.2f} dB against their interiors")


if __name__ == "__main__":
    main()
