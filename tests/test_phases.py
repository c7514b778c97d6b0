"""export/phases.py: phase convolutions cropped to their own taps compute what the whole ones did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from codec.session import DEFAULT_BUNDLE
from export import bundle, halo, phases


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _exported(module: nn.Module, channels: int, folder: Path) -> onnx.ModelProto:
    bundle.export_graph(module, (torch.randn(1, channels, 6, 7),), ["x"], ["y"], folder / "graph.onnx")
    return onnx.load(str(folder / "graph.onnx"))


def _kernels(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    return sorted(tuple(t.dims[2:]) for t in model.graph.initializer if len(t.dims) == 4)


@pytest.mark.parametrize("k", [5, 3])
def test_cropped_phases_are_the_transposed_convolution(k, tmp_path):
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(8, 6, k, stride=2, padding=k // 2, output_padding=1)
    whole = _exported(bundle.PhaseSubPixel(bundle.SubPixelConv(deconv)), 8, tmp_path)
    assert _kernels(whole) == [(3, 3)] * 4
    model, count = phases.crop_phases(whole)
    assert count == (3 if k == 5 else 4)  # a 5×5 kernel's phase (0, 0) uses all 3×3 taps
    assert _kernels(model) == ([(2, 2), (2, 3), (3, 2), (3, 3)] if k == 5 else [(1, 1), (1, 2), (2, 1), (2, 2)])
    x = np.random.default_rng(1).standard_normal((1, 8, 9, 11)).astype(np.float32)
    with torch.no_grad():
        want = deconv(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_run(model, x), _run(whole, x))  # only zero terms are gone


def test_whole_kernels_stay_whole(tmp_path):
    """A convolution with taps in every row and column, and the shipped synthesis (trained in the
    sub-pixel form, export/qat.py, with an int8 convolution), are left as they are."""
    torch.manual_seed(0)
    plain = _exported(nn.Conv2d(4, 8, 3, padding=1), 4, tmp_path)
    model, count = phases.crop_phases(plain)
    assert count == 0 and model.SerializeToString() == plain.SerializeToString()
    assert phases.crop_phases(onnx.load(str(DEFAULT_BUNDLE / "decoder.onnx")))[1] == 0


def test_cropped_refuses_what_it_cannot_crop():
    w = np.zeros((2, 2, 3, 3), np.float32)
    w[:, :, 1, 1] = 1
    kernel, pads = phases.cropped(w, [1, 1, 1, 1])  # the centre tap alone: a 1×1 kernel, no padding
    assert pads == [0, 0, 0, 0] and np.array_equal(kernel, w[:, :, 1:2, 1:2])
    assert phases.cropped(w, [0, 0, 0, 0]) is None  # pads that change the size
    assert phases.cropped(w, [2, 2, 0, 0]) is None  # the crop would need a negative pad
    assert phases.cropped(np.ones_like(w), [1, 1, 1, 1]) is None  # nothing to crop
    assert phases.cropped(np.zeros_like(w), [1, 1, 1, 1]) is None  # all zeros


def test_exports_crop_their_decoder_graphs(tmp_path):
    """export.bundle writes the decoder and hyper decoder graphs with their phases cropped."""
    from export.model import ModelConfig, Onic
    from export.train import save_weights

    torch.manual_seed(0)
    save_weights(tmp_path / "tiny.pt", Onic(ModelConfig(N=8, M=12, synthesis=(8, 6, 4))).eval(), step=0)
    bundle.export_bundle(tmp_path / "tiny.pt", tmp_path / "bundle", name="tiny")
    for graph, layers in (("decoder", 3), ("hyper_decoder", 2)):  # and a last 3×3 convolution each
        model = onnx.load(str(tmp_path / "bundle" / f"{graph}.onnx"))
        kernels = [numpy_helper.to_array(t).shape[2:] for t in model.graph.initializer
                   if len(t.dims) == 4 and list(t.dims[2:]) != [1, 1]]
        assert sorted(kernels) == sorted([(2, 2), (2, 3), (3, 2), (3, 3)] * layers + [(3, 3)]), graph


@pytest.mark.parametrize("k", [5, 3])
def test_tiles_of_cropped_phases_are_the_whole(k, tmp_path):
    """export/halo.py on cropped phases (for k = 3 one phase is a 1×1 convolution that pads nothing):
    a window with every side a margin gives the whole graph's pixels there, less the reach, which
    for k = 3 is not the same on every side (so ``shrink``, one number for all, refuses it)."""
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(8, 6, k, stride=2, padding=k // 2, output_padding=1)
    model, _ = phases.crop_phases(_exported(nn.Sequential(bundle.PhaseSubPixel(bundle.SubPixelConv(deconv)),
                                                          nn.Conv2d(6, 6, 3, padding=1)), 8, tmp_path))
    tiles = halo.with_halo(model)
    x = np.random.default_rng(2).standard_normal((1, 8, 12, 13)).astype(np.float32)
    whole = _run(model, x)
    s = ort.InferenceSession(tiles.SerializeToString(), providers=["CPUExecutionProvider"])
    window = np.ascontiguousarray(x[:, :, 3:9, 2:10])
    got = s.run(None, {"x": window, "halo": np.ones(4, np.int64)})[0]
    # the phases reach one input row (2 pixels) up and down for k = 5, only down for k = 3; then the 3×3 conv 1
    up, down = (2 if k == 5 else 0) + 1, 2 + 1
    want = whole[:, :, 2 * 3 + up : 2 * 9 - down, 2 * 2 + up : 2 * 10 - down]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    edges = s.run(None, {"x": x, "halo": np.zeros(4, np.int64)})[0]
    np.testing.assert_array_equal(edges, whole)
    if k == 3:
        with pytest.raises(ValueError, match="not the same on every side"):
            halo.shrink(tiles, 8, "x")
    else:
        assert halo.shrink(tiles, 8, "x") == 3
