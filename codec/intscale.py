"""The integer scale path: ẑ → scale-table indexes, bit-exact on every machine.

The entropy decoder must rebuild exactly the tables the encoder used, so the
scale indexes cannot come out of a float network whose last ulp depends on
the CPU, thread count or onnxruntime build. Following Ballé, Johnston & Minnen,
"Integer networks for data compression with latent-variable models" (ICLR
2019), the σ branch of the hyper decoder h_s runs here in integer arithmetic:

- weights are signed integers of at most WEIGHT_BITS bits, biases int64;
- activations are int16 (|x| ≤ ACT_MAX); every layer accumulates exactly,
  then rescales with an integer multiplier and a right shift (round half up);
- LeakyReLU multiplies negatives by LEAKY_NUM / 2**LEAKY_SHIFT, rounding half up
  (flooring, in version 1, biased σ upwards: measured once against torch, about 3.5%);
- the last layer's accumulator is compared with integer thresholds, one row
  per channel, derived from the scale table: index = #(thresholds < acc);
- a model with gain units on z feeds h_s with ẑ · z_inv_gain: here the inverse
  gain is an integer per channel and quality with Z_INV_BITS fraction bits,
  stored in the bundle, so the input ẑ · q is exact too;
- a channel-conditional model (slices; Minnen & Singh 2020) adds to the σ
  accumulator of each slice k ≥ 1 the output of a small integer network over
  two integer inputs: h_s's σ accumulator requantized to int16 (F), and the
  integer symbols round(y − μ) of the earlier slices, which the decoder has
  already entropy-decoded. Never ŷ = μ + symbol: μ is float.

The products are summed with float64 matrix multiplication: every term and
partial sum is an integer below 2**53, where float64 addition is exact in any
order, so BLAS kernels, thread counts and FMA cannot change the result (this
is the reason for the bit limits). Layers with 8-bit weights and int16 input
(every layer but the first, in exports since onic 0.7.0) run instead on
onnxruntime's 8-bit integer convolutions (codec/intconv.py), whose int32 sums
are exact too: the same integers, about three times faster (7-bit weights, on its
uint8 × int8 matrix products, faster again). μ and the synthesis
stay float: they move pixel values, never decodability.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from codec import intconv
from codec.threads import bands, each

INDEX_PATH_VERSION = 2  # 1 (onic 0.1.0) floored in leaky_relu, which biased σ upwards
WEIGHT_BITS = 12
ACT_MAX = 2**15 - 1
LEAKY_NUM, LEAKY_SHIFT = 41, 12  # 41/4096 ≈ 0.0100, torch's LeakyReLU default slope
Z_INV_BITS = 12  # fraction bits of the integer inverse gains on ẑ
Z_INV_MAX = 2**16 - 1  # inverse gains below 16: with |ẑ| ≤ ACT_MAX the input stays under X_MAX
X_MAX = 2**30 - 1  # bound on the first layer's input: 2**30 · 12-bit weights · (N ≤ 455)·9 taps < 2**53


CHUNK_ELEMENTS = 2**22  # column-buffer size per matrix product (32 MiB of float64): bounds memory


def _row_chunks(rows: int, elements_per_row: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, elements_per_row))
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def _padded(x: np.ndarray, p: int) -> np.ndarray:
    """x (C, H, W) as float64 with p zeros on every side, in one allocation."""
    c, h, w = x.shape
    out = np.zeros((c, h + 2 * p, w + 2 * p), dtype=np.float64)
    out[:, p : p + h, p : p + w] = x
    return out


def conv2d(x: np.ndarray, w: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Exact integer Conv2d, stride 1, padding k//2: x (C, H, W), w (O, C, k, k) → int64 (O, H, W);
    ``channels_last``: x (H, W, C) → (H, W, O).

    One matrix product per band of rows gives every tap's contribution at every
    padded position, Y[tap] = w[:, :, tap] @ x_padded; the output is the sum of
    the k² shifted Y[tap]. No column buffer k² times the input is built, which
    made the column version (0.3.0) three times slower; the sums are the same
    exact integers.
    """
    fast = intconv.engine(w) if intconv.in_range(x) else None
    if fast is not None:  # 8-bit weights on int16 input: the same integers, about 3× faster
        return fast(x, channels_last)
    if channels_last:
        return np.transpose(conv2d(np.transpose(x, (2, 0, 1)), w), (1, 2, 0))
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    xp = _padded(x, p)
    wp = wd + 2 * p
    wm = w.transpose(2, 3, 0, 1).reshape(k * k * o, c).astype(np.float64)  # rows: tap-major, then O
    out = np.empty((o, h, wd), dtype=np.int64)
    for r0, r1 in _row_chunks(h, wp * k * k * o):
        n = r1 - r0
        y = (wm @ xp[:, r0 : r1 + 2 * p].reshape(c, -1)).reshape(k, k, o, n + 2 * p, wp)
        acc = y[0, 0, :, :n, :wd].copy()
        for ky in range(k):
            for kx in range(k):
                if ky or kx:
                    acc += y[ky, kx, :, ky : ky + n, kx : kx + wd]
        out[:, r0:r1] = acc
    return out


def conv_transpose2d(x: np.ndarray, w: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Exact integer ConvTranspose2d, stride 2, padding k//2, output padding 1: w (C, O, k, k) → (O, 2H, 2W);
    ``channels_last``: x (H, W, C) → (2H, 2W, O).

    Computed per output phase (polyphase): output (2j + r) receives tap kk from input
    j + (r − kk + p)/2 whenever that is whole, so each of the four phases is one matrix
    product on the low-resolution input and no work is spent on inserted zeros.
    """
    fast = intconv.engine(w, transposed=True) if intconv.in_range(x) else None
    if fast is not None:
        return fast(x, channels_last)
    if channels_last:
        return np.transpose(conv_transpose2d(np.transpose(x, (2, 0, 1)), w), (1, 2, 0))
    c, h, wd = x.shape
    o, k = w.shape[1], w.shape[2]
    p = k // 2
    pad = k
    xp = _padded(x, pad)
    out = np.empty((o, 2 * h, 2 * wd), dtype=np.int64)
    for ry in (0, 1):
        ty = [(kk, (ry - kk + p) // 2) for kk in range(k) if (ry - kk + p) % 2 == 0]
        for rx in (0, 1):
            tx = [(kk, (rx - kk + p) // 2) for kk in range(k) if (rx - kk + p) % 2 == 0]
            wm = np.concatenate([w[:, :, ky, kx].T for ky, _ in ty for kx, _ in tx], axis=1).astype(np.float64)
            for r0, r1 in _row_chunks(h, wd * c * len(ty) * len(tx)):
                cols = np.concatenate([xp[:, pad + dy + r0 : pad + dy + r1, pad + dx : pad + dx + wd].reshape(c, -1)
                                       for _, dy in ty for _, dx in tx])
                out[:, 2 * r0 + ry : 2 * r1 : 2, rx::2] = (wm @ cols).reshape(o, r1 - r0, wd).astype(np.int64)
    return out


ACC_MAX = 2**47  # |acc| · mult (< 2**15) must stay inside int64; with shift ≤ MAX_SHIFT the clip
MAX_SHIFT = 46  # changes no result, since every |acc| ≥ 2**(shift + 1) saturates at ACT_MAX anyway


def _per_channel(v: np.ndarray, channels_last: bool) -> np.ndarray:
    """A per-channel vector shaped to broadcast over (C, H, W), or over (H, W, C)."""
    return v.reshape(-1) if channels_last else v.reshape(-1, 1, 1)


def rescale(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, in_place: bool = False,
            channels_last: bool = False) -> np.ndarray:
    """round(acc · mult / 2**shift) per channel, unclipped (the result stays far inside int64).

    One new array (none with ``in_place``, which overwrites acc), then in place: a band of a
    large image's widest layer is 100 MB of int64. ``channels_last``: acc is (H, W, C).
    """
    # only hostile ẑ times large inverse gains come near ACC_MAX
    out = np.clip(acc, -ACC_MAX, ACC_MAX, out=acc if in_place else None)
    s = _per_channel(shift, channels_last)
    out *= _per_channel(mult, channels_last)
    out += np.left_shift(1, s - 1)
    np.right_shift(out, s, out=out)
    return out


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, in_place: bool = False,
               channels_last: bool = False) -> np.ndarray:
    """round(acc · mult / 2**shift) per channel, clipped to int16 range."""
    out = rescale(acc, mult, shift, in_place, channels_last)
    return np.clip(out, -ACT_MAX, ACT_MAX, out=out)


def leaky_relu(x: np.ndarray) -> np.ndarray:
    """Negatives times LEAKY_NUM / 2**LEAKY_SHIFT, rounded half up; in place.

    Written as max(x, 0) + round(min(x, 0) · slope), whose second term is 0 for x ≥ 0:
    whole-array arithmetic, three times faster than indexing the negatives.
    """
    scaled = np.minimum(x, 0)
    scaled *= LEAKY_NUM
    scaled += 1 << (LEAKY_SHIFT - 1)
    scaled >>= LEAKY_SHIFT
    np.maximum(x, 0, out=x)
    x += scaled
    return x


def accumulate(z: np.ndarray, p: dict[str, np.ndarray], z_inv: np.ndarray | None = None,
               channels_last: bool = False) -> np.ndarray:
    """ẑ symbols (N, h, w) → the σ layer's int64 accumulator (M, 4h, 4w).

    ``z_inv``: the integer inverse gains on z (N,) of the file's quality, for
    models with gain units on z; None for those without. ``channels_last``: the
    layers after the first run on (H, W, C) arrays and the result is (4h, 4w, M),
    the same integers (``matrix_layers``).
    """
    x = _input(z, z_inv)
    for layer in (0, 1):  # in place where it can be: these are the largest arrays of a band
        last = channels_last and layer == 1
        if last:
            x = np.ascontiguousarray(np.transpose(x, (1, 2, 0)))
        x = conv_transpose2d(x, p[f"w{layer}"], last)
        x += _per_channel(p[f"b{layer}"], last)
        x = leaky_relu(requantize(x, p[f"m{layer}"], p[f"s{layer}"], in_place=True, channels_last=last))
    x = conv2d(x, p["w2"], channels_last)
    x += _per_channel(p["b2"], channels_last)
    return x


def matrix_layers(p: dict[str, np.ndarray]) -> bool:
    """Whether h_s's second and third layers both run as uint8 × int8 matrix products (7-bit
    weights, codec/intconv.py), whose columns and products are channels last: run there, the
    layers need no transposes of their digits or int32 products (1.17× and 1.31× on h_s's layers:
    ``python benchmarks/intconv_engines.py``'s last column; README, onic 0.12.2)."""
    second, third = intconv.engine(p["w1"], transposed=True), intconv.engine(p["w2"])
    return bool(second is not None and second.matrix and third is not None and third.matrix)


def _input(z: np.ndarray, z_inv: np.ndarray | None) -> np.ndarray:
    """h_s's integer input: the ẑ symbols, times the integer inverse gains on z where there are some."""
    x = np.clip(z.astype(np.int64), -ACT_MAX, ACT_MAX)
    if z_inv is not None:
        x = np.clip(x * np.clip(z_inv.astype(np.int64), 0, Z_INV_MAX).reshape(-1, 1, 1), -X_MAX, X_MAX)
    return x


def float_indexes(sigma: np.ndarray, scale_table: np.ndarray) -> np.ndarray:
    """The float reference the integer path approximates: the smallest table scale ≥ σ.

    (CompressAI's build_indexes.) Never used for coding, only to measure the integer path.
    """
    return np.minimum(np.searchsorted(scale_table, sigma, side="left"), len(scale_table) - 1)


BAND, BAND_MARGIN = 16, 2  # rows of z per band, and of context per side (h_s reaches 7/4 rows of z)
# What a band may grow to so that the bands divide among the workers (threads.bands): a band of
# 16 rows at 9,216 pixels wide, a little more than the 50 MP image's (8,660 pixels), which sets the peak.
BAND_CELLS = BAND * 144


def _band(z: np.ndarray, p: dict[str, np.ndarray], z_inv: np.ndarray | None, r0: int, r1: int,
          channels_last: bool = False) -> np.ndarray:
    """The accumulator of y rows [4·r0, 4·r1) from the band of z rows [r0, r1) and its margins.

    Bands keep the int64 activations small on large images; integer
    arithmetic makes the bands equal to the whole, exactly.
    """
    w0, w1 = max(0, r0 - BAND_MARGIN), min(z.shape[1], r1 + BAND_MARGIN)
    acc = accumulate(z[:, w0:w1], p, z_inv, channels_last)
    rows = slice(4 * (r0 - w0), 4 * (r1 - w0))
    return acc[rows] if channels_last else acc[:, rows]


def _z_bands(z: np.ndarray, workers: int) -> list[tuple[int, int]]:
    return bands(z.shape[1], BAND, workers, z.shape[2], BAND_CELLS)


def _to_index(acc: np.ndarray, thresholds: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Per channel, the count of its thresholds (ascending rows) below the accumulator, capped at the last.
    ``channels_last``: acc is (H, W, C), and so is the result.

    The thresholds are a geometric scale table in each channel's units, so a float guess from
    log(acc) is within a step of the count nearly everywhere; exact integer comparisons with the
    thresholds around the guess give the count, and binary search recounts any element whose
    guess was further off. The integers are the same whatever the float guess; only the time is
    not (about 2× faster than binary search alone here).
    """
    c, t = thresholds.shape
    geometric = acc.size > 0 and t >= 2 and int(thresholds[:, 0].min()) > 0
    if geometric:
        lo = np.log(thresholds[:, 0].astype(np.float64))
        step = (np.log(thresholds[:, -1].astype(np.float64)) - lo) / (t - 1)
        geometric = bool(np.all(step > 0))
    if not geometric:
        if channels_last:
            return np.transpose(_searched(np.transpose(acc, (2, 0, 1)), thresholds), (1, 2, 0))
        return _searched(acc, thresholds)

    def per_channel(v: np.ndarray) -> np.ndarray:  # broadcast along the channel axis of flat
        return v[None, :] if channels_last else v[:, None]

    flat = acc.reshape(-1, c) if channels_last else acc.reshape(c, -1)
    # m: the guessed count less one, so the count is m, m + 1 or m + 2 when the guess is within one
    guess = np.log(np.maximum(flat, 1).astype(np.float32))
    guess -= per_channel(lo.astype(np.float32))
    guess *= per_channel((1 / step).astype(np.float32))
    np.floor(guess, out=guess)
    np.clip(guess, 0, t - 1, out=guess)
    m = guess.astype(np.int64)
    # bounds[i] is threshold i − 1 of the row, padded with −∞ and +∞: the count is n when
    # bounds[n] < acc ≤ bounds[n + 1]
    bounds = np.empty((c, t + 3), dtype=np.int64)
    bounds[:, 0], bounds[:, 1 : t + 1], bounds[:, t + 1 :] = np.iinfo(np.int64).min, thresholds, np.iinfo(np.int64).max
    row = per_channel(np.arange(c) * (t + 3))  # where each channel's bounds start, flattened
    m += row
    bounds = bounds.reshape(-1)
    wrong = flat <= bounds[m]
    n = m - row
    m += 1
    n += flat > bounds[m]
    m += 1
    n += flat > bounds[m]
    m += 1
    wrong |= flat > bounds[m]
    if wrong.any():
        if channels_last:
            for r in np.unique(np.nonzero(wrong)[1]):
                here = wrong[:, r]
                n[here, r] = np.searchsorted(thresholds[r], flat[here, r], side="left")
        else:
            for r in np.unique(np.nonzero(wrong)[0]):
                here = wrong[r]
                n[r, here] = np.searchsorted(thresholds[r], flat[r, here], side="left")
    np.minimum(n, t - 1, out=n)
    return n.astype(np.int16).reshape(acc.shape)


def _searched(acc: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """_to_index by binary search alone, channel by channel."""
    out = np.empty(acc.shape, dtype=np.int16)
    for c in range(acc.shape[0]):
        out[c] = np.minimum(np.searchsorted(thresholds[c], acc[c], side="left"), thresholds.shape[1] - 1)
    return out


def indexes(z: np.ndarray, p: dict[str, np.ndarray], z_inv: np.ndarray | None = None,
            workers: int = 1) -> np.ndarray:
    """Scale-table index per y element: the count of the channel's thresholds below its accumulator.

    ``workers`` threads take the bands of a large image; each band's integers are the same
    whoever computes them.
    """
    thresholds = p["thresholds"]  # (M, T) int64, ascending per row
    out = np.empty((thresholds.shape[0], 4 * z.shape[1], 4 * z.shape[2]), dtype=np.int16)
    last = matrix_layers(p)

    def band(rows: tuple[int, int]) -> None:
        r0, r1 = rows
        index = _to_index(_band(z, p, z_inv, r0, r1, last), thresholds, last)
        out[:, 4 * r0 : 4 * r1] = np.transpose(index, (2, 0, 1)) if last else index

    each(band, _z_bands(z, workers), workers)
    return out


def slice_bounds(p: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """[a_k, b_k) channels of y per slice of a channel-conditional scale path."""
    edges = np.concatenate([[0], np.cumsum(p["slices"])]).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def hyper_state(z: np.ndarray, p: dict[str, np.ndarray], z_inv: np.ndarray | None = None,
                workers: int = 1):
    """What the slices of a channel-conditional model share: h_s's σ accumulator (M, 4h, 4w) int64
    and its requantization F (int16), the first input of every slice network."""
    m = p["thresholds"].shape[0]
    acc = np.empty((m, 4 * z.shape[1], 4 * z.shape[2]), dtype=np.int64)
    f = np.empty(acc.shape, dtype=np.int16)

    def band(rows: tuple[int, int]) -> None:
        r0, r1 = rows
        acc[:, 4 * r0 : 4 * r1] = part = _band(z, p, z_inv, r0, r1)
        f[:, 4 * r0 : 4 * r1] = requantize(part, p["f_m"], p["f_s"])

    each(band, _z_bands(z, workers), workers)
    return acc, f


HELP_GROUPS = 4  # groups of h_s's widest layer's channels, the units a second thread can take


class SharedHyperState:
    """hyper_state of an image that runs whole, in HELP_GROUPS groups of the channels of h_s's widest
    (second) layer that two threads can share: the decoder's float chain, idle once its μ is made
    until the first slice's symbols arrive, calls ``help()`` while the integer chain calls ``result()``.

    Group g is the second layer's output channels [c_g, c_g+1) and the third layer's products with
    those input channels alone; the third layer's accumulator is the sum of the groups' exact
    integer products, so it is the same whichever thread ran which group, and the same as
    hyper_state's. The first layer runs once, on the ``result()`` thread.
    """

    def __init__(self, z: np.ndarray, p: dict[str, np.ndarray], z_inv: np.ndarray | None = None):
        self._z, self._p, self._z_inv = z, p, z_inv
        self._groups = _channel_groups(p)
        self._x: np.ndarray | None = None  # the first layer's output, once made
        self._started = threading.Event()  # set once the first layer is done, or has failed
        self._lock = threading.Lock()
        self._next = 0
        self._parts: list[np.ndarray | None] = [None] * len(self._groups)
        self._done = [threading.Event() for _ in self._groups]
        self._failure: BaseException | None = None

    def help(self) -> None:
        """Take groups until none is left (the second thread; its errors go to ``result()``)."""
        self._started.wait()
        if self._x is not None:
            self._take_groups()

    def cancel(self) -> None:
        """Release a waiting ``help()`` when ``result()`` will not be called (its thread failed first)."""
        self._started.set()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(accumulator int64, F int16), as hyper_state returns them; run the rest of the groups."""
        p = self._p
        try:
            x = _input(self._z, self._z_inv)
            x = conv_transpose2d(x, p["w0"])
            x += p["b0"].reshape(-1, 1, 1)
            self._x = leaky_relu(requantize(x, p["m0"], p["s0"], in_place=True))
        finally:
            self._started.set()
        self._take_groups()
        for done in self._done:
            done.wait()
        if self._failure is not None:
            raise self._failure
        acc = self._parts[0]
        for part in self._parts[1:]:
            acc += part
        acc += p["b2"].reshape(-1, 1, 1)
        return acc, requantize(acc, p["f_m"], p["f_s"])

    def _take_groups(self) -> None:
        while True:
            with self._lock:
                g, self._next = self._next, self._next + 1
            if g >= len(self._groups):
                return
            try:
                self._parts[g] = self._group(g)
            except BaseException as e:  # result() re-raises it on its own thread
                self._failure = e
            finally:
                self._done[g].set()

    def _group(self, g: int) -> np.ndarray:
        w1, b1, m1, s1, w2 = self._groups[g]
        x = conv_transpose2d(self._x, w1)
        x += b1.reshape(-1, 1, 1)
        return conv2d(leaky_relu(requantize(x, m1, s1, in_place=True)), w2)


_group_cache: dict[int, list[tuple[np.ndarray, ...]]] = {}
_group_lock = threading.Lock()


def _channel_groups(p: dict[str, np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """(w1, b1, m1, s1, w2) of each channel group, sliced once per scale path: contiguous arrays
    that live as long as its w1 does, so the 8-bit engines built for them (intconv.engine) are reused."""
    key = id(p["w1"])
    with _group_lock:
        if key not in _group_cache:
            edges = np.linspace(0, p["w1"].shape[1], HELP_GROUPS + 1).round().astype(int)
            _group_cache[key] = [tuple(np.ascontiguousarray(a) for a in (
                p["w1"][:, c0:c1], p["b1"][c0:c1], p["m1"][c0:c1], p["s1"][c0:c1], p["w2"][:, c0:c1]))
                for c0, c1 in zip(edges[:-1], edges[1:], strict=True)]
            weakref.finalize(p["w1"], _group_cache.pop, key, None)
        return _group_cache[key]


SLICE_BAND, SLICE_MARGIN = 64, 2  # rows of y per band of a slice network, and of context (two 3×3 convs)
SLICE_BAND_CELLS = SLICE_BAND * 576  # what a band may grow to (as BAND_CELLS: 64 rows at 9,216 pixels)


def slice_indexes(k: int, state: tuple[np.ndarray, np.ndarray], symbols: np.ndarray,
                  p: dict[str, np.ndarray], workers: int = 1) -> np.ndarray:
    """Scale-table indexes (b_k − a_k, H, W) of slice k from the shared state and the integer
    symbols of the earlier slices (``symbols[:a_k]``; the rest is not read)."""
    acc, f = state
    a, b = slice_bounds(p)[k]
    if k == 0:
        return _to_index(acc[a:b], p["thresholds"][a:b])
    q = {n[len(f"k{k}_"):]: v for n, v in p.items() if n.startswith(f"k{k}_")}
    h = acc.shape[1]
    out = np.empty((b - a, h, acc.shape[2]), dtype=np.int16)

    def band(rows: tuple[int, int]) -> None:
        r0, r1 = rows
        w0, w1 = max(0, r0 - SLICE_MARGIN), min(h, r1 + SLICE_MARGIN)
        sym = np.clip(symbols[:a, w0:w1].astype(np.int64), -ACT_MAX, ACT_MAX)
        x = rescale(conv2d(f[:, w0:w1], q["wf"]), q["mf"], q["sf"]) + rescale(conv2d(sym, q["ws"]), q["ms"], q["ss"])
        x = leaky_relu(np.clip(x + q["b1"].reshape(-1, 1, 1), -ACT_MAX, ACT_MAX))
        ctx = rescale(conv2d(x, q["w2"]), q["m2"], q["s2"]) + q["b2"].reshape(-1, 1, 1)
        out[:, r0:r1] = _to_index(acc[a:b, r0:r1] + ctx[:, r0 - w0 : r1 - w0], p["thresholds"][a:b])

    each(band, bands(h, SLICE_BAND, workers, acc.shape[2], SLICE_BAND_CELLS), workers)
    return out
