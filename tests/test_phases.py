"""export/phases.py: sub-pixel convolutions split by output phase compute what the whole ones did."""

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
from export import bundle, phases


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _exported(module: nn.Module, channels: int, folder: Path) -> onnx.ModelProto:
    bundle.export_graph(module, (torch.randn(1, channels, 6, 7),), ["x"], ["y"], folder / "graph.onnx")
    return onnx.load(str(folder / "graph.onnx"))


@pytest.mark.parametrize("k", [5, 3])
def test_split_is_the_transposed_convolution(k, tmp_path):
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(8, 6, k, stride=2, padding=k // 2, output_padding=1)
    model, split = phases.split_phases(_exported(bundle.PhaseMajorSubPixel(bundle.SubPixelConv(deconv)), 8, tmp_path))
    assert split == 1
    shapes = sorted(tuple(t.dims[2:]) for t in model.graph.initializer if len(t.dims) == 4)
    assert shapes == ([(2, 2), (2, 3), (3, 2), (3, 3)] if k == 5 else [(1, 1), (1, 2), (2, 1), (2, 2)])
    x = np.random.default_rng(1).standard_normal((1, 8, 9, 11)).astype(np.float32)
    with torch.no_grad():
        want = deconv(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)


def test_whole_kernels_stay_whole(tmp_path):
    """A convolution with taps in every row and column of each quarter, and the shipped synthesis
    (trained in the sub-pixel form, export/qat.py, with an int8 convolution), are left as they are."""
    torch.manual_seed(0)
    plain = _exported(nn.Conv2d(4, 8, 3, padding=1), 4, tmp_path)
    model, split = phases.split_phases(plain)
    assert split == 0 and [n.op_type for n in model.graph.node] == [n.op_type for n in plain.graph.node]
    assert phases.split_phases(onnx.load(str(DEFAULT_BUNDLE / "decoder.onnx")))[1] == 0


def test_phase_kernels_refuse_what_they_cannot_crop():
    w = np.zeros((8, 2, 3, 3), np.float32)
    w[:, :, 1, 1] = 1
    parts = phases.phase_kernels(w, [1, 1, 1, 1])  # the centre tap alone: 1×1 kernels, no padding
    assert [(k.shape, p) for k, p in parts] == [((2, 2, 1, 1), [0, 0, 0, 0])] * 4
    assert all(np.array_equal(k, w[:2, :, 1:2, 1:2]) for k, _ in parts)
    assert phases.phase_kernels(w, [0, 0, 0, 0]) is None  # pads that change the size
    assert phases.phase_kernels(w[:6], [1, 1, 1, 1]) is None  # channels not in four quarters
    w[:2] = 0
    assert phases.phase_kernels(w, [1, 1, 1, 1]) is None  # a quarter of zeros


def test_exports_split_their_decoder_graphs(tmp_path):
    """export.bundle writes the decoder and hyper decoder graphs with their phases split."""
    from export.model import ModelConfig, Onic
    from export.train import save_weights

    torch.manual_seed(0)
    save_weights(tmp_path / "tiny.pt", Onic(ModelConfig(N=8, M=12, synthesis=(8, 6, 4))).eval(), step=0)
    bundle.export_bundle(tmp_path / "tiny.pt", tmp_path / "bundle", name="tiny")
    for graph, convs in (("decoder", 3), ("hyper_decoder", 2)):
        model = onnx.load(str(tmp_path / "bundle" / f"{graph}.onnx"))
        kernels = [numpy_helper.to_array(t).shape[2:] for t in model.graph.initializer if t.name.endswith("/weight")]
        assert len(kernels) == 4 * convs and sorted(set(kernels)) == [(2, 2), (2, 3), (3, 2), (3, 3)]
