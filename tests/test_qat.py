"""The int8 synthesis (export/qat.py): fine-tuned g_s in a bundle that decodes the base's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import codec  # noqa: E402
from codec.api import decode_latents  # noqa: E402
from codec.session import Bundle  # noqa: E402
from export import bundle as export_bundle  # noqa: E402
from export import qat  # noqa: E402
from export.model import ModelConfig, Onic  # noqa: E402
from export.train import save_weights  # noqa: E402
from tests.conftest import random_image  # noqa: E402


@pytest.fixture(scope="module")
def int8(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("qat")
    torch.manual_seed(0)
    save_weights(folder / "tiny.pt", Onic(ModelConfig(N=8, M=12)).eval(), step=0)
    export_bundle.export_bundle(folder / "tiny.pt", folder / "base")
    data = folder / "data"
    data.mkdir()
    for i in range(3):
        random_image(96, 96, seed=i).save(data / f"{i}.png")
    decoder = qat.train(str(folder / "tiny.pt"), folder / "run", str(data), minutes=5, lr=1e-4, batch=2, crop=64,
                        seed=0, calibration_batches=2, max_steps=3)
    qat.export_decoder(decoder, folder / "decoder.onnx", channels=12)
    qat.write_bundle(folder / "base", folder / "decoder.onnx", folder / "int8", "int8 (a test)")
    return folder / "base", folder / "int8"


def test_the_int8_bundle_decodes_the_base_files_to_the_same_symbols(int8):
    base, quantized = Bundle(int8[0]), Bundle(int8[1])
    assert base.model_id in quantized.decodes and quantized.model_id != base.model_id
    data = codec.compress(random_image(200, 136, seed=7), 40, base)
    _, z_a, y_a = decode_latents(data, base)
    _, z_b, y_b = decode_latents(data, quantized)
    assert (z_a == z_b).all() and (y_a == y_b).all()
    assert np.asarray(codec.decompress(data, quantized)).shape == (136, 200, 3)


def test_onnxruntime_runs_the_synthesis_in_int8(int8, tmp_path):
    """The QDQ pairs must fuse into QLinearConv, else the graph is slower than fp32 (see export/qat.py)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(int8[1] / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3 and ops.count("Conv") >= 1  # the colour conv and GDNs stay float
