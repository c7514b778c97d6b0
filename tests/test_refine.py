"""Encoder-side refinement (codec/refine.py): its gradients, its guarantee, and its errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import codec
from codec import api, bitstream, refine, tiling
from codec.bitstream import OnicError
from codec.session import Bundle
from export import bundle as export_bundle
from export.model import ModelConfig, Onic
from export.train import load_model, save_weights
from tests.conftest import DEFAULT_BUNDLE, ROOT, random_image, run_onic


def autograd_gradient(g_s, y_hat, inv_gain, x, weight):
    y = torch.from_numpy(y_hat)[None].requires_grad_(True)
    x_hat = g_s(y * torch.from_numpy(inv_gain))
    sse = (torch.from_numpy(weight) * (x_hat.clamp(0, 1) - torch.from_numpy(x)) ** 2).sum()
    sse.backward()
    return y.grad[0].numpy(), sse.item()


def test_pixel_unshuffle_is_torchs():
    from export.refine import pixel_unshuffle

    g = torch.randn(2, 3, 14, 10)
    assert torch.equal(pixel_unshuffle(g), torch.nn.functional.pixel_unshuffle(g, 2))


def test_shipped_gradient_graph_is_the_synthesis_gradient(bundle):
    """synthesis_grad.onnx of the shipped bundle, run by onnxruntime, against PyTorch's autograd of
    the shipped checkpoint's g_s, with a weight that masks pixels and values clipped at both ends."""
    model, _ = load_model(ROOT / "export" / "checkpoints" / "default.pt")
    for p in model.parameters():
        p.requires_grad_(False)
    g_s = model.g_s
    if "synthesis" in bundle.manifest:  # an int8 synthesis: the float function of its fine-tuned weights
        from export import qat

        int8 = ROOT / "export" / "checkpoints" / "default_int8.pt"
        g_s = qat.load_state(qat.QuantDecoder(model), int8).float_layers()
    rng = np.random.default_rng(0)
    m = model.cfg.M
    y_hat = (3 * rng.standard_normal((m, 6, 9))).astype(np.float32)
    _, inv_gain = bundle.gains(60)
    x = rng.random((1, 3, 96, 144), dtype=np.float32)
    weight = (rng.random((1, 1, 96, 144)) > 0.3).astype(np.float32)
    want, want_sse = autograd_gradient(g_s, y_hat, inv_gain, x, weight)
    got, sse = bundle.run(refine.GRAPH, y_hat=y_hat[None], inv_gain=inv_gain, x=x, weight=weight)
    assert np.abs(got[0] - want).max() <= 1e-4 * np.abs(want).max()
    assert sse[0] == pytest.approx(want_sse, rel=1e-5)


def test_tiles_add_up_to_the_whole_gradient(bundle, monkeypatch):
    """Each tile weighs only its core, so the tiles' gradients sum to the whole image's."""
    rgb = np.asarray(random_image(300, 200, seed=4))
    gain, inv_gain = bundle.gains(50)
    y, _ = tiling.analyse(bundle, rgb, gain)
    whole, whole_sse = refine.gradient(bundle, rgb, y, inv_gain)
    monkeypatch.setattr(tiling, "TILE", 128)  # 8 latents a core: 3 × 3 tiles
    assert not tiling.whole(*(s * tiling.LATENT for s in y.shape[1:]))
    tiled, tiled_sse = refine.gradient(bundle, rgb, y, inv_gain)
    assert np.abs(tiled - whole).max() <= 1e-4 * np.abs(whole).max()
    assert tiled_sse == pytest.approx(whole_sse, rel=1e-4)


def test_code_measures_what_compress_writes(bundle, sample):
    """refine.code's bits are the z and y sections compress writes, its MSE the decoded file's."""
    rgb = np.asarray(sample)
    data = api.compress(sample, 40, bundle)
    gain, _ = bundle.gains(40)
    y, _ = tiling.analyse(bundle, rgb, gain)
    coded = refine.code(bundle, rgb, y, 40)
    c = bitstream.unpack(data)
    assert coded.bits == 8 * (len(c.z) + len(c.y))
    decoded = np.asarray(api.decompress(data, bundle), dtype=np.float64)
    assert coded.mse == pytest.approx(np.mean((decoded - rgb) ** 2), rel=1e-6)


def _cost(bundle, image, data, quality) -> float:
    decoded = np.asarray(api.decompress(data, bundle), dtype=np.float64)
    mse = np.mean((decoded - np.asarray(image, dtype=np.float64)) ** 2)
    return 8 * len(data) / (image.width * image.height) + bundle.lam(quality) * mse


@pytest.mark.parametrize("quality", [0, 75, 100])
def test_refined_files_cost_less_and_decode_anywhere(bundle, sample, quality):
    """The real cost (bits per pixel + λ·MSE, what the model was trained on) of a refined file never
    exceeds the plain one's, and on the sample it is lower; the file is an ordinary .onic file.

    20 steps, bench's default: with 0.16.0's model 10 steps at quality 0 found nothing better than
    the plain file on the sample (its first refreshes cost more), 20 did."""
    plain = api.compress(sample, quality, bundle)
    refined = api.compress(sample, quality, bundle, refine=20)
    assert refined != plain
    assert _cost(bundle, sample, refined, quality) < _cost(bundle, sample, plain, quality)
    assert api.read_header(refined).model_id == bundle.model_id
    assert api.decompress(refined, bundle).size == sample.size
    assert api.compress(sample, quality, bundle, refine=20) == refined  # deterministic


@pytest.fixture(scope="module", params=[(), (4, 8)], ids=["hyperprior", "slices"])
def small(request, tmp_path_factory) -> Bundle:
    folder = tmp_path_factory.mktemp("refine")
    torch.manual_seed(2)
    save_weights(folder / "w.pt", Onic(ModelConfig(N=8, M=12, slices=request.param)).eval(), 0)
    export_bundle.export_bundle(folder / "w.pt", folder / "bundle")
    return Bundle(folder / "bundle")


def test_refinement_keeps_the_best_latents_of_any_model(small):
    """For either entropy model the first refresh is the analysis' latents, and the result is the
    refresh of lowest real cost."""
    im = random_image(70, 90, seed=6)
    rgb = np.asarray(im)
    gain, _ = small.gains(50)
    y, _ = tiling.analyse(small, rgb, gain)
    trace: list[refine.Coded] = []
    out = refine.refine(small, rgb, y, 50, 12, trace=trace)
    assert len(trace) == len(range(0, 12, refine.REFRESH)) + 1  # every REFRESH steps and after the last
    assert trace[0].bits == refine.code(small, rgb, y, 50).bits
    assert refine.code(small, rgb, out, 50).cost == pytest.approx(min(c.cost for c in trace))
    data = api.compress(im, 50, small, refine=12)
    assert api.decompress(data, small).size == im.size


def test_bits_gradient_is_the_derivative_of_the_bits():
    rng = np.random.default_rng(1)
    s = rng.uniform(-12, 12, 2000).astype(np.float32)
    sigma = np.exp(rng.uniform(math.log(0.11), math.log(40), 2000)).astype(np.float32)

    def bits(s, sigma):
        cdf = np.vectorize(lambda t: 0.5 * math.erfc(-t / math.sqrt(2)))
        v = np.abs(s.astype(np.float64))
        return -np.log2(np.maximum(cdf((0.5 - v) / sigma) - cdf((-0.5 - v) / sigma), 1e-9))

    h = 1e-3
    numeric = (bits(s + h, sigma) - bits(s - h, sigma)) / (2 * h)
    ok = bits(np.abs(s) + 1, sigma) < -math.log2(1e-9) - 1  # away from the clamp at 1e-9
    np.testing.assert_allclose(refine._bits_gradient(s, sigma)[ok], numeric[ok], rtol=2e-3, atol=2e-3)


def test_normal_cdf_keeps_its_tails():
    t = np.linspace(-9, 9, 721)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in t])
    got = refine._std_cdf(t)
    assert np.all(np.abs(got - want) <= 2e-7 * want + 1e-15)


def test_soft_rounding_and_its_derivative():
    r = np.random.default_rng(3).uniform(-5, 5, 500).astype(np.float32)
    s, ds = refine._soft_round(r, 0.5, np.random.default_rng(4))
    assert np.all((s >= np.floor(r)) & (s <= np.floor(r) + 1))
    h = 1e-3
    up, _ = refine._soft_round(r + h, 0.5, np.random.default_rng(4))
    down, _ = refine._soft_round(r - h, 0.5, np.random.default_rng(4))
    inner = (r - np.floor(r) > 0.01) & (r - np.floor(r) < 0.99)
    np.testing.assert_allclose(ds[inner], ((up - down) / (2 * h))[inner], rtol=0.05, atol=0.05)
    cold, _ = refine._soft_round(r, 1e-3, np.random.default_rng(4))  # near zero temperature: nearly hard
    assert np.mean(np.abs(cold - np.round(r)) < 1e-3) > 0.9


@pytest.mark.parametrize("steps", [-1, 1001, True, 2.5, "3"])
def test_bad_step_counts_are_refused(sample, steps):
    with pytest.raises(OnicError, match="refinement steps"):
        codec.compress(sample, 50, refine=steps)


def test_a_bundle_without_the_gradient_graph_says_so(tmp_path, sample):
    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "b")
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    del m["encoder_files"]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    old = Bundle(tmp_path / "b")
    assert old.model_id == Bundle(DEFAULT_BUNDLE).model_id  # the graph is outside the model id
    with pytest.raises(OnicError, match="no synthesis_grad.onnx"):
        codec.compress(sample, 50, old, refine=1)
    assert codec.compress(sample, 50, old)  # plain coding needs no gradient


def test_a_copy_without_the_gradient_graph_still_decodes(tmp_path, sample, sample_onic):
    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "b")
    (tmp_path / "b" / f"{refine.GRAPH}.onnx").unlink()
    b = Bundle(tmp_path / "b")
    assert not b.has_gradient
    assert codec.decompress(sample_onic, b).size == sample.size
    with pytest.raises(OnicError, match="no synthesis_grad.onnx"):
        codec.compress(sample, 50, b, refine=1)


def test_a_bundle_missing_a_decoding_file_is_damaged(tmp_path):
    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "b")
    (tmp_path / "b" / "decoder.onnx").unlink()
    with pytest.raises(OnicError, match="damaged: cannot read decoder.onnx"):
        Bundle(tmp_path / "b")


def test_a_damaged_gradient_graph_is_caught(tmp_path):
    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "b")
    with open(tmp_path / "b" / f"{refine.GRAPH}.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00")
    with pytest.raises(OnicError, match="synthesis_grad.onnx does not match its hash"):
        Bundle(tmp_path / "b")


def test_cli_refine(tmp_path):
    src = tmp_path / "a.png"
    random_image(96, 64, seed=8).save(src)
    r = run_onic("compress", str(src), "--refine", "3", "-v")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.onic").exists()
    r = run_onic("compress", str(src), "--refine", "-1", "-f")
    assert r.returncode == 2 and b"--refine" in r.stderr


def test_pillow_save_takes_refine(tmp_path, sample):
    sample.save(tmp_path / "a.onic", quality=60, refine=3)
    assert (tmp_path / "a.onic").read_bytes() == codec.compress(sample, 60, refine=3)
