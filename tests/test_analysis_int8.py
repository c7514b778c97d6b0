"""The int8 analysis (export/analysis_int8.py): an encoder-only graph of the shipped model's bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

import codec  # noqa: E402
from codec import metrics  # noqa: E402
from codec.bitstream import OnicError  # noqa: E402
from codec.session import DEFAULT_BUNDLE, Bundle  # noqa: E402
from export import analysis_int8  # noqa: E402
from tests.conftest import SAMPLE, random_image  # noqa: E402


def _calibration() -> list[np.ndarray]:
    from PIL import Image

    with Image.open(SAMPLE) as im:
        parrots = np.asarray(im.convert("RGB"))
    return [parrots, np.asarray(random_image(192, 128, seed=3))]


@pytest.fixture(scope="module")
def int8(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("analysis_int8") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    return folder, analysis_int8.write(folder, _calibration())


def test_the_int8_analysis_is_an_encoder_file_outside_the_model_id(int8, tmp_path):
    folder, _ = int8
    b = Bundle(folder)
    assert b.model_id == Bundle().model_id and b.analysis_graph == "analysis_int8"
    assert Bundle(folder, float_analysis=True).analysis_graph == "analysis"
    assert analysis_int8.FILE in json.loads((folder / "manifest.json").read_text())["encoder_files"]
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    with open(damaged / analysis_int8.FILE, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(OnicError, match="analysis_int8.onnx does not match its hash"):
        Bundle(damaged)


def test_equalization_keeps_the_float_analysis():
    """Scaling channels around the int8 layer is undone by the GDN and the next layer: the same y."""
    a = analysis_int8.Analysis(onnx.load(DEFAULT_BUNDLE / "analysis.onnx"))
    channels = Bundle().manifest["config"]["M"]
    crops = analysis_int8.crops_of(_calibration())
    before = analysis_int8._run(a.float_model(), crops, ["y"], channels)
    analysis_int8.equalize(a, crops, analysis_int8.LAYERS, channels)
    after = analysis_int8._run(a.float_model(), crops, ["y"], channels)
    for (y0,), (y1,) in zip(before, after, strict=True):
        assert np.abs(y1 - y0).max() < 1e-4 * np.abs(y0).max()


def test_onnxruntime_runs_the_layer_in_int8_with_7_bit_weights(int8, tmp_path):
    """The QDQ chain must fuse into QLinearConv (else it is slower than float), and its weights stay
    within ±63 so that no x86 kernel saturates them (export/qat.py)."""
    folder, _ = int8
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(folder / analysis_int8.FILE), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == len(analysis_int8.LAYERS)
    graph = onnx.load(str(folder / analysis_int8.FILE)).graph
    weights = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights and all(np.abs(w.astype(np.int32)).max() <= 63 for w in weights)


def test_the_int8_latents_stay_close_to_the_float_ones(int8):
    _, report = int8
    assert report["y_rms_error"] < 0.05 * report["y_rms"]


def test_its_files_decode_with_any_copy_of_the_model(int8):
    folder, _ = int8
    image = random_image(200, 136, seed=11)
    fast, exact = Bundle(folder), Bundle(folder, float_analysis=True)
    data = codec.compress(image, 60, fast)
    assert data != codec.compress(image, 60, exact)  # the int8 graph ran
    shipped = codec.decompress(data, Bundle())
    assert np.array_equal(np.asarray(shipped), np.asarray(codec.decompress(data, fast)))
    assert metrics.psnr(image, shipped) > metrics.psnr(image, codec.decompress(codec.compress(image, 60, exact))) - 0.3


def test_refinement_starts_from_the_float_analysis(int8):
    folder, _ = int8
    image = random_image(96, 64, seed=5)
    assert codec.compress(image, 50, Bundle(folder), refine=2) == \
        codec.compress(image, 50, Bundle(folder, float_analysis=True), refine=2)


def test_a_layer_out_of_range_is_refused(tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    with pytest.raises(ValueError, match="layers must be in 0..3"):
        analysis_int8.write(folder, _calibration(), (4,))
    assert analysis_int8.FILE not in json.loads((folder / "manifest.json").read_text()).get("encoder_files", {})


def test_its_tiles_match_its_whole_image(int8, monkeypatch):
    """Large images run the analysis in overlapping tiles (codec/tiling.py): the int8 graph's tiles
    give its whole-image latents, as the float graph's do."""
    from PIL import Image

    from codec import tiling

    folder, _ = int8
    b = Bundle(folder)
    with Image.open(SAMPLE) as im:
        rgb = np.tile(np.asarray(im.convert("RGB")), (2, 2, 1))[:448, :384]
    gain, _ = b.gains(60)
    y_whole, _ = tiling.analyse(b, rgb, gain)
    monkeypatch.setattr(tiling, "TILE", 128)
    y_tiles, _ = tiling.analyse(b, rgb, gain)
    assert np.abs(y_tiles - y_whole).max() < 1e-3 * np.abs(y_whole).max()
