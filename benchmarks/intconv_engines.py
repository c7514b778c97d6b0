"""The integer path's two 8-bit engines (codec/intconv.py) on the same layers: a table.

    python benchmarks/intconv_engines.py [--rows 80] [--width 268] [--repeat 3]

Each layer of a full-size h_s (N=128, M=192) on a band of int16 activations, one thread,
with random weights within ±63, which run as uint8 × int8 matrix products, and the same
weights with one of them set to 64, which run as ConvInteger: the same work and sizes
(tests/test_exact.py checks both engines' integers). Median of --repeat calls, in ms, and
the multiply-adds a second that makes, ConvInteger / matrix (two digits' worth). The last
column: the matrix products on the same activations channels last, (H, W, C) in and out, as
codec/intscale.py runs them when both layers have 7-bit weights: no transposes of the digits
or of the products.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from codec import intconv

# (name, weight shape, transposed): h_s's last layer (σ half) and its second, stride-2 5×5 one
LAYERS = [("h_s σ conv 288→192, 3×3", (192, 288, 3, 3), False),
          ("h_s conv-T 192→288, 5×5", (192, 288, 5, 5), True)]


def _median_ms(engine, x: np.ndarray, repeat: int, channels_last: bool = False) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        engine(x, channels_last)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=80, help="rows of the layer's input (a 12 MP band: 80 for y)")
    p.add_argument("--width", type=int, default=268, help="columns of the layer's input (12 MP: 268 for y)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'layer':<26} {'input':>14} {'ConvInteger ms':>15} {'matrix ms':>10} {'speed-up':>9} {'G MAC/s':>13}"
          f" {'channels last ms':>17}")
    for name, shape, transposed in LAYERS:
        w7 = rng.integers(-intconv.S8_MAX, intconv.S8_MAX + 1, shape)
        w8 = w7.copy()
        w8.flat[0] = intconv.S8_MAX + 1
        cin = shape[0] if transposed else shape[1]
        rows, width = (a.rows // 2, a.width // 2) if transposed else (a.rows, a.width)
        x = rng.integers(-3000, 3000, (cin, rows, width))
        make = intconv.ConvTranspose if transposed else intconv.Conv
        matrix, conv = make(w7), make(w8)
        ms_conv, ms_matrix = _median_ms(conv, x, a.repeat), _median_ms(matrix, x, a.repeat)
        ms_last = _median_ms(matrix, np.ascontiguousarray(x.transpose(1, 2, 0)), a.repeat, True)
        taps = 25 if transposed else shape[2] * shape[3]  # a transposed layer's four phases: 25 taps in all
        macs = 2 * shape[0] * shape[1] * taps * rows * width  # two digits of int16 input
        print(f"{name:<26} {f'{cin}×{rows}×{width}':>14} {ms_conv:15.0f} {ms_matrix:10.0f} "
              f"{ms_conv / ms_matrix:8.2f}× {macs / ms_conv / 1e6:6.0f} / {macs / ms_matrix / 1e6:<5.0f}"
              f" {ms_last:11.0f} ({ms_matrix / ms_last:.2f}×)")


if __name__ == "__main__":
    main()
