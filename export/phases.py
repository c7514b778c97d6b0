"""Sub-pixel convolutions split by output phase: the same function with a third fewer multiply-adds.

A stride-2 5×5 transposed convolution exports as a 3×3 convolution to 4× the
channels and a pixel shuffle (export.bundle.SubPixelConv; Shi et al.,
arXiv:1609.07009, 2016). Each of the four output phases only meets the kernel
taps of its parity, 3, 3×2, 2×3 and 2×2 of them, so a quarter of the 3×3
kernel's rows or columns are zeros for three phases out of four: 36 taps
computed where 25 count. onnxruntime's float convolutions run at the CPU's
multiply-add rate (about 57 G/s on one core of the 2-core machine, each of the
full-size synthesis' three large layers alike), so the zeros cost their share.

``split_phases`` rewrites each such convolution whose output channels are in
phase-major order (channel phase·C + c, as export.bundle.SubPixelGDN and
PhaseMajorSubPixel order them) into one convolution per phase with its kernel
cropped to its own taps and its padding made asymmetric to match, followed by a
Concat that puts the phases back in the same channel order. The values are the
same sums less their zero terms, so they agree to float rounding. export.bundle
splits the decoder and hyper decoder graphs so. A convolution trained in the
sub-pixel form (export/qat.py's) has no zero taps left and stays whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

PHASES = 4


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _span(w: np.ndarray, axis: int) -> tuple[int, int] | None:
    """First and last index along ``axis`` (2 rows, 3 columns) where w has a nonzero tap; None if all zero."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    used = np.flatnonzero(np.any(w != 0, axis=other))
    return (int(used[0]), int(used[-1])) if used.size else None


def phase_kernels(w: np.ndarray, pads: list[int]) -> list[tuple[np.ndarray, list[int]]] | None:
    """Per phase quarter of a convolution's output channels: (cropped weight, ONNX pads [top, left,
    bottom, right]) computing the same outputs; None where cropping saves no tap or a quarter is all
    zeros. ``pads`` are the convolution's own, which must leave its output the input's size."""
    o, _, kh, kw = w.shape
    top, left, bottom, right = pads
    if o % PHASES or kh - 1 != top + bottom or kw - 1 != left + right:
        return None
    out, taps = [], 0
    for q in np.split(w, PHASES, axis=0):
        rows, cols = _span(q, 2), _span(q, 3)
        if rows is None or cols is None:
            return None
        (r0, r1), (c0, c1) = rows, cols
        # tap j reads input row i − top + j: a kernel of taps r0..r1 reads from i − (top − r0)
        p = [top - r0, left - c0, r1 - top, c1 - left]
        if min(p) < 0:
            return None
        out.append((np.ascontiguousarray(q[:, :, r0 : r1 + 1, c0 : c1 + 1]), p))
        taps += (r1 - r0 + 1) * (c1 - c0 + 1)
    return out if taps < PHASES * kh * kw else None


def split_phases(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with its phase-major sub-pixel convolutions split (module docstring), and
    how many it split. Convolutions whose weight or bias is not a float initializer (a quantized
    one's comes from DequantizeLinear), or that are strided, dilated or grouped, are left alone."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    init = {t.name: t for t in g.initializer}
    nodes, split = [], 0
    for node in g.node:
        a = _attributes(node)
        w = init.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        b = init.get(node.input[2]) if w is not None and len(node.input) > 2 else None
        plain = a.get("strides", [1, 1]) == [1, 1] and a.get("dilations", [1, 1]) == [1, 1] \
            and a.get("group", 1) == 1 and "auto_pad" not in a
        parts = None
        if w is not None and plain and w.data_type == onnx.TensorProto.FLOAT:
            parts = phase_kernels(numpy_helper.to_array(w), list(a.get("pads", [0, 0, 0, 0])))
        if parts is None:
            nodes.append(node)
            continue
        bias = np.split(numpy_helper.to_array(b), PHASES) if b is not None else [None] * PHASES
        outs = []
        for k, ((kernel, pads), bk) in enumerate(zip(parts, bias, strict=True)):
            stem = f"{node.name or node.output[0]}/phase{k}"
            inputs = [node.input[0], f"{stem}/weight"]
            g.initializer.append(numpy_helper.from_array(kernel, inputs[1]))
            if bk is not None:
                inputs.append(f"{stem}/bias")
                g.initializer.append(numpy_helper.from_array(bk, inputs[2]))
            outs.append(f"{stem}/out")
            nodes.append(helper.make_node("Conv", inputs, [outs[-1]], name=stem, kernel_shape=list(kernel.shape[2:]),
                                          pads=pads, strides=[1, 1], dilations=[1, 1], group=1))
        nodes.append(helper.make_node("Concat", outs, [node.output[0]], name=f"{node.name}/phases", axis=1))
        split += 1
    used = {i for n in nodes for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    return model, split


def split_file(path: str | Path) -> int:
    """Rewrite an ONNX file with ``split_phases``; returns how many convolutions it split."""
    model, split = split_phases(onnx.load(str(path)))
    if split:
        onnx.save(model, str(path))
    return split
