"""Exact integer convolutions on onnxruntime's 8-bit kernels, for the integer scale path.

codec/intscale.py sums its products in float64, which is exact but runs at
float64 speed. Its layers whose weights fit in 8 bits and whose input is int16
can instead run as onnxruntime ``ConvInteger`` (uint8 × uint8, int32
accumulation), about three times faster here, with the same integers:

- the weights go in as w + 128 with weight zero point 128, so the kernel sees w;
- the int16 input is offset to x + 32768 (0 … 65535) and split into two uint8
  digits, high and low, run as a batch of two; the result is
  256 · conv(high) + conv(low) − 32768 · Σw, every term an exact integer;
- input that fits in one byte, x in [−128, 128) (the symbols of earlier slices, nearly
  always), goes in as x + 128 alone: y − 128 · Σw, half the work;
- the offset input is padded with the offset (which is x = 0) before the call, so
  the border needs no correction;
- every partial sum stays below 2**31, even the kernel's Σ x·(w + 128) before it
  subtracts its zero-point term (at most ``MAX_TAPS`` input values per output,
  255 · 255 each), where int32 arithmetic is exact in any order, so kernels and
  thread counts cannot change the result. Unsigned × unsigned is the combination
  onnxruntime's x86 kernels never saturate: without VNNI they widen the input to
  int16 and multiply pairs into int32 (vpmaddwd), where uint8 × int8 would sum
  byte pairs into int16 (vpmaddubsw) and could saturate.
- weights within ±S8_MAX (63: exports with ``--scale_weight_bits 7``) run instead as
  one uint8 × int8 ``MatMulInteger`` of the digits' columns (each output's taps and
  channels in a row) by the weights, which onnxruntime packs once: 1.3–1.8× as fast
  as ConvInteger on h_s's layers (``python benchmarks/intconv_engines.py``). With
  |w| ≤ 63 a byte pair sums to at most
  2 · 255 · 63 = 32,130 < 2**15, so vpmaddubsw cannot saturate either, and VNNI and
  ARM's dot products accumulate in int32 anyway: the same integers on every kernel.

The one-node graphs are written here, a few protobuf fields, so the runtime
needs no ``onnx`` package. A layer that does not fit (12-bit weights of an
older export, the first layer's input of ẑ times inverse gains) stays on
float64; ``intscale.conv2d`` and ``intscale.conv_transpose2d`` choose.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

W_MAX = 127  # |weights| that run here
S8_MAX = 63  # |weights| that run as uint8 × int8 matrix products instead (``Conv``): see the docstring
X_MIN, X_MAX = -(2**15), 2**15 - 1  # input range that runs here
OFFSET = 2**15
SMALL = 2**7  # inputs in [−SMALL, SMALL) run as one digit, x + SMALL
MAX_TAPS = (2**31 - 1) // (255 * 255)  # input values per output: every int32 partial sum stays exact
CHUNK_BYTES = 2**25  # int64 result rows per call (32 MiB): bounds memory on large images


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number * 8 + 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number * 8) + _varint(value)


_UINT8, _INT8, _INT32 = 2, 3, 6  # onnx TensorProto data types


def _tensor(name: str, a: np.ndarray, elem_type: int = _UINT8) -> bytes:
    dims = b"".join(_int(1, d) for d in a.shape)
    return dims + _int(2, elem_type) + _field(8, name.encode()) + _field(9, a.tobytes())


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_field(1, _int(1, d) if isinstance(d, int) else _field(2, d.encode())) for d in dims)
    return _field(1, name.encode()) + _field(2, _field(1, _int(1, elem_type) + _field(2, shape)))


def conv_integer_model(w: np.ndarray) -> bytes:
    """A serialized ONNX model: y (int32) = ConvInteger(x (uint8), w + 128, zero points 0 and 128), no padding."""
    o, c = w.shape[:2]
    node = b"".join(_field(1, n.encode()) for n in ("x", "w", "xz", "wz")) + _field(2, b"y") + _field(4, b"ConvInteger")
    graph = (_field(1, node) + _field(2, b"intconv")
             + _field(5, _tensor("w", (w + 128).astype(np.uint8)))
             + _field(5, _tensor("xz", np.array(0, np.uint8))) + _field(5, _tensor("wz", np.array(128, np.uint8)))
             + _field(11, _value_info("x", _UINT8, ["n", c, "h", "w"]))
             + _field(12, _value_info("y", _INT32, ["n", o, "oh", "ow"])))
    return _int(1, 8) + _field(7, graph) + _field(8, _field(1, b"") + _int(2, 17))


def matmul_integer_model(b: np.ndarray) -> bytes:
    """A serialized ONNX model: y (int32, m × N) = MatMulInteger(a (uint8, m × K), b (int8, K × N)),
    zero points 0; b is an initializer, which onnxruntime packs once for its kernels."""
    k, n = b.shape
    node = _field(1, b"a") + _field(1, b"b") + _field(2, b"y") + _field(4, b"MatMulInteger")
    graph = (_field(1, node) + _field(2, b"intmatmul") + _field(5, _tensor("b", b.astype(np.int8), _INT8))
             + _field(11, _value_info("a", _UINT8, ["m", k]))
             + _field(12, _value_info("y", _INT32, ["m", n])))
    return _int(1, 8) + _field(7, graph) + _field(8, _field(1, b"") + _int(2, 17))


def fits(w: np.ndarray) -> bool:
    """Whether a weight tensor (O, C, k, k) can run here."""
    return int(np.abs(w).max(initial=0)) <= W_MAX and w.shape[1] * w.shape[2] * w.shape[3] <= MAX_TAPS


def _session(model: bytes):
    import onnxruntime as ort  # here, not at the top: opening a file (Pillow's plugin) reads headers only

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # callers run bands on threads of their own
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_cpu_mem_arena = False  # an arena per layer would keep each one's largest band alive
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _digit_rows(x: np.ndarray, pad: int, step: int, channels_last: bool = False):
    """(r0, r1, digits, one) per band of ``step`` output rows of a convolution of x (C, H, W),
    integers in [X_MIN, X_MAX], padded by ``pad`` on every side: digits (D, C, r1 − r0 + 2·pad,
    W + 2·pad) uint8, the high and the low digit of x + 32768, or where every x fits in one byte
    (the symbols of earlier slices, mostly), x + 128 alone (D = 1, ``one``), half the work.
    ``channels_last``: x is (H, W, C) and the digits (D, r1 − r0 + 2·pad, W + 2·pad, C)."""
    h, wd = x.shape[:2] if channels_last else x.shape[1:]
    one = x.size == 0 or (int(x.min()) >= -SMALL and int(x.max()) < SMALL)
    offset = SMALL if one else OFFSET
    if channels_last:
        xp = np.full((h + 2 * pad, wd + 2 * pad, x.shape[2]), offset, dtype=np.uint16)
        inner = xp[pad : pad + h, pad : pad + wd]
    else:
        xp = np.full((x.shape[0], h + 2 * pad, wd + 2 * pad), offset, dtype=np.uint16)
        inner = xp[:, pad : pad + h, pad : pad + wd]
    np.add(x, offset, out=inner, dtype=np.int32, casting="unsafe")
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        rows = xp[r0 : r1 + 2 * pad] if channels_last else xp[:, r0 : r1 + 2 * pad]
        if one:
            digits = rows.astype(np.uint8)[None]
        else:
            digits = np.empty((2, *rows.shape), dtype=np.uint8)
            np.right_shift(rows, 8, out=digits[0], casting="unsafe")
            np.bitwise_and(rows, 255, out=digits[1], casting="unsafe")
        yield r0, r1, digits, one


_buffers = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    """An array of ``shape`` on a buffer of this thread's, reused from call to call: buffers of a
    few MB made anew per call stayed in glibc's per-thread heaps, and raised a 50 MP round trip's
    peak (README, the 7-bit weights' round)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = getattr(_buffers, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=np.uint8)
        setattr(_buffers, name, buf)
    return buf[:size].view(dtype).reshape(shape)


def _step(values_per_row: int) -> int:
    """Output rows per call, so that a call's int64 results stay within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (8 * max(1, values_per_row)))


class Conv:
    """Exact Conv2d, stride 1, of int16-range input with 8-bit weights (O, C, kh, kw); called, with
    padding k//2 (square kernels). Weights within ±S8_MAX run as one uint8 × int8 matrix product
    of the digits' columns (``matrix``), the rest as ConvInteger (module docstring)."""

    def __init__(self, w: np.ndarray):
        if not fits(w):
            raise ValueError("weights outside 8 bits or too many taps for int32 sums")
        self.o, self.c, self.kh, self.kw = w.shape
        self.matrix = int(np.abs(w).max(initial=0)) <= S8_MAX
        if self.matrix:  # rows in the columns' order: tap row, tap column, channel
            self.session = _session(matmul_integer_model(np.transpose(w, (2, 3, 1, 0)).reshape(-1, self.o)))
        else:
            self.session = _session(conv_integer_model(w))
        self.correction = OFFSET * w.astype(np.int64).sum(axis=(1, 2, 3)).reshape(-1, 1, 1)

    def products(self, digits: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """(D, O, h, w) int32: the valid convolution of each digit plane (D, C, h + kh − 1, w + kw − 1);
        ``channels_last``: planes (D, h + kh − 1, w + kw − 1, C) → (D, h, w, O), which the matrix
        products make without a transpose either way."""
        if not self.matrix:
            if channels_last:
                y = self.session.run(None, {"x": np.ascontiguousarray(np.transpose(digits, (0, 3, 1, 2)))})[0]
                return np.transpose(y, (0, 2, 3, 1))
            return self.session.run(None, {"x": digits})[0]
        if channels_last:
            d, hp, wp, c = digits.shape
            pixels = digits
        else:
            d, c, hp, wp = digits.shape
            pixels = _scratch("pixels", (d, hp, wp, c))  # channels last: each tap a block copy
            pixels[...] = np.transpose(digits, (0, 2, 3, 1))
        h, w = hp - self.kh + 1, wp - self.kw + 1
        columns = _scratch("columns", (d, h, w, self.kh * self.kw * c))
        for dy in range(self.kh):
            for dx in range(self.kw):
                t = (dy * self.kw + dx) * c
                columns[..., t : t + c] = pixels[:, dy : dy + h, dx : dx + w]
        y = _scratch("products", (d * h * w, self.o), np.int32)
        binding = self.session.io_binding()
        binding.bind_cpu_input("a", columns.reshape(d * h * w, self.kh * self.kw * c))
        binding.bind_output("y", "cpu", 0, np.int32, list(y.shape), y.ctypes.data)
        self.session.run_with_iobinding(binding)
        y = y.reshape(d, h, w, self.o)
        return y if channels_last else np.transpose(y, (0, 3, 1, 2))

    def combine(self, y: np.ndarray, out: np.ndarray, one: bool, channels_last: bool = False) -> None:
        """The exact int64 result from the digits' products: 256 · y[0] + y[1] − 32768 · Σw from
        two digits, y[0] − 128 · Σw from one."""
        correction = self.correction.reshape(-1) if channels_last else self.correction
        if one:
            np.subtract(y[0], correction // (OFFSET // SMALL), out=out, dtype=np.int64)
            return
        np.left_shift(y[0], 8, out=out, dtype=np.int64)
        out += y[1]
        out -= correction

    def __call__(self, x: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """x (C, H, W) integers in [X_MIN, X_MAX] → int64 (O, H, W); ``channels_last``: (H, W, C) →
        (H, W, O)."""
        shape = (*x.shape[:2], self.o) if channels_last else (self.o, *x.shape[1:])
        out = np.empty(shape, dtype=np.int64)
        width = x.shape[1] if channels_last else x.shape[2]
        step = _step(max(self.o, self.c * self.kh * self.kw) * width)
        for r0, r1, digits, one in _digit_rows(x, self.kh // 2, step, channels_last):
            rows = out[r0:r1] if channels_last else out[:, r0:r1]
            self.combine(self.products(digits, channels_last), rows, one, channels_last)
        return out


def _phase_taps(k: int, r: int) -> list[tuple[int, int]]:
    """(tap, input offset + 1) of output phase r of a stride-2 transposed convolution, padding k//2:
    output 2j + r takes tap kk from input j + (r − kk + k//2)/2 whenever that is whole."""
    return [(kk, (r - kk + k // 2) // 2 + 1) for kk in range(k) if (r - kk + k // 2) % 2 == 0]


def phase_weights(w: np.ndarray) -> list[tuple[int, int, int, int, np.ndarray]]:
    """(ry, rx, dy, dx, weight (O, C, kh, kw)) per output phase of a stride-2 ConvTranspose2d
    weight (C, O, k, k): the phase's own taps, which read the input padded by 1 from row dy and
    column dx on. These are the sub-pixel form's 3×3 kernels (export/bundle.py's SubPixelConv,
    which the float graphs use) less their rows and columns of zeros: 25 taps in all instead of
    36 for k = 5, 9 instead of 36 for k = 3."""
    c, o, k, _ = w.shape
    if not 3 <= k <= 5 or k % 2 == 0:
        raise ValueError(f"phase form needs an odd kernel of 3 or 5 taps, got {k}")
    phases = []
    for ry in (0, 1):
        for rx in (0, 1):
            ty, tx = _phase_taps(k, ry), _phase_taps(k, rx)
            dy, dx = min(d for _, d in ty), min(d for _, d in tx)
            out = np.zeros((o, c, max(d for _, d in ty) - dy + 1, max(d for _, d in tx) - dx + 1), dtype=w.dtype)
            for ky, y in ty:
                for kx, x in tx:
                    out[:, :, y - dy, x - dx] = w[:, :, ky, kx].T
            phases.append((ry, rx, dy, dx, out))
    return phases


class ConvTranspose:
    """Exact ConvTranspose2d, stride 2 (as intscale.conv_transpose2d), one convolution per output
    phase on the same digits: without the sub-pixel form's taps of zeros, the shipped h_s's 5×5
    layer took 90 ms against 108 on a band of a 12 MP image (a one-off timing). Raises ValueError
    where a phase does not fit the 8-bit kernels (``fits``) or the kernel is not 3 or 5 taps."""

    def __init__(self, w: np.ndarray):
        self.c, self.o = w.shape[0], w.shape[1]
        self.phases = [(ry, rx, dy, dx, Conv(pw)) for ry, rx, dy, dx, pw in phase_weights(w)]
        self.matrix = all(conv.matrix for *_, conv in self.phases)

    def __call__(self, x: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """x (C, H, W) → int64 (O, 2H, 2W); ``channels_last``: (H, W, C) → (2H, 2W, O)."""
        o = self.o
        h, wd = x.shape[:2] if channels_last else x.shape[1:]
        out = np.empty((2 * h, 2 * wd, o) if channels_last else (o, 2 * h, 2 * wd), dtype=np.int64)
        for r0, r1, digits, one in _digit_rows(x, 1, _step(max(4 * o, self.c * 9) * wd), channels_last):
            n = r1 - r0
            for ry, rx, dy, dx, conv in self.phases:  # each phase straight into its rows and columns
                if channels_last:  # the matrix products copy their columns out of any view
                    window = digits[:, dy : dy + n + conv.kh - 1, dx : dx + wd + conv.kw - 1]
                    rows = out[2 * r0 + ry : 2 * r1 : 2, rx::2]
                else:
                    window = np.ascontiguousarray(digits[:, :, dy : dy + n + conv.kh - 1, dx : dx + wd + conv.kw - 1])
                    rows = out[:, 2 * r0 + ry : 2 * r1 : 2, rx::2]
                conv.combine(conv.products(window, channels_last), rows, one, channels_last)
        return out


_lock = threading.Lock()
_engines: dict[tuple[int, bool], Conv | ConvTranspose | None] = {}


def engine(w: np.ndarray, transposed: bool = False) -> Conv | ConvTranspose | None:
    """The 8-bit engine of a weight tensor (a transposed convolution's (C, O, k, k), stride 2),
    built once and reused while the array lives; None where it cannot run here."""
    key = (id(w), transposed)
    with _lock:
        if key in _engines:
            return _engines[key]
    try:
        made = ConvTranspose(w) if transposed else Conv(w)
    except ValueError:  # outside 8 bits, too many taps, or a transposed kernel other than 3 or 5
        made = None
    with _lock:
        if key not in _engines:
            _engines[key] = made
            weakref.finalize(w, _engines.pop, key, None)  # the id may be reused once w is gone
        return _engines[key]


def in_range(x: np.ndarray) -> bool:
    """Whether an input can run here (int16 range)."""
    return x.size == 0 or (int(x.min()) >= X_MIN and int(x.max()) <= X_MAX)
