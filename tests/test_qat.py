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
from export.model import Analysis, ModelConfig, Onic  # noqa: E402
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
    qat.export_gradient(decoder, folder / "synthesis_grad.onnx", channels=12)
    qat.write_bundle(folder / "base", folder / "decoder.onnx", folder / "int8", "int8 (a test)",
                     folder / "synthesis_grad.onnx")
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
    # qat.INT8_CONVS; the first sub-pixel convolution (its input's step shrinks with quality),
    # the colour conv and the GDNs stay float.
    assert ops.count("QLinearConv") == len(qat.INT8_CONVS) and ops.count("Conv") >= 2
    # Each int8 output is dequantized once for x² and once for the GDN's product, not also for the
    # Shape ops of its pixel shuffle (four more full dequantizations of the largest tensor).
    assert ops.count("DequantizeLinear") == 2 * len(qat.INT8_CONVS)


def test_int8_weights_have_7_bits_so_no_cpu_saturates_them(int8, tmp_path):
    """onnxruntime's x86 kernels without VNNI sum pairs of uint8 × int8 products in int16 with
    saturation: 7-bit weights keep every pair inside it, so the pixels do not depend on the CPU."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(int8[1] / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = [consts[n.input[3]] for n in graph.node if n.op_type == "QLinearConv"]  # QLinearConv's w
    assert len(weights) == len(qat.INT8_CONVS)
    assert all(w.dtype == np.int8 and np.abs(w.astype(int)).max() == 63 for w in weights)


def test_refinement_follows_the_int8_synthesis(int8):
    """The bundle's gradient graph is the fine-tuned synthesis' (not the base's): its squared error
    is that of the int8 decoder's pixels, to within the activation grids, and refined files decode."""
    from codec.refine import gradient

    base, quantized = Bundle(int8[0]), Bundle(int8[1])  # verify=True: the encoder file's hash matches
    image = np.asarray(random_image(64, 64, seed=9))
    data = codec.compress(image, 50, quantized)
    y_hat = codec.api._latents(codec.bitstream.unpack(data), quantized)
    _, inv_gain = quantized.gains(50)
    pixels = quantized.run("decoder", y_hat=y_hat[None], inv_gain=inv_gain)[0][0]
    want = float((((np.clip(pixels, 0, 1) - image.transpose(2, 0, 1) / 255) ** 2)).sum())
    errors = [gradient(b, image, y_hat, inv_gain)[1] for b in (quantized, base)]
    assert abs(errors[0] - want) < abs(errors[1] - want)
    refined = codec.compress(image, 50, quantized, refine=2)
    assert np.asarray(codec.decompress(refined, quantized)).shape == (64, 64, 3)


@pytest.mark.parametrize("convs", [(1,), (4,), (2, 5), ()])
def test_the_first_and_the_colour_convolution_stay_float(convs):
    with pytest.raises(ValueError, match="int8 convolutions must be among 2..3"):
        qat.QuantDecoder(Onic(ModelConfig(N=8, M=12)), convs=convs)


def test_learned_step_sizes_train_save_and_export(tmp_path):
    """--range_lr trains the activations' step sizes (LSQ); qat.pt keeps the learned ones, and a
    resumed decoder and the exported graph use them."""
    torch.manual_seed(0)
    save_weights(tmp_path / "tiny.pt", Onic(ModelConfig(N=8, M=12)).eval(), step=0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        random_image(96, 96, seed=i).save(data / f"{i}.png")
    decoder = qat.train(str(tmp_path / "tiny.pt"), tmp_path / "run", str(data), minutes=5, lr=1e-4, batch=2,
                        crop=64, seed=0, calibration_batches=2, max_steps=5, range_lr=0.05)
    learned = [q.current_scale() for q in decoder.quantizers()]
    assert all(q.log_scale is not None for q in decoder.quantizers())
    assert any(abs(s - q.scale) > 1e-4 * q.scale for s, q in zip(learned, decoder.quantizers(), strict=True))
    again = qat.load_state(qat.QuantDecoder(qat.load_model(str(tmp_path / "tiny.pt"))[0]), tmp_path / "run" / "qat.pt")
    assert [q.current_scale() for q in again.quantizers()] == pytest.approx(learned)
    qat.export_decoder(decoder, tmp_path / "decoder.onnx", channels=12)
    assert (tmp_path / "decoder.onnx").stat().st_size > 0
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(tmp_path / "decoder.onnx")).graph
    scalars = [float(a) for a in ([numpy_helper.to_array(t) for t in graph.initializer]
                                  + [numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                                     if n.op_type == "Constant" and n.attribute[0].type == onnx.AttributeProto.TENSOR])
               if a.size == 1 and a.dtype == np.float32]
    assert all(any(abs(v - s) <= 1e-6 * s for v in scalars) for s in learned)  # the graph's step sizes


def test_a_slim_student_trains_from_an_analysis_pool_and_decodes_the_base_files(tmp_path):
    """--pool (for the full-size model's student, issue 14): the crops and their analysis come from
    export/slim.py's pool, the asymmetric synthesis keeps its widths, and the int8 bundle decodes
    the base's files to the base's symbols."""
    torch.manual_seed(0)
    save_weights(tmp_path / "student.pt", Onic(ModelConfig(N=8, M=12, synthesis=(8, 6, 4))).eval(), step=0)
    export_bundle.export_bundle(tmp_path / "student.pt", tmp_path / "base")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        random_image(96, 96, seed=i).save(data / f"{i}.png")
    analysed = []  # crops that went through an analysis g_a
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: analysed.append(len(args[0])) if isinstance(m, Analysis) else None)
    try:
        decoder = qat.train(str(tmp_path / "student.pt"), tmp_path / "run", str(data), minutes=5, lr=1e-4, batch=4,
                            crop=64, seed=0, calibration_batches=2, max_steps=4, convs=(2, 3), pool=4)
    finally:
        hook.remove()
    assert decoder.steps == 4
    # 6 batches of 4 drawn (2 calibrating, 4 training): fresh crops would have been 24 analysed
    assert sum(analysed) < 6 * 4
    assert [m.conv.out_channels // 4 for m in decoder.modules()
            if isinstance(m, qat.QuantSubPixel)] == [6, 4]
    qat.export_decoder(decoder, tmp_path / "decoder.onnx", channels=12)
    qat.write_bundle(tmp_path / "base", tmp_path / "decoder.onnx", tmp_path / "int8", "int8 (a test)")
    base, quantized = Bundle(tmp_path / "base"), Bundle(tmp_path / "int8")
    data = codec.compress(random_image(130, 70, seed=3), 60, base)
    assert (decode_latents(data, base)[2] == decode_latents(data, quantized)[2]).all()
    assert np.asarray(codec.decompress(data, quantized)).shape == (70, 130, 3)
