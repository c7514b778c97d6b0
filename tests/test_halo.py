"""decoder_tiles.onnx (export/halo.py): tiles that skip their margins decode the pixels decoder.onnx does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import codec
from codec import tiling
from codec.bitstream import OnicError
from codec.session import DEFAULT_BUNDLE, TILE_GRAPH, Bundle
from export import halo


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory):
    """A tiny untrained model's export: a float decoder graph (the shipped one has an int8 convolution)."""
    import torch

    from export import bundle as export_bundle
    from export.model import ModelConfig, Onic
    from export.train import save_weights

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("halo")
    save_weights(folder / "tiny.pt", Onic(ModelConfig(N=8, M=12, synthesis=(8, 6, 4))).eval(), step=0)
    export_bundle.export_bundle(folder / "tiny.pt", folder / "bundle", name="tiny")
    return folder / "bundle"


@pytest.fixture(scope="module", params=["shipped", "float"])
def graphs(request, float_bundle):
    folder = DEFAULT_BUNDLE if request.param == "shipped" else float_bundle
    m = json.loads((folder / "manifest.json").read_text())["config"]["M"]
    plain = _session(str(folder / "decoder.onnx"))
    tiles = _session(str(folder / f"{TILE_GRAPH}.onnx"))
    rng = np.random.default_rng(0)
    y = (rng.standard_normal((1, m, 10, 14)) * 3).round().astype(np.float32)
    inv = np.full((1, m, 1, 1), 0.5, np.float32)
    return plain, tiles, y, inv


def test_bundles_have_their_tile_graph(float_bundle):
    """The shipped bundle's tile graph is its decoder graph's, current and checked; exports write one."""
    b = Bundle(DEFAULT_BUNDLE)
    assert b.tile_halo == 30  # four 3×3 stages: 16 + 8 + 4 + 2 pixels
    fresh = halo.with_halo(onnx.load(str(DEFAULT_BUNDLE / "decoder.onnx")))
    assert fresh.SerializeToString() == onnx.load(str(DEFAULT_BUNDLE / f"{TILE_GRAPH}.onnx")).SerializeToString()
    assert Bundle(float_bundle).tile_halo == 30 and Bundle(float_bundle).model_id == \
        json.loads((float_bundle / "manifest.json").read_text())["model_id"]


def test_no_halo_is_the_decoder_graph(graphs):
    plain, tiles, y, inv = graphs
    want = plain.run(None, {"y_hat": y, "inv_gain": inv})[0]
    got = tiles.run(None, {"y_hat": y, "inv_gain": inv, "halo": np.zeros(4, np.int64)})[0]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("flags", [(1, 0, 0, 0), (0, 1, 1, 0), (1, 1, 1, 1), (0, 0, 0, 1)])
def test_a_window_with_halo_gives_the_whole_graph_pixels(graphs, flags):
    """A window cut from the latents, its flagged sides 2 latents inside the image: the graph's output
    is the whole image's over the window less 30 pixels per flagged side, bit for bit."""
    plain, tiles, y, inv = graphs
    whole = plain.run(None, {"y_hat": y, "inv_gain": inv})[0]
    t, b, left, r = flags
    rows = slice(2 * t, y.shape[2] - 2 * b)
    cols = slice(2 * left, y.shape[3] - 2 * r)
    window = np.ascontiguousarray(y[:, :, rows, cols])
    got = tiles.run(None, {"y_hat": window, "inv_gain": inv, "halo": np.array(flags, np.int64)})[0]
    want = whole[:, :, rows.start * 16 + 30 * t : rows.stop * 16 - 30 * b,
                 cols.start * 16 + 30 * left : cols.stop * 16 - 30 * r]
    assert got.shape == want.shape and np.array_equal(got, want)


def test_the_command_writes_it_and_keeps_the_model_id(tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    (folder / f"{TILE_GRAPH}.onnx").unlink()
    m = json.loads((folder / "manifest.json").read_text())
    del m["tile_files"], m["decoder_halo"]
    (folder / "manifest.json").write_text(json.dumps(m))
    assert Bundle(folder).tile_halo == 0
    halo.main([str(folder)])
    assert Bundle(folder).tile_halo == 30 and Bundle(folder).model_id == m["model_id"]
    assert (folder / f"{TILE_GRAPH}.onnx").read_bytes() == (DEFAULT_BUNDLE / f"{TILE_GRAPH}.onnx").read_bytes()
    with pytest.raises(SystemExit, match="is not a model bundle"):
        halo.main([str(tmp_path)])


def test_the_quantized_convolution_stays_fused():
    """The Pad of the int8 convolution goes before its QuantizeLinear, so onnxruntime still runs
    QLinearConv (a Pad between DequantizeLinear and Conv would run it in float, slower)."""
    tiles = onnx.load(str(DEFAULT_BUNDLE / f"{TILE_GRAPH}.onnx"))
    producers = {o: n for n in tiles.graph.node for o in n.output}
    quantized = [n for n in tiles.graph.node
                 if n.op_type == "Conv" and producers[n.input[0]].op_type == "DequantizeLinear"]
    assert quantized, "the shipped decoder has an int8 convolution"
    for conv in quantized:
        q = producers[producers[conv.input[0]].input[0]]
        assert q.op_type == "QuantizeLinear" and producers[q.input[0]].op_type == "Pad"


def _large(tmp_path, keep_tiles: bool) -> Bundle:
    folder = tmp_path / ("with" if keep_tiles else "without")
    shutil.copytree(DEFAULT_BUNDLE, folder)
    if not keep_tiles:
        (folder / f"{TILE_GRAPH}.onnx").unlink()  # left out of a copy: tiles run decoder.onnx
    return Bundle(folder)


def test_large_images_decode_the_same_pixels_with_and_without_it(tmp_path):
    from tests.conftest import random_image

    data = codec.compress(random_image(1100, 1030), 50)
    fast, plain = _large(tmp_path, True), _large(tmp_path, False)
    assert fast.tile_halo == 30 and plain.tile_halo == 0
    assert np.array_equal(np.asarray(codec.decompress(data, fast)), np.asarray(codec.decompress(data, plain)))


def test_a_narrow_margin_runs_the_decoder_graph(tmp_path, monkeypatch):
    """Where the tiles' margin is narrower than the graph's reach the halo cannot help: decoder.onnx runs."""
    from tests.conftest import random_image

    b = _large(tmp_path, True)
    monkeypatch.setattr(tiling, "MARGIN", 16)
    ran = []
    run_into = b.run_into
    monkeypatch.setattr(b, "run_into", lambda graph, *a, **k: ran.append(graph) or run_into(graph, *a, **k))
    codec.decompress(codec.compress(random_image(1100, 1030), 50), b)
    assert "decoder" in ran and TILE_GRAPH not in ran


@pytest.mark.parametrize("value", [-30, 0, "30", 2.5, True])
def test_a_bad_decoder_halo_is_a_damaged_bundle(tmp_path, value):
    b = _large(tmp_path, True)
    m = json.loads((b.path / "manifest.json").read_text())
    m["decoder_halo"] = value
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(OnicError, match="damaged: decoder_halo"):
        _ = Bundle(b.path).tile_halo


def test_a_changed_tile_graph_is_a_damaged_bundle(tmp_path):
    b = _large(tmp_path, True)
    with open(b.path / f"{TILE_GRAPH}.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(OnicError, match=f"damaged: {TILE_GRAPH}.onnx does not match its hash"):
        Bundle(b.path)
