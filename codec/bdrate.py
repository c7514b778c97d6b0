"""Bjøntegaard delta rate (VCEG-M33, 2001) with piecewise cubic Hermite interpolation.

log(rate) is interpolated as a function of quality (PSNR, or MS-SSIM in dB) with
PCHIP for each curve, both are integrated over the overlapping quality range,
and the mean difference gives the rate change at equal quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bd_rate(rate_ref: Sequence[float], quality_ref: Sequence[float],
            rate_test: Sequence[float], quality_test: Sequence[float]) -> float:
    """Percent rate change of test against ref at equal quality (negative = test is smaller).

    NaN when the curves do not overlap in quality or have fewer than two points.
    """
    from scipy.interpolate import PchipInterpolator

    curves = []
    for rate, quality in ((rate_ref, quality_ref), (rate_test, quality_test)):
        r, q = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
        keep = np.isfinite(r) & np.isfinite(q) & (r > 0)
        r, q = r[keep], q[keep]
        q, idx = np.unique(q, return_index=True)  # PCHIP needs strictly increasing x
        if len(q) < 2:
            return math.nan
        curves.append((q, np.log(r[idx])))
    lo = max(curves[0][0].min(), curves[1][0].min())
    hi = min(curves[0][0].max(), curves[1][0].max())
    if not lo < hi:
        return math.nan
    integrals = [PchipInterpolator(q, lr).integrate(lo, hi) for q, lr in curves]
    return float((math.exp((integrals[1] - integrals[0]) / (hi - lo)) - 1) * 100)
