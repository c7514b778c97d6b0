"""The synthesis graph's ``halo`` input: tiles that skip their margins' wasted rings.

    python -m export.halo codec/models/default      # write the bundle's decoder_tiles.onnx

A large image's synthesis runs in tiles with a margin of context on each side
(codec/tiling.py). Every 3×3 convolution of a "same"-padded graph computes its
whole input window, though the outermost ring of its output reads the zeros past
the window's edge and is thrown away with the margin later: a 512-pixel tile's
32-pixel margins make each stage compute (576/512)² = 1.27 times its core.

``halo`` (int64, 4: top, bottom, left, right) says which sides of the window are
margin rather than the image's own edge. Each k×k convolution then pads those sides
by nothing instead of k//2 (a Pad in front of it, which reads ``halo``), so it
computes only the positions whose inputs are all real: the window shrinks stage by
stage by the graph's reach, and what is left equals the same positions of the
whole-image graph. Sides at the image edge (halo 0) are padded as always: with
halo all 0 the graph is the decoder graph.

A quantized convolution's Pad goes before its input's QuantizeLinear, so that
onnxruntime still fuses QuantizeLinear → DequantizeLinear → Conv into QLinearConv
(a zero quantizes to the zero point, which dequantizes to exactly zero).
The pixels each flagged side loses (``shrink``: 30 for four 3×3 stages, 16 + 8 +
4 + 2) are measured by running the graph, and the manifest records them as
``decoder_halo``.

The graph with the input is a file of its own, decoder_tiles.onnx, for tiles only:
its Pads copy each stage's input, which made whole images 5% slower (kodim23, both
models, a one-off timing), and whole images have no margin to skip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "halo"


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _padded_convs(graph: onnx.GraphProto) -> list[int]:
    """The convolutions (indexes) that pad: stride 1, square odd kernels over 1, pads k//2 on every side."""
    convs = []
    for j, node in enumerate(graph.node):
        if node.op_type != "Conv":
            continue
        a = _attributes(node)
        k = a.get("kernel_shape", [1, 1])
        if k[0] == k[1] and k[0] > 1 and k[0] % 2 and a.get("pads") == [k[0] // 2] * 4 \
                and a.get("strides", [1, 1]) == [1, 1] and a.get("dilations", [1, 1]) == [1, 1]:
            convs.append(j)
    return convs


def _pad_site(graph: onnx.GraphProto, conv: int) -> int:
    """The node (its index) whose first input gets the Pad: the conv itself, or, where it reads
    QuantizeLinear → DequantizeLinear used by nothing else, the QuantizeLinear."""
    producers = {o: j for j, n in enumerate(graph.node) for o in n.output}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    dq = producers.get(graph.node[conv].input[0])
    if dq is not None and graph.node[dq].op_type == "DequantizeLinear" and users[graph.node[dq].output[0]] == 1:
        q = producers.get(graph.node[dq].input[0])
        if q is not None and graph.node[q].op_type == "QuantizeLinear" and users[graph.node[q].output[0]] == 1:
            return q
    return conv


def _resize_shapes(g: onnx.GraphProto, before: dict[int, list[onnx.NodeProto]], source: str, padded: str,
                   p: int, j: int) -> int:
    """Shape(source) → Shape(padded) − 2p on the spatial axes, the size of the convolution's output;
    returns the index of the first such Shape (the Pad must come before it), else len(g.node)."""
    first = len(g.node)
    for k, node in enumerate(g.node):
        if node.op_type == "Shape" and node.input[0] == source and not _attributes(node):
            out, raw, less = node.output[0], f"halo/shape{j}_{k}", f"halo/less{j}_{k}"
            node.input[0], node.output[0] = padded, raw
            before.setdefault(k + 1, []).extend([
                helper.make_node("Constant", [], [less],
                                 value=numpy_helper.from_array(np.array([0, 0, 2 * p, 2 * p], np.int64))),
                helper.make_node("Sub", [raw, less], [out])])
            first = min(first, k)
    return first


def with_halo(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a decoder graph with the ``halo`` input (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    if any(i.name == INPUT for i in g.input):
        raise ValueError("the graph already has a halo input")
    convs = _padded_convs(g)
    if not convs:
        raise ValueError("the graph has no padded convolution")
    g.input.append(helper.make_tensor_value_info(INPUT, TensorProto.INT64, [4]))
    # ONNX pads: [n, c, top, left] begins then [n, c, bottom, right] ends; per side 1 − halo
    new = [
        helper.make_node("Constant", [], ["halo/one"], value=numpy_helper.from_array(np.ones(4, np.int64))),
        helper.make_node("Sub", ["halo/one", INPUT], ["halo/open"]),
        helper.make_node("Constant", [], ["halo/zero"], value=numpy_helper.from_array(np.zeros(1, np.int64))),
        helper.make_node("Concat", ["halo/zero", "halo/open"], ["halo/sides"], axis=0),
        helper.make_node("Constant", [], ["halo/order"],
                         value=numpy_helper.from_array(np.array([0, 0, 1, 3, 0, 0, 2, 4], np.int64))),
        helper.make_node("Gather", ["halo/sides", "halo/order"], ["halo/pads1"], axis=0),
    ]
    pads_of: dict[int, str] = {1: "halo/pads1"}
    before: dict[int, list[onnx.NodeProto]] = {}  # node index → the Pads to put in front of it
    for j, c in enumerate(convs):
        conv = g.node[c]
        p = _attributes(conv)["kernel_shape"][0] // 2
        if p not in pads_of:
            const, pads_of[p] = f"halo/k{p}", f"halo/pads{p}"
            new += [helper.make_node("Constant", [], [const], value=numpy_helper.from_array(np.array(p, np.int64))),
                    helper.make_node("Mul", ["halo/pads1", const], [pads_of[p]])]
        site = _pad_site(g, c)
        source, padded = g.node[site].input[0], f"halo/input{j}"
        # export.qat.QuantSubPixel sizes its shuffle by Shape(its input), meaning its output's
        first = _resize_shapes(g, before, source, padded, p, j) if site != c else site
        before.setdefault(min(first, site), []).insert(
            0, helper.make_node("Pad", [source, pads_of[p]], [padded], mode="constant", name=f"halo/pad{j}"))
        g.node[site].input[0] = padded
        for a in conv.attribute:
            if a.name == "pads":
                a.ints[:] = [0, 0, 0, 0]
    nodes = list(new)
    for j, node in enumerate(g.node):
        nodes += before.get(j, [])
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def shrink(model: onnx.ModelProto, channels: int) -> int:
    """Pixels a flagged side of the output loses: the graph run on a 12-latent window, halo on and off."""
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"y_hat": np.zeros((1, channels, 12, 12), np.float32), "inv_gain": np.ones((1, channels, 1, 1), np.float32)}
    full = s.run(None, {**feeds, INPUT: np.zeros(4, np.int64)})[0].shape[2]
    cut = s.run(None, {**feeds, INPUT: np.array([1, 0, 0, 0], np.int64)})[0].shape[2]
    return full - cut


TILE_GRAPH = "decoder_tiles.onnx"


def write_tile_graph(folder: Path, manifest: dict) -> None:
    """decoder_tiles.onnx beside a bundle's decoder.onnx, listed in ``manifest`` (updated, not written)
    under tile_files with the pixels it cuts per side as decoder_halo. Outside the model id: it
    computes the decoder graph's pixels, so files keep their id and older decoders their files."""
    model = with_halo(onnx.load(str(folder / "decoder.onnx")))
    px = shrink(model, int(manifest["config"]["M"]))
    onnx.save(model, str(folder / TILE_GRAPH))
    manifest["tile_files"] = {TILE_GRAPH: hashlib.sha256((folder / TILE_GRAPH).read_bytes()).hexdigest()}
    manifest["decoder_halo"] = px


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a bundle's decoder_tiles.onnx (the decoder graph with the "
                                "halo input) and list it in its manifest; the model id stays.")
    p.add_argument("bundle", type=Path, help="a model bundle folder")
    a = p.parse_args(argv)
    path = a.bundle / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"export.halo: {a.bundle} is not a model bundle")
    manifest = json.loads(path.read_text())
    try:
        write_tile_graph(a.bundle, manifest)
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise SystemExit(f"export.halo: {a.bundle}: {e}") from None
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{a.bundle / TILE_GRAPH}: {manifest['decoder_halo']} pixels less per halo side, model id "
          f"{manifest['model_id']} as before")


if __name__ == "__main__":
    main()
