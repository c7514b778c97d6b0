"""Image quality metrics in numpy (no torch): PSNR over 8-bit RGB."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode not in ("RGB", "L") else image)
    return np.asarray(image, dtype=np.float64)


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """PSNR in dB of two 8-bit images over all channels (inf when identical)."""
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
