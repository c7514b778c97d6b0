"""Why no int8 analysis ships (issue 14): three ways to run g_a's second convolution in 8 bits,
their time on one thread and what they cost on photographs and on synthetic images.

    python benchmarks/analysis_int8_variants.py ../shared/data/kodak --model runs/w7/bundle

Each variant is written into a temporary copy of the bundle as analysis_int8.onnx (the
bundle itself is not touched), on the same equalized weights (export/analysis_int8.py):

- **static**: export/analysis_int8.py's graph, QLinearConv with input and output ranges
  calibrated on training crops: fast, but synthetic images lose several dB;
- **dynamic, float out**: each image's own input range (DynamicQuantizeLinear) and the
  int32 sums rescaled to float (ConvInteger, uint8 × uint8): no range to clip, so it holds
  on synthetic images, but onnxruntime's ConvInteger runs at about the float graph's speed;
- **dynamic, 8-bit out**: each image's own input range into QLinearConv, whose output
  must be requantized to 8 bits on the calibrated range, where synthetic images clip.

So the fast 8-bit convolution of onnxruntime's CPU kernels is the one that must requantize
its output, and the output's 8 bits are what fail. The graphs are timed on the folder's
first image, one thread, alternated, median of ``--repeat``; then every image (synthetic
ones, ``benchmarks/analysis_int8.py``'s, and the folder's first ``--images``) is encoded
by each analysis at qualities 50 and 100 and decoded by the same decoder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from analysis_int8 import curve, synthetic_images
from onnx import TensorProto, helper, numpy_helper

from codec import bench, tiling
from codec.session import INT8_ANALYSIS, Bundle
from export import analysis_int8 as ai
from export.bundle import calibration_images

LAYER = 1  # the 128→128 convolution at a quarter of the image's resolution, as the export's default


def _dynamic(a: ai.Analysis, r_out: float | None) -> onnx.ModelProto:
    """Convolution LAYER on each image's own input range; float output (ConvInteger) where ``r_out``
    is None, else QLinearConv requantizing the output to ±r_out. The bias is added in float after."""
    m = a.float_model()
    g = m.graph
    node = a.convs[LAYER]
    wq, ws = ai._quantize_weights(a.weights[node.input[1]], ai.WEIGHT_BITS)
    attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
    t = "dyn"
    inits = {f"{t}_b": a.weights[node.input[2]].reshape(1, -1, 1, 1).astype(np.float32)}
    nodes = [helper.make_node("DynamicQuantizeLinear", [node.input[0]], [f"{t}_x", f"{t}_xs", f"{t}_xz"])]
    if r_out is None:  # uint8 weights around zero point 128: onnxruntime's uint8 × int8 ConvInteger is far slower
        inits |= {f"{t}_w": (wq.astype(np.int16) + 128).astype(np.uint8), f"{t}_wz": np.array(128, np.uint8),
                  f"{t}_ws": ws.reshape(1, -1, 1, 1)}
        nodes += [helper.make_node("ConvInteger", [f"{t}_x", f"{t}_w", f"{t}_xz", f"{t}_wz"], [f"{t}_acc"], **attrs),
                  helper.make_node("Cast", [f"{t}_acc"], [f"{t}_accf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{t}_ws", f"{t}_xs"], [f"{t}_s"]),
                  helper.make_node("Mul", [f"{t}_accf", f"{t}_s"], [f"{t}_y"])]
    else:
        inits |= {f"{t}_w": wq, f"{t}_wz": np.zeros(len(ws), np.int8), f"{t}_ws": ws,
                  f"{t}_ys": np.array(r_out / 127, np.float32), f"{t}_yz": np.array(128, np.uint8)}
        nodes += [helper.make_node("QLinearConv", [f"{t}_x", f"{t}_xs", f"{t}_xz", f"{t}_w", f"{t}_ws", f"{t}_wz",
                                                   f"{t}_ys", f"{t}_yz"], [f"{t}_q"], **attrs),
                  helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_ys", f"{t}_yz"], [f"{t}_y"])]
    nodes.append(helper.make_node("Add", [f"{t}_y", f"{t}_b"], [node.output[0]]))
    at = next(i for i, n in enumerate(g.node) if n.name == node.name)
    rest = list(g.node)
    del g.node[:]
    g.node.extend(rest[:at] + nodes + rest[at + 1 :])
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
    return ai.checked(m)


def _with_graph(bundle: Path, folder: Path, model: onnx.ModelProto | None, images: list[np.ndarray]) -> Bundle:
    """A copy of ``bundle`` in ``folder`` with ``model`` as its int8 analysis (None: the export's own)."""
    shutil.copytree(bundle, folder)
    if model is None:
        ai.write(folder, images, (LAYER,))
        return Bundle(folder)
    ai.install(folder, model)
    return Bundle(folder)


def graph_ms(bundles: dict[str, Bundle], image, repeat: int) -> dict[str, float]:
    """Median ms of each bundle's analysis graph on ``image`` (one thread), alternated."""
    rgb = np.asarray(image.convert("RGB"))
    first = next(iter(bundles.values()))
    s = first.stride
    x = tiling._window(rgb, 0, -(-rgb.shape[0] // s) * s, 0, -(-rgb.shape[1] // s) * s)
    gain, _ = first.gains(75)
    times: dict[str, list[float]] = {name: [] for name in bundles}
    for b in bundles.values():
        b.run(b.analysis_graph, single_thread=True, x=x, gain=gain)  # warm-up
    for _ in range(repeat):
        for name, b in bundles.items():
            t = time.perf_counter()
            b.run(b.analysis_graph, single_thread=True, x=x, gain=gain)
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="photographs to time and code (Kodak)")
    p.add_argument("--model", required=True, help="a bundle folder (its float analysis is the reference)")
    p.add_argument("--calibration", default="../shared/data/train", help="training images for the ranges")
    p.add_argument("--calibration_images", type=int, default=32)
    p.add_argument("--images", type=int, default=2, help="how many of the folder's images to code")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    bundle = Path(a.model)
    channels = int(json.loads((bundle / "manifest.json").read_text())["config"]["M"])
    images = calibration_images(a.calibration, a.calibration_images)
    crops = ai.crops_of(images)
    equalized = ai.Analysis(onnx.load(bundle / "analysis.onnx"))
    ai.equalize(equalized, crops, (LAYER,), channels)
    ranges, _ = ai.calibrate(equalized, crops, (LAYER,), channels)
    r_out = ranges[LAYER][1]  # the static graph's output range
    photos = bench.load_images(a.folder)
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "static": _with_graph(bundle, Path(tmp) / "static", None, images),
            "dynamic, float out": _with_graph(bundle, Path(tmp) / "float", _dynamic(equalized, None), images),
            "dynamic, 8-bit out": _with_graph(bundle, Path(tmp) / "8bit", _dynamic(equalized, r_out), images),
        }
        assert all(b.analysis_graph == INT8_ANALYSIS for b in variants.values())
        exact = Bundle(bundle, float_analysis=True)
        ms = graph_ms({"float": exact, **variants}, photos[0][1], a.repeat)
        print(f"{a.model} (model {exact.model_id}); {bench.machine()}")
        print(f"analysis on {photos[0][0]}, one thread: " + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items()))
        print("\n| image | quality | float bpp | float dB | " + " | ".join(f"{k}: Δ dB, Δ rate" for k in variants)
              + " |")
        print("|---|---|---|---|" + "---|" * len(variants))
        for name, im in synthetic_images() + photos[: a.images]:
            for q in (50, 100):
                (x0,), (y0,) = curve(exact, [(name, im)], [q])
                cells = []
                for b in variants.values():
                    (x1,), (y1,) = curve(b, [(name, im)], [q])
                    cells.append(f"{y1 - y0:+.2f}, {100 * (x1 / x0 - 1):+.1f}%")
                print(f"| {name} | {q} | {x0:.3f} | {y0:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
