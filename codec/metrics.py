"""Image quality metrics in numpy (no torch): PSNR and MS-SSIM over 8-bit RGB."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Wang, Simoncelli, Bovik, "Multi-scale structural similarity for image quality
# assessment" (Asilomar 2003): per-scale exponents, 11×11 Gaussian window, σ = 1.5.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2 = 0.01, 0.03
WINDOW, SIGMA = 11, 1.5
MS_SSIM_MIN_SIDE = (WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1  # 161: the window must fit at every scale


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


def _gaussian() -> np.ndarray:
    x = np.arange(WINDOW) - WINDOW // 2
    g = np.exp(-(x**2) / (2 * SIGMA**2))
    return g / g.sum()


def _blur(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over the last two axes."""
    x = np.lib.stride_tricks.sliding_window_view(x, len(g), axis=-1) @ g
    x = np.lib.stride_tricks.sliding_window_view(x, len(g), axis=-2) @ g
    return x


def _ssim_cs(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and contrast-structure term of (C, H, W) arrays in [0, 255]."""
    c1, c2 = (K1 * 255) ** 2, (K2 * 255) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return ssim.mean(axis=(-2, -1)), cs.mean(axis=(-2, -1))


def _downsample(x: np.ndarray) -> np.ndarray:
    """2×2 average pooling; odd sides get one zero on each edge first (as torch's avg_pool2d with padding)."""
    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[:, :h, :w]
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def ms_ssim(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """MS-SSIM of two 8-bit images, averaged over channels (5 scales, Wang et al. 2003).

    Follows the common pytorch_msssim conventions (negative terms clipped to 0,
    'valid' filtering), which CompressAI's published curves use. Needs a
    smaller side of at least 161 pixels; smaller images give NaN.
    """
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if min(x.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    x = x.reshape(*x.shape[:2], -1).transpose(2, 0, 1)
    y = y.reshape(*y.shape[:2], -1).transpose(2, 0, 1)
    g = _gaussian()
    terms = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_cs(x, y, g)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(np.maximum(cs, 0))
            x, y = _downsample(x), _downsample(y)
    terms.append(np.maximum(ssim, 0))
    w = np.array(MS_SSIM_WEIGHTS)[:, None]
    return float(np.prod(np.stack(terms) ** w, axis=0).mean())


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, −10·log10(1 − MS-SSIM), as RD plots usually show it."""
    return math.inf if value >= 1 else -10 * math.log10(1 - value)
