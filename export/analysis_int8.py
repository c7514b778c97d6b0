"""An int8 analysis graph for the encoder: analysis_int8.onnx, encoder-only, outside the model id.

    python -m export.analysis_int8 runs/w7/bundle --calibration ../shared/data/train

The analysis decides which latents an encoder picks, never how a file decodes, so
a cheaper one costs rate-distortion, not compatibility. It is most of a full-size
encode (g_a's 128→128 5×5 layers at the core's float rate), and onnxruntime runs a
QuantizeLinear → DequantizeLinear → Conv → QuantizeLinear → DequantizeLinear chain as one
QLinearConv on 8-bit integer kernels (the full-size analysis on one thread 1.63× as fast:
``benchmarks/analysis_int8.py``).

Post-training, no fine-tuning: only the convolutions in ``LAYERS`` (by default the
second, at a quarter of the image's resolution: 70% of the full-size analysis'
multiply-adds) run in int8; the rest, GDNs included, stay float. Three things
keep that within about 0.1 dB of the float graph:

- **Equalized channels.** One uint8 grid per tensor is coarse for channels whose
  range is a seventh of the widest. Scaling a convolution's output channels by s
  (weights and bias) is undone exactly by the GDN after it (γ's columns by 1/s²,
  so the GDN's output is s times as large) and the next convolution (its input
  columns by 1/s): the float function is the same, and every channel of the
  quantized layer's input and output spans the same range (the layer before is
  scaled for its input, the layer itself for its output). Cross-layer equalization,
  Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", ICCV 2019.
- **Ranges by search.** Input and output ranges are percentiles of |activation| on
  training crops, chosen from ``PERCENTILES`` to minimize the squared error of y
  against the float graph on those crops (clipping rare peaks buys a finer grid).
- **7-bit weights**, per output channel, symmetric: onnxruntime's x86 kernels
  without VNNI multiply uint8 by int8 with VPMADDUBSW, whose int16 pair sums
  saturate for 8-bit weights and never for 7-bit ones (export/qat.py), so the
  latents do not depend on the CPU's instruction set.

The graph's inputs and output are analysis.onnx's. Its manifest entry is under
``encoder_files``, so adding it keeps the model id and every file decoding; an
encoder uses it when the bundle lists it (codec/session.py ``Bundle.analysis_graph``).

**For photographs only: no bundle the repo builds carries it.** On Kodak it costs
+0.45% BD-rate, but synthetic images break it (``python benchmarks/analysis_int8.py``'s
second table, full-size student): a colour gradient loses 6.8 dB at quality 50 and 13 dB
at 100, colour bars 6.2–6.6 dB, black text on white 0.5 dB, flat black 2.8 dB at 100.
Saturated flat colours push the layer's input and output past the ranges that photos set
(clipped), and flat areas round the same way at every pixel, a bias rather than noise.
Wider ranges (a one-off script, not kept) still lost dB on the gradient and on black while
making y's error on photos several times larger. Each image's own input range with the
output kept in float holds on all of them, but onnxruntime runs that only as ConvInteger,
at about float speed, and its fast QLinearConv must requantize the output to 8 bits, which
is what breaks (``python benchmarks/analysis_int8_variants.py``; README, onic 0.13.0).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FILE = "analysis_int8.onnx"
LAYERS = (1,)  # which of g_a's strided convolutions (0 = the first) run in int8
WEIGHT_BITS = 7
PERCENTILES = (99.9, 99.99, 99.999, 100.0)
CROP = 256


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


class Analysis:
    """analysis.onnx as its strided convolutions and the GDNs between them, with its weights as arrays."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.weights = {i.name: numpy_helper.to_array(i).copy() for i in g.initializer}
        producers = _producers(g)
        # The main convolutions: those whose input is the image or a GDN's output (a Div).
        self.convs = [n for n in g.node if n.op_type == "Conv" and
                      (n.input[0] == g.input[0].name or producers.get(n.input[0], n).op_type == "Div")]
        self.gdns = []  # (gamma's Conv, Div) after each main convolution but the last
        try:
            for conv in self.convs[:-1]:
                t = conv.output[0]
                div = next(n for n in _consumers(g, t) if n.op_type == "Div" and n.input[0] == t)
                square = next(n for n in _consumers(g, t) if n.op_type == "Mul" and list(n.input) == [t, t])
                gamma = next(n for n in _consumers(g, square.output[0]) if n.op_type == "Conv")
                self.gdns.append((gamma, div))
        except StopIteration:
            raise ValueError("analysis.onnx is not a chain of convolutions and GDNs (x / sqrt(beta + gamma x^2))") \
                from None
        if len(self.convs) < 2:
            raise ValueError("analysis.onnx has fewer than two convolutions")

    def scale_outputs(self, k: int, s: np.ndarray) -> None:
        """Multiply convolution k's output channels by s; the GDN after it and convolution k + 1
        undo it, so the graph's function stays the same (up to float rounding)."""
        conv, (gamma, _), nxt = self.convs[k], self.gdns[k], self.convs[k + 1]
        w, b = conv.input[1], conv.input[2]
        self.weights[w] = self.weights[w] * s[:, None, None, None]
        self.weights[b] = self.weights[b] * s
        self.weights[gamma.input[1]] = self.weights[gamma.input[1]] / (s[None, :, None, None] ** 2)
        self.weights[nxt.input[1]] = self.weights[nxt.input[1]] / s[None, :, None, None]

    def float_model(self, extra_outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        _set_weights(m.graph, self.weights)
        for name in extra_outputs:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        return m


def _set_weights(graph: onnx.GraphProto, weights: dict[str, np.ndarray]) -> None:
    for init in graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32), init.name))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, crops: list[np.ndarray], names: list[str], channels: int) -> list[list[np.ndarray]]:
    s = _session(model)
    gain = np.ones((1, channels, 1, 1), np.float32)
    return [s.run(names, {"x": x, "gain": gain}) for x in crops]


def _channel_peaks(a: Analysis, tensor: str, crops: list[np.ndarray], channels: int) -> np.ndarray:
    """Each channel's largest |value| over the crops (its 99.99th percentile, so one pixel does not set it)."""
    outs = _run(a.float_model((tensor,)), crops, [tensor], channels)
    return np.max([np.percentile(np.abs(o[0][0]).reshape(o[0].shape[1], -1), 99.99, axis=1) for o in outs], axis=0)


def _unit_mean(s: np.ndarray) -> np.ndarray:
    return s / np.exp(np.mean(np.log(s)))  # geometric mean 1: the weights keep their overall size


def equalize(a: Analysis, crops: list[np.ndarray], layers: tuple[int, ...], channels: int) -> None:
    """Scale the channels around each int8 layer so that each spans the same range (docstring)."""
    for k in layers:
        if k > 0:  # its input: the GDN output after convolution k - 1
            a.scale_outputs(k - 1, _unit_mean(1 / _channel_peaks(a, a.gdns[k - 1][1].output[0], crops, channels)))
        if k < len(a.convs) - 1:
            a.scale_outputs(k, _unit_mean(1 / _channel_peaks(a, a.convs[k].output[0], crops, channels)))


def _quantize_weights(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    top = 2 ** (bits - 1) - 1
    scale = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), 1e-12) / top
    return np.clip(np.round(w / scale[:, None, None, None]), -top, top).astype(np.int8), scale.astype(np.float32)


def _qdq(graph: onnx.GraphProto, tensor: str, scale: float, tag: str) -> str:
    """QuantizeLinear → DequantizeLinear of ``tensor`` (uint8, zero point 128); returns the new tensor's name."""
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_scale"),
                              numpy_helper.from_array(np.array(128, np.uint8), f"{tag}_zero")])
    graph.node.extend([
        helper.make_node("QuantizeLinear", [tensor, f"{tag}_scale", f"{tag}_zero"], [f"{tag}_q"]),
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zero"], [f"{tag}_dq"]),
    ])
    return f"{tag}_dq"


def quantized_model(a: Analysis, ranges: dict[int, tuple[float, float]]) -> onnx.ModelProto:
    """The analysis with each layer k of ``ranges`` (input, output |range|) as a QDQ convolution."""
    m = a.float_model()
    g = m.graph
    nodes = list(g.node)
    del g.node[:]
    for node in nodes:
        k = next((i for i, c in enumerate(a.convs) if c.name == node.name), None)
        if k not in ranges:
            g.node.append(node)
            continue
        r_in, r_out = ranges[k]
        tag = f"int8_{k}"
        x = _qdq(g, node.input[0], r_in / 127, f"{tag}_in")
        wq, ws = _quantize_weights(a.weights[node.input[1]], WEIGHT_BITS)
        bq = np.round(a.weights[node.input[2]] / (ws * (r_in / 127))).astype(np.int32)
        g.initializer.extend([
            numpy_helper.from_array(wq, f"{tag}_w"), numpy_helper.from_array(ws, f"{tag}_w_scale"),
            numpy_helper.from_array(np.zeros(len(ws), np.int8), f"{tag}_w_zero"),
            numpy_helper.from_array(bq, f"{tag}_b"),
            numpy_helper.from_array(ws * np.float32(r_in / 127), f"{tag}_b_scale"),
            numpy_helper.from_array(np.zeros(len(ws), np.int32), f"{tag}_b_zero"),
        ])
        g.node.extend([helper.make_node("DequantizeLinear", [f"{tag}_{t}", f"{tag}_{t}_scale", f"{tag}_{t}_zero"],
                                        [f"{tag}_{t}dq"], axis=0) for t in ("w", "b")])
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        conv.input[:] = [x, f"{tag}_wdq", f"{tag}_bdq"]
        conv.output[0] = f"{tag}_float"
        g.node.append(conv)
        out = _qdq(g, conv.output[0], r_out / 127, f"{tag}_out")
        g.node.append(helper.make_node("Identity", [out], [node.output[0]]))
    return checked(m)


def checked(m: onnx.ModelProto) -> onnx.ModelProto:
    """``m`` without the initializers no node reads any more (the replaced layers' float weights),
    checked by onnx."""
    g = m.graph
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    return m


def _y_error(model: onnx.ModelProto, crops: list[np.ndarray], reference: list[np.ndarray], channels: int) -> float:
    ys = _run(model, crops, ["y"], channels)
    return float(np.mean([np.mean((y[0] - r) ** 2) for y, r in zip(ys, reference, strict=True)]))


def calibrate(a: Analysis, crops: list[np.ndarray], layers: tuple[int, ...],
              channels: int) -> tuple[dict[int, tuple[float, float]], list[np.ndarray]]:
    """Per layer, the (input, output) percentile pair of ``PERCENTILES`` whose QDQ graph is closest to
    the float graph's y on ``crops``, layer by layer (earlier layers already quantized); and that
    float y, one array per crop."""
    tensors = {k: (a.convs[k].input[0], a.convs[k].output[0]) for k in layers}
    names = [t for k in layers for t in tensors[k]]
    outs = _run(a.float_model(tuple(names)), crops, ["y", *names], channels)
    reference = [o[0] for o in outs]
    flat = {n: np.concatenate([np.abs(o[1 + i]).ravel() for o in outs]) for i, n in enumerate(names)}
    ranges: dict[int, tuple[float, float]] = {}
    for k in layers:
        r_in, r_out = (np.percentile(flat[t], PERCENTILES) for t in tensors[k])
        ranges[k] = min(itertools.product(r_in, r_out),
                        key=lambda r: _y_error(quantized_model(a, {**ranges, k: r}), crops, reference, channels))
    return {k: (float(i), float(o)) for k, (i, o) in ranges.items()}, reference


def crops_of(images: list[np.ndarray], size: int = CROP) -> list[np.ndarray]:
    """Each image's central size² crop (smaller images whole, cut to a multiple of 64) as analysis input."""
    out = []
    for im in images:
        h, w = (min(size, s) // 64 * 64 for s in im.shape[:2])
        if h == 0 or w == 0:
            continue
        t, left = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        out.append(np.ascontiguousarray(im[t : t + h, left : left + w].transpose(2, 0, 1)[None], np.float32) / 255)
    return out


def write(bundle: Path, images: list[np.ndarray], layers: tuple[int, ...] = LAYERS) -> dict:
    """Add analysis_int8.onnx to a bundle's encoder_files; returns the chosen ranges and y's error."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    channels = int(manifest["config"]["M"])
    crops = crops_of(images)
    if not crops:
        raise ValueError("no calibration image is 64 pixels on each side")
    a = Analysis(onnx.load(bundle / "analysis.onnx"))
    if any(not 0 <= k < len(a.convs) for k in layers):
        raise ValueError(f"layers must be in 0..{len(a.convs) - 1}")
    equalize(a, crops, layers, channels)
    ranges, reference = calibrate(a, crops, layers, channels)  # reference: the (equalized) float graph's y
    model = quantized_model(a, ranges)
    install(bundle, model)
    rms = _y_error(model, crops, reference, channels) ** 0.5
    return {"ranges": ranges, "y_rms_error": rms, "y_rms": float(np.sqrt(np.mean([np.mean(r**2) for r in reference])))}


def install(bundle: Path, model: onnx.ModelProto) -> None:
    """Write ``model`` as the bundle's analysis_int8.onnx and list it under the manifest's
    encoder_files; each file whole or not at all (written beside, then renamed over)."""
    onnx.save(model, bundle / f"{FILE}.tmp")
    (bundle / f"{FILE}.tmp").replace(bundle / FILE)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("encoder_files", {})[FILE] = hashlib.sha256((bundle / FILE).read_bytes()).hexdigest()
    (bundle / "manifest.json.tmp").write_text(json.dumps(manifest, indent=2) + "\n")
    (bundle / "manifest.json.tmp").replace(bundle / "manifest.json")


def main(argv: list[str] | None = None) -> None:
    from export.bundle import calibration_images  # torch: only the command line needs it

    p = argparse.ArgumentParser(description="Add an int8 analysis graph (encoder-only) to a model bundle.")
    p.add_argument("bundle")
    p.add_argument("--calibration", default="../shared/data/train",
                   help="folder of training images for the ranges (never Kodak)")
    p.add_argument("--calibration_images", type=int, default=32)
    p.add_argument("--layers", default=",".join(map(str, LAYERS)),
                   help="comma-separated strided convolutions of g_a to run in int8 (0 = the first)")
    a = p.parse_args(argv)
    try:
        layers = tuple(int(k) for k in a.layers.split(","))
    except ValueError:
        p.error(f"--layers: comma-separated whole numbers, not {a.layers!r}")
    if not (Path(a.bundle) / "manifest.json").is_file():
        p.error(f"{a.bundle} is not a model bundle (no manifest.json)")
    try:
        r = write(Path(a.bundle), calibration_images(a.calibration, a.calibration_images), layers)
    except ValueError as e:
        raise SystemExit(f"export.analysis_int8: {e}") from None
    print(f"wrote {Path(a.bundle) / FILE}: y off by {r['y_rms_error']:.4f} RMS at gain 1 (y's RMS {r['y_rms']:.3f}); "
          f"ranges {r['ranges']}")
    print("note: encodes with this bundle now run it; it suits photographs only (flat synthetic images lose "
          "up to 13 dB: python benchmarks/analysis_int8.py)")


if __name__ == "__main__":
    main()
