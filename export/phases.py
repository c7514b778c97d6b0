"""Sub-pixel convolutions' phases cropped to their own taps: a third fewer multiply-adds.

A stride-2 5×5 transposed convolution exports as one 3×3 convolution per output
phase and an interleave of the four (export.bundle.PhaseSubPixel and SubPixelGDN;
Shi et al., "Is the deconvolution layer the same as a convolutional layer?",
arXiv:1609.07009, 2016). Each phase only meets the kernel taps of its parity: 3×3,
3×2, 2×3 and 2×2 of them, so three phases out of four have rows or columns of
zeros in their 3×3 kernels, 36 taps computed where 25 count. onnxruntime's float
convolutions run near the core's multiply-add rate (about 57 G/s on one core of the
2-core machine, for each of the full-size synthesis' three large layers), so the
zeros cost their full share.

``crop_phases`` crops each convolution of a graph whose kernel has rows or columns of
zeros at its edges to the rest and makes its padding asymmetric to match: the same
sums less their zero terms. export.bundle crops the decoder and hyper decoder graphs
so. A convolution trained in the sub-pixel form (export/qat.py's) has no zero taps
left and stays as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.halo import _attributes


def _span(w: np.ndarray, axis: int) -> tuple[int, int] | None:
    """First and last index along ``axis`` (2 rows, 3 columns) where w has a nonzero tap; None if all zero."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    used = np.flatnonzero(np.any(w != 0, axis=other))
    return (int(used[0]), int(used[-1])) if used.size else None


def cropped(w: np.ndarray, pads: list[int]) -> tuple[np.ndarray, list[int]] | None:
    """(weight less its edge rows and columns of zeros, ONNX pads [top, left, bottom, right]) that
    compute the same outputs as a stride-1 convolution with weight w (O, C, kh, kw) and ``pads``,
    which must keep the input's size; None where there is nothing to crop or w is all zeros."""
    _, _, kh, kw = w.shape
    top, left, bottom, right = pads
    rows, cols = _span(w, 2), _span(w, 3)
    if kh - 1 != top + bottom or kw - 1 != left + right or rows is None or cols is None:
        return None
    (r0, r1), (c0, c1) = rows, cols
    if (r1 - r0 + 1, c1 - c0 + 1) == (kh, kw):
        return None
    # tap j reads input row i − top + j: a kernel of taps r0..r1 reads from row i − (top − r0)
    p = [top - r0, left - c0, r1 - top, c1 - left]
    if min(p) < 0:
        return None
    return np.ascontiguousarray(w[:, :, r0 : r1 + 1, c0 : c1 + 1]), p


def crop_phases(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with its convolutions cropped (module docstring), and how many were.
    Convolutions whose weight is not a float initializer of their own (a quantized one's comes
    from DequantizeLinear), or that are strided, dilated or grouped, are left alone."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    init = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    count = 0
    for node in g.node:
        if node.op_type != "Conv" or len(node.input) < 2 or uses[node.input[1]] != 1:
            continue
        w, a = init.get(node.input[1]), _attributes(node)
        if w is None or w.data_type != onnx.TensorProto.FLOAT or "auto_pad" in a or a.get("group", 1) != 1 \
                or a.get("strides", [1, 1]) != [1, 1] or a.get("dilations", [1, 1]) != [1, 1]:
            continue
        crop = cropped(numpy_helper.to_array(w), list(a.get("pads", [0, 0, 0, 0])))
        if crop is None:
            continue
        kernel, pads = crop
        w.CopyFrom(numpy_helper.from_array(kernel, w.name))
        for attr in node.attribute:
            if attr.name == "pads":
                attr.ints[:] = pads
            elif attr.name == "kernel_shape":
                attr.ints[:] = list(kernel.shape[2:])
        if "pads" not in a:
            node.attribute.append(helper.make_attribute("pads", pads))
        count += 1
    onnx.checker.check_model(model, full_check=True)
    return model, count


def crop_file(path: str | Path) -> int:
    """Rewrite an ONNX file with ``crop_phases``; returns how many convolutions it cropped."""
    model, count = crop_phases(onnx.load(str(path)))
    if count:
        onnx.save(model, str(path))
    return count
