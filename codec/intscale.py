"""The integer scale path: ẑ → scale-table indexes, bit-exact on every machine.

The entropy decoder must rebuild exactly the tables the encoder used, so the
scale indexes cannot come out of a float network whose last ulp depends on
the CPU, thread count or onnxruntime build. Following Ballé, Johnston & Minnen,
"Integer networks for data compression with latent-variable models" (ICLR
2019), the σ branch of the hyper decoder h_s runs here in integer arithmetic:

- weights are signed integers of at most WEIGHT_BITS bits, biases int64;
- activations are int16 (|x| ≤ ACT_MAX); every layer accumulates exactly,
  then rescales with an integer multiplier and a right shift (round half up);
- LeakyReLU multiplies negatives by LEAKY_NUM / 2**LEAKY_SHIFT, flooring;
- the last layer's accumulator is compared with integer thresholds, one row
  per channel, derived from the scale table: index = #(thresholds < acc).

The products are summed with float64 matrix multiplication: every term and
partial sum is an integer below 2**53, where float64 addition is exact in any
order, so BLAS kernels, thread counts and FMA cannot change the result (this
is the reason for the bit limits). μ and the synthesis stay float: they move
pixel values, never decodability.
"""

from __future__ import annotations

import numpy as np

INDEX_PATH_VERSION = 1
WEIGHT_BITS = 12
ACT_MAX = 2**15 - 1
LEAKY_NUM, LEAKY_SHIFT = 41, 12  # 41/4096 ≈ 0.0100, torch's LeakyReLU default slope
CHUNK_ELEMENTS = 2**22  # im2col block size (32 MiB of float64): bounds memory on large images


def _im2col_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact integer 'valid' convolution of x (C, H, W) with w (O, C, k, k) → int64 (O, H−k+1, W−k+1)."""
    o, c, k, _ = w.shape
    wm = w.reshape(o, -1).astype(np.float64).T  # (C·k·k, O)
    h_out, w_out = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = np.empty((o, h_out, w_out), dtype=np.int64)
    xf = x.astype(np.float64)
    step = max(1, CHUNK_ELEMENTS // (w_out * c * k * k))
    for r in range(0, h_out, step):
        rows = min(step, h_out - r)
        win = np.lib.stride_tricks.sliding_window_view(xf[:, r : r + rows + k - 1], (k, k), axis=(1, 2))
        cols = win.transpose(1, 2, 0, 3, 4).reshape(rows * w_out, c * k * k)  # (positions, C·k·k)
        out[:, r : r + rows] = (cols @ wm).T.reshape(o, rows, w_out).astype(np.int64)
    return out


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1) -> np.ndarray:
    """Integer Conv2d with 'same' padding k//2 (stride 1 only, as h_s uses)."""
    assert stride == 1
    p = w.shape[-1] // 2
    return _im2col_matmul(np.pad(x, ((0, 0), (p, p), (p, p))), w)


def conv_transpose2d(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Integer ConvTranspose2d(k, stride 2, padding k//2, output_padding 1) for w (C_in, O, k, k)."""
    c, h, wd = x.shape
    k = w.shape[-1]
    up = np.zeros((c, 2 * h - 1, 2 * wd - 1), dtype=x.dtype)
    up[:, ::2, ::2] = x
    lo = k - 1 - k // 2
    up = np.pad(up, ((0, 0), (lo, lo + 1), (lo, lo + 1)))
    return _im2col_matmul(up, np.flip(w, axis=(2, 3)).transpose(1, 0, 2, 3))


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """round(acc · mult / 2**shift) per channel, clipped to int16 range."""
    m = mult.reshape(-1, 1, 1)
    s = shift.reshape(-1, 1, 1)
    y = np.right_shift(acc * m + np.left_shift(1, s - 1), s)
    return np.clip(y, -ACT_MAX, ACT_MAX)


def leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, np.right_shift(x * LEAKY_NUM, LEAKY_SHIFT))


def accumulate(z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """ẑ symbols (N, h, w) → the σ layer's int64 accumulator (M, 4h, 4w)."""
    x = np.clip(z.astype(np.int64), -ACT_MAX, ACT_MAX)
    x = conv_transpose2d(x, p["w0"]) + p["b0"].reshape(-1, 1, 1)
    x = leaky_relu(requantize(x, p["m0"], p["s0"]))
    x = conv_transpose2d(x, p["w1"]) + p["b1"].reshape(-1, 1, 1)
    x = leaky_relu(requantize(x, p["m1"], p["s1"]))
    return conv2d(x, p["w2"]) + p["b2"].reshape(-1, 1, 1)


def indexes(z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Scale-table index per y element: the count of the channel's thresholds below its accumulator."""
    acc = accumulate(z, p)
    thresholds = p["thresholds"]  # (M, T) int64, ascending per row
    out = np.empty(acc.shape, dtype=np.int16)
    for c in range(acc.shape[0]):
        out[c] = np.minimum(np.searchsorted(thresholds[c], acc[c], side="left"), thresholds.shape[1] - 1)
    return out
