"""Encoder-side refinement: move an image's latents downhill on its own rate-distortion cost.

The analysis transform is trained to be good on average; for one image, a few
gradient steps on y itself find latents that cost fewer bits for the same error
(Campos et al., "Content Adaptive Optimization for Neural Image Compression",
CVPR Workshops 2019). Rounding has no gradient, so the steps see stochastic
Gumbel annealing (Yang, Bamler & Mandt, "Improving Inference for Neural Image
Compression", NeurIPS 2020): each y − μ is rounded down or up at random, with a
soft, differentiable choice whose temperature falls from step to step.

What the steps see, and what they approximate:
- distortion: the exact gradient of the synthesis (``synthesis_grad.onnx``,
  written by export/refine.py), tile by tile for large images;
- rate: y − μ under N(0, σ²) integrated over its bin, with μ, σ and the latent
  residual prediction held fixed between refreshes every ``REFRESH`` steps
  (their own dependence on y is left out: in PyTorch, that kept 79% and 93%
  of the full gradient's gain on two Kodak images at 40 steps, a one-off probe);
- every refresh codes the current y for real (the integer path's tables, the range
  coder's bytes, the decoder graph's pixels) and the best y so far is kept, so
  refinement never returns latents whose real cost is higher than the analysis'.

Only the encoder changes: the file decodes with any onic that has the model.
The steps' floats are onnxruntime's, so the chosen latents (and file) may differ
between machines; decoding of a given file stays bit-exact.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from codec import entropy, profile, tiling
from codec.batch import MAX_REFINE_STEPS as MAX_STEPS
from codec.bitstream import OnicError
from codec.session import GRADIENT_GRAPH as GRAPH
from codec.session import Bundle
from codec.threads import each

# Chosen on six training photos (none from Kodak) at qualities 10, 50 and 90, by the mean fall of the
# real cost at 20 steps (a one-off sweep): lr 0.005 / 0.01 / 0.02 gave −2.9 / −4.0 / −4.3% with
# refreshes every 10 steps, −4.7% every 5 (every 2 or every step gained a little more per step but
# less per second); with the temperature falling to 0.1 instead of 0.025, −5.3%, and at lr 0.03 /
# 0.04 / 0.06, −5.4 / −5.4 / −5.3% (start 0.3 or 1.0 instead of 0.5: −4.9, −5.3%). The same
# settings at 10 and 40 steps: −4.1 and −6.4%.
LEARNING_RATE = 0.03  # Adam's step, in units of the latents' quantization step
REFRESH = 5  # steps between re-codings of y (new μ, σ, residual prediction; best y so far)
TAU = (0.5, 0.1)  # annealing temperature at the first and the last step
_EPS = 1e-6


@dataclass
class Coded:
    """One y coded for real: what the steps hold fixed, and its real cost."""

    mu: np.ndarray  # (M, h, w) μ of each element (after the slices' context)
    sigma: np.ndarray  # (M, h, w) the scale the range coder uses
    offset: np.ndarray  # (M, h, w) ŷ − μ − symbol: the latent residual prediction (0 without slices)
    bits: int  # z's and y's bytes from the range coder, times 8
    mse: float  # of the decoder's uint8 pixels against the image's
    cost: float  # bits per pixel + λ·MSE (the training loss in 8-bit units)


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= MAX_STEPS:
        raise OnicError(f"refinement steps must be an integer from 0 to {MAX_STEPS}, got {steps!r}")
    return int(steps)


def code(bundle: Bundle, rgb: np.ndarray, y: np.ndarray, quality: int) -> Coded:
    """Code y as the encoder would, and decode it, to measure its real rate and distortion."""
    z_sym = tiling.z_symbols(bundle, tiling.hyper_encode(bundle, y), quality)
    mu_h = tiling.hyper_decode(bundle, z_sym, quality)
    if bundle.slices:
        y_sym = np.empty(y.shape, dtype=np.int32)
        mu = np.empty(y.shape, dtype=np.float32)
        y_hat = tiling.conditional_latents(bundle, mu_h, y_sym, y, mu_out=mu)
        state = bundle.scale_state(z_sym, quality)
        ids = np.concatenate([bundle.slice_indexes(k, state, y_sym) for k in range(len(bundle.slices))])
    else:
        mu = mu_h
        y_sym = np.round(np.clip(y - mu, -(2**30), 2**30)).astype(np.int32)
        y_hat = mu + y_sym.astype(np.float32)
        ids = bundle.scale_indexes(z_sym, quality)
    with profile.stage("entropy coding"):
        z_ids = np.broadcast_to(np.arange(z_sym.shape[0])[:, None, None], z_sym.shape)
        enc = entropy.Encoder()
        enc.add(y_sym, ids, bundle.y_tables)
        bits = 8 * (len(entropy.encode(z_sym, z_ids, bundle.z_tables)) + len(enc.finish()))
    height, width = rgb.shape[:2]
    _, inv_gain = bundle.gains(quality)
    pixels = tiling.synthesize(bundle, y_hat, inv_gain, height, width, workers=bundle.tile_workers)
    sse = sum(float(np.square(pixels[r : r + 256].astype(np.float32) - rgb[r : r + 256]).sum(dtype=np.float64))
              for r in range(0, height, 256))  # in bands: float copies of a whole large image would be GBs
    mse = sse / (3 * height * width)
    sigma = bundle.scale_table[ids]
    offset = y_hat - mu
    offset -= y_sym
    return Coded(mu, sigma, offset, bits, mse, bits / (height * width) + bundle.lam(quality) * mse)


def refine(bundle: Bundle, rgb: np.ndarray, y: np.ndarray, quality: int, steps: int, seed: int = 0,
           trace: list[Coded] | None = None) -> np.ndarray:
    """y (M, h, w) from the analysis of uint8 ``rgb`` (H, W, 3) → the best latents found in ``steps``
    steps (y itself if none beats it). ``trace`` receives each refresh's ``Coded``."""
    if not bundle.has_gradient:
        raise OnicError(f"model bundle {bundle.path} has no {GRAPH}.onnx, which refinement needs "
                        "(export it again with this onic's export.bundle)")
    height, width = rgb.shape[:2]
    pixels = height * width
    lam = bundle.lam(quality)
    _, inv_gain = bundle.gains(quality)
    rng = np.random.default_rng(seed)
    start, y = y, y.copy()
    best, best_y = math.inf, start
    m1, m2, s, ds_dr, y_hat = (np.zeros_like(y) for _ in range(5))
    chunks = _chunks(y)
    for step in range(steps + 1):
        if step % REFRESH == 0 or step == steps:
            coded = None  # not two images' μ, σ and offsets at once (225 MB at 50 MP)
            with profile.stage("refinement: coding"):
                coded = code(bundle, rgb, y, quality)
            if trace is not None:
                trace.append(coded)
            if coded.cost < best:
                best, best_y = coded.cost, start if step == 0 else y.copy()
        if step == steps:
            break
        tau = TAU[0] * (TAU[1] / TAU[0]) ** (step / max(steps - 1, 1))
        with profile.stage("refinement: step"):
            for c in chunks:  # a few channels at a time: the temporaries stay small on large images
                s[c], ds_dr[c] = _soft_round(y[c] - coded.mu[c], tau, rng)
                y_hat[c] = coded.mu[c] + s[c] + coded.offset[c]
        g_hat, _ = gradient(bundle, rgb, y_hat, inv_gain)
        with profile.stage("refinement: step"):
            for c in chunks:
                g = (lam * 255**2 / (3 * pixels)) * g_hat[c] + _bits_gradient(s[c], coded.sigma[c]) / pixels
                g *= ds_dr[c]
                _adam(y[c], g, m1[c], m2[c], step + 1)
    return best_y


def _chunks(y: np.ndarray, elements: int = 1 << 20) -> list[slice]:
    """Channel ranges of y of about ``elements`` values each."""
    step = max(1, elements // (y.shape[1] * y.shape[2]))
    return [slice(a, min(a + step, y.shape[0])) for a in range(0, y.shape[0], step)]


def _soft_round(r: np.ndarray, tau: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stochastic soft rounding of r and its derivative (Yang et al. 2020, SGA): r rounds down or up
    with logits −atanh(distance)/τ plus Gumbel noise, relaxed to the softmax weight of 'up'."""
    down = np.floor(r)
    d = np.clip(r - down, _EPS, 1 - _EPS)
    u = rng.random(r.shape, dtype=np.float32).clip(_EPS, 1 - _EPS)
    logit = (np.arctanh(d) - np.arctanh(1 - d)) / tau + np.log(u / (1 - u))  # two Gumbels differ by a logistic
    up = 1 / (1 + np.exp(-np.clip(logit, -60, 60)))
    ds_dr = up * (1 - up) * (1 / (1 - d * d) + 1 / (1 - (1 - d) ** 2)) / tau
    return (down + up).astype(np.float32), ds_dr.astype(np.float32)


def _std_cdf(t: np.ndarray) -> np.ndarray:
    """Φ(t) from erfc with fractional error below 1.2e-7 everywhere (Numerical Recipes' erfcc),
    so that the far tails keep their relative accuracy; numpy has no erfc."""
    x = -t / math.sqrt(2)
    z = np.abs(x)
    k = 1 / (1 + 0.5 * z)
    poly = (-1.26551223 + k * (1.00002368 + k * (0.37409196 + k * (0.09678418 + k * (-0.18628806 + k * (
        0.27886807 + k * (-1.13520398 + k * (1.48851587 + k * (-0.82215223 + k * 0.17087277)))))))))
    erfc = k * np.exp(-z * z + poly)
    return 0.5 * np.where(x >= 0, erfc, 2 - erfc)


def _bits_gradient(s: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """d/ds of −log2 P(s), P the mass of N(0, σ²) on [s − ½, s + ½] (as export/model.py's likelihood)."""
    v = np.abs(s).astype(np.float64)
    a, b = (0.5 - v) / sigma, (-0.5 - v) / sigma
    p = _std_cdf(a) - _std_cdf(b)
    density = (np.exp(-0.5 * b * b) - np.exp(-0.5 * a * a)) / (math.sqrt(2 * math.pi) * sigma)  # dP/dv
    g = -np.sign(s) * density / (np.maximum(p, 1e-9) * math.log(2))
    return np.where(p > 1e-9, g, 0).astype(np.float32)


def _adam(x: np.ndarray, g: np.ndarray, m1: np.ndarray, m2: np.ndarray, t: int,
          betas: tuple[float, float] = (0.9, 0.999)) -> None:
    m1 *= betas[0]
    m1 += (1 - betas[0]) * g
    m2 *= betas[1]
    m2 += (1 - betas[1]) * g * g
    lr = LEARNING_RATE * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
    x -= lr * m1 / (np.sqrt(m2) + 1e-8)


def gradient(bundle: Bundle, rgb: np.ndarray, y_hat: np.ndarray, inv_gain: np.ndarray) -> tuple[np.ndarray, float]:
    """d/dŷ of the synthesis' squared error against uint8 ``rgb`` (pixels in [0, 1]), and that error;
    in the decoder's tiles for a large image, each tile weighing only its core, so the sum is exact."""
    m, lh, lw = y_hat.shape
    height, width = rgb.shape[:2]
    if tiling.whole(lh * tiling.LATENT, lw * tiling.LATENT):
        x, w = _target(rgb, 0, lh * tiling.LATENT, 0, lw * tiling.LATENT, (0, height), (0, width))
        g, sse = bundle.run(GRAPH, y_hat=y_hat[None], inv_gain=inv_gain, x=x, weight=w)
        return g[0], float(sse[0])
    grad = np.zeros_like(y_hat)
    total = [0.0]
    lock = threading.Lock()
    tiles = tiling.synthesis_tiles(lh, lw, height, width)
    parallel = tiling._parallel(bundle.tile_workers, len(tiles))

    def run(tile) -> None:
        (r0, r1, wr0, wr1), (c0, c1, wc0, wc1) = tile
        L = tiling.LATENT
        x, w = _target(rgb, wr0 * L, wr1 * L, wc0 * L, wc1 * L, (r0 * L, min(r1 * L, height)),
                       (c0 * L, min(c1 * L, width)))
        g, sse = bundle.run(GRAPH, y_hat=np.ascontiguousarray(y_hat[None, :, wr0:wr1, wc0:wc1]),
                            inv_gain=inv_gain, x=x, weight=w, single_thread=parallel)
        with lock:
            grad[:, wr0:wr1, wc0:wc1] += g[0]
            total[0] += float(sse[0])

    each(run, tiles, bundle.tile_workers if parallel else 1)
    return grad, total[0]


def _target(rgb: np.ndarray, r0: int, r1: int, c0: int, c1: int, rows: tuple[int, int],
            cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The window [r0, r1) × [c0, c1) of the image as float (1, 3, h, w) in [0, 1], zero beyond its
    edges, and a weight (1, 1, h, w) of 1 on the pixels ``rows`` × ``cols`` (image coordinates)."""
    x = np.zeros((1, 3, r1 - r0, c1 - c0), dtype=np.float32)
    w = np.zeros((1, 1, r1 - r0, c1 - c0), dtype=np.float32)
    hr, hc = min(r1, rgb.shape[0]), min(c1, rgb.shape[1])
    x[0, :, : hr - r0, : hc - c0] = rgb[r0:hr, c0:hc].transpose(2, 0, 1) / np.float32(255)
    w[0, 0, rows[0] - r0 : rows[1] - r0, cols[0] - c0 : cols[1] - c0] = 1
    return x, w
