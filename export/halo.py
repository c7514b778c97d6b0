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
halo all 0 the graph is the decoder graph. The four phase convolutions of a
sub-pixel layer (export/phases.py) read one tensor with asymmetric pads: they share
one Pad, as wide on each side as the widest of them, and those that pad a side less
lose the difference again with a Slice of their output, so that all compute the
same positions.

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


def _same_convs(graph: onnx.GraphProto) -> list[int]:
    """The convolutions (indexes) that keep their input's size: stride 1, undilated, pads [top, left,
    bottom, right] that add up to the kernel less one on each axis (square "same" kernels, 1×1
    ones, and the cropped phases of export/phases.py)."""
    convs = []
    for j, node in enumerate(graph.node):
        if node.op_type != "Conv":
            continue
        a = _attributes(node)
        (kh, kw), p = a.get("kernel_shape", [1, 1]), a.get("pads", [0, 0, 0, 0])
        if kh - 1 == p[0] + p[2] and kw - 1 == p[1] + p[3] and "auto_pad" not in a \
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
                   reach: list[int], j: int) -> int:
    """Shape(source) → Shape(padded) less the reach on the spatial axes, the size of the convolution's
    output; returns the index of the first such Shape (the Pad must come before it), else len(g.node)."""
    first = len(g.node)
    for k, node in enumerate(g.node):
        if node.op_type == "Shape" and node.input[0] == source and not _attributes(node):
            out, raw, less = node.output[0], f"halo/shape{j}_{k}", f"halo/less{j}_{k}"
            node.input[0], node.output[0] = padded, raw
            cut = np.array([0, 0, reach[0] + reach[2], reach[1] + reach[3]], np.int64)
            before.setdefault(k + 1, []).extend([
                helper.make_node("Constant", [], [less], value=numpy_helper.from_array(cut)),
                helper.make_node("Sub", [raw, less], [out])])
            first = min(first, k)
    return first


def _padded_groups(g: onnx.GraphProto) -> list[tuple[str, list[tuple[int, int]]]]:
    """The same-size convolutions by the tensor their Pad goes on, where any of them pads: (source,
    [(conv, pad site)]). The phase convolutions of a sub-pixel layer read one tensor and share one
    Pad, those that pad nothing (a 3×3 transposed kernel's 1×1 phase) included; a quantized
    convolution has its own."""
    groups: dict[str, list[tuple[int, int]]] = {}
    pads = {c: _attributes(g.node[c]).get("pads", [0, 0, 0, 0]) for c in _same_convs(g)}
    for c in pads:
        site = _pad_site(g, c)
        groups.setdefault(g.node[site].input[0], []).append((c, site))
    padded = [(s, m) for s, m in groups.items() if any(max(pads[c]) for c, _ in m)]
    for _, members in padded:
        if len(members) > 1 and any(c != site for c, site in members):
            raise ValueError("a quantized convolution shares its input with another same-size convolution")
    return padded


def with_halo(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a decoder graph with the ``halo`` input (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    if any(i.name == INPUT for i in g.input):
        raise ValueError("the graph already has a halo input")
    groups = _padded_groups(g)
    if not groups:
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
    pads_of: dict[tuple[int, ...], str] = {(1, 1, 1, 1): "halo/pads1"}
    before: dict[int, list[onnx.NodeProto]] = {}  # node index → nodes to put in front of it
    after: dict[int, list[onnx.NodeProto]] = {}  # node index → nodes to put after it
    for j, (source, members) in enumerate(groups):
        # The Pad gives every side the most any member pads there; a member that pads a side less
        # reads from further in, so its output loses the difference (a Slice), and all members keep
        # computing the same positions.
        own = {c: _attributes(g.node[c]).get("pads", [0, 0, 0, 0]) for c, _ in members}
        reach = [max(p[s] for p in own.values()) for s in range(4)]
        key = tuple(reach)
        if key not in pads_of:  # 1 − halo times the reach: a scalar where all sides reach alike
            name = str(reach[0]) if len(set(reach)) == 1 else "_".join(map(str, reach))
            const, pads_of[key] = f"halo/k{name}", f"halo/pads{name}"
            per_side = np.array(reach[0] if len(set(reach)) == 1 else
                                [0, 0, reach[0], reach[1], 0, 0, reach[2], reach[3]], np.int64)
            new += [helper.make_node("Constant", [], [const], value=numpy_helper.from_array(per_side)),
                    helper.make_node("Mul", ["halo/pads1", const], [pads_of[key]])]
        padded = f"halo/input{j}"
        c0, site0 = members[0]
        # export.qat.QuantSubPixel sizes its shuffle by Shape(its input), meaning its output's
        first = _resize_shapes(g, before, source, padded, reach, j) if site0 != c0 else site0
        first = min([first] + [site for _, site in members])
        before.setdefault(first, []).insert(
            0, helper.make_node("Pad", [source, pads_of[key]], [padded], mode="constant", name=f"halo/pad{j}"))
        for c, site in members:
            g.node[site].input[0] = padded
            conv = g.node[c]
            for a in conv.attribute:
                if a.name == "pads":
                    a.ints[:] = [0, 0, 0, 0]
            cut = [r - p for r, p in zip(reach, own[c], strict=True)]
            if any(cut):
                raw = f"halo/uncut{j}_{c}"
                ends = [-cut[2] if cut[2] else np.iinfo(np.int64).max, -cut[3] if cut[3] else np.iinfo(np.int64).max]
                after.setdefault(c, []).extend([
                    helper.make_node("Constant", [], [f"{raw}/starts"],
                                     value=numpy_helper.from_array(np.array(cut[:2], np.int64))),
                    helper.make_node("Constant", [], [f"{raw}/ends"],
                                     value=numpy_helper.from_array(np.array(ends, np.int64))),
                    helper.make_node("Constant", [], [f"{raw}/axes"],
                                     value=numpy_helper.from_array(np.array([2, 3], np.int64))),
                    helper.make_node("Slice", [raw, f"{raw}/starts", f"{raw}/ends", f"{raw}/axes"],
                                     [conv.output[0]], name=f"halo/cut{j}_{c}")])
                conv.output[0] = raw
    nodes = list(new)
    for j, node in enumerate(g.node):
        nodes += before.get(j, [])
        nodes.append(node)
        nodes += after.get(j, [])
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def shrink(model: onnx.ModelProto, channels: int, name: str = "y_hat") -> int:
    """Pixels a flagged side of the output loses: the graph run on a 12-latent window, halo on and off,
    each side in turn. ValueError where the sides lose different counts (the runtime's tiles take one)."""
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: np.zeros((1, channels, 12, 12), np.float32)}
    if any(i.name == "inv_gain" for i in s.get_inputs()):
        feeds["inv_gain"] = np.ones((1, channels, 1, 1), np.float32)
    full = s.run(None, {**feeds, INPUT: np.zeros(4, np.int64)})[0].shape[2:]
    lost = set()
    for side in range(4):  # top, bottom, left, right
        flags = np.zeros(4, np.int64)
        flags[side] = 1
        lost.add(full[side // 2] - s.run(None, {**feeds, INPUT: flags})[0].shape[2 + side // 2])
    if len(lost) > 1:
        raise ValueError(f"the graph's reach is not the same on every side: it loses {sorted(lost)} pixels")
    return lost.pop()


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
