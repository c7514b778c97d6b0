"""The channel-conditional entropy model (Minnen & Singh 2020): training model, export, runtime, exactness."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import codec
from codec import intscale, tiling
from codec.api import decode_latents
from codec.bitstream import OnicError
from codec.session import Bundle
from tests.conftest import image_folder, random_image

torch = pytest.importorskip("torch")

from export import bundle as export_bundle  # noqa: E402
from export import tables  # noqa: E402
from export.model import ModelConfig, Onic, slice_hidden  # noqa: E402
from export.train import add_slices, save_weights  # noqa: E402

SLICES = (3, 3, 6)


def _wake(model: Onic, seed: int = 0) -> Onic:
    """Give the slice networks' zero-initialized last layers some weight, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for last in [*(n[2] for n in model.context.mean), *(n.out for n in model.context.scale),
                     *(n[2] for n in model.context.lrp)]:
            last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.05)
            last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.2)
    return model


def sliced_bundle(folder: Path) -> tuple[Onic, Bundle]:
    """A small woken channel-conditional model with gain units on z, and its bundle in folder/bundle."""
    torch.manual_seed(0)
    model = _wake(Onic(ModelConfig(N=8, M=12, hyper_gains=True, slices=SLICES))).eval()
    save_weights(folder / "w.pt", model, 3)
    export_bundle.export_bundle(folder / "w.pt", folder / "bundle",
                                calibration=[np.asarray(random_image(192, 128, seed=5))])
    return model, Bundle(folder / "bundle")


@pytest.fixture(scope="module")
def sliced(tmp_path_factory) -> tuple[Onic, Bundle]:
    return sliced_bundle(tmp_path_factory.mktemp("sliced"))


@pytest.fixture(scope="module")
def image():
    return random_image(200, 136, seed=3)


def torch_latents(model: Onic, bundle: Bundle, im, q: int):
    """(ẑ symbols, y − μ symbols, float σ) as the PyTorch model computes them from the ONNX analysis."""
    gain, _ = bundle.gains(q)
    y, z = tiling.analyse(bundle, np.asarray(im), gain)
    z_sym = tiling.z_symbols(bundle, z, q)
    with torch.no_grad():
        y_t = torch.from_numpy(y)[None]
        _, mu, sigma = model.entropy_parameters(y_t, torch.from_numpy(bundle.hyper_input(z_sym, q))[None])
    return z_sym, torch.round(y_t - mu)[0].numpy().astype(np.int32), sigma[0].numpy()


def test_adding_slices_changes_nothing():
    torch.manual_seed(1)
    model = Onic(ModelConfig(N=8, M=12)).eval()
    sliced = add_slices(model, SLICES).eval()
    x, t = torch.rand(1, 3, 64, 128), torch.tensor([2.5])
    a, b = model(x, t), sliced(x, t)
    for k in ("x_hat", "y_likelihood", "z_likelihood"):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_checkerboard_measurement_starts_from_the_channel_context():
    """benchmarks/checkerboard.py's variant adds nothing before it trains, and its anchors' symbols
    alone feed the non-anchors' shifts (changing a non-anchor never moves another position's μ, σ)."""
    from benchmarks.checkerboard import CheckerboardContext, anchors
    from export.model import ChannelContext

    torch.manual_seed(2)
    channel = ChannelContext(12, SLICES)
    for net in [*channel.mean, *channel.scale, *channel.lrp]:  # trained-looking, not zero
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.05)
    board = CheckerboardContext(12, SLICES)
    board.load_state_dict(channel.state_dict(), strict=False)
    y, mu_h, sigma_h = torch.randn(1, 12, 8, 10) * 3, torch.randn(1, 12, 8, 10), torch.rand(1, 12, 8, 10) + 0.5
    for a, b in zip(channel(y, mu_h, sigma_h), board(y, mu_h, sigma_h), strict=True):
        torch.testing.assert_close(a, b)
    assert anchors(2, 3).flatten().tolist() == [1, 0, 1, 0, 1, 0]
    for net in board.spatial:
        torch.nn.init.normal_(net[2].weight, std=0.1)
    _, mu, sigma = board(y, mu_h, sigma_h)
    y2 = y.clone()
    y2[:, : SLICES[0], 0, 1] += 5  # a non-anchor of the first slice
    _, mu2, sigma2 = board(y2, mu_h, sigma_h)
    same = torch.ones_like(mu, dtype=torch.bool)
    same[:, SLICES[0] :] = False  # later slices see that symbol through the channel context
    assert torch.equal(mu[same], mu2[same]) and torch.equal(sigma[same], sigma2[same])


def test_slices_must_cover_y():
    with pytest.raises(ValueError, match="sum to M"):
        ModelConfig(N=8, M=12, slices=(4, 4))


def test_bundle_has_a_graph_per_slice(sliced):
    _, b = sliced
    names = sorted(p.stem for p in b.path.glob("slice_*.onnx"))
    assert names == ["slice_lrp0", "slice_lrp1", "slice_lrp2", "slice_mean1", "slice_mean2",
                     "slice_prior0", "slice_prior1", "slice_prior2"]
    assert b.slices == [(0, 3), (3, 6), (6, 12)]
    assert "channel-conditional" in b.manifest["architecture"]


def test_slice_graphs_match_the_modules(sliced):
    """slice_priorK's channels plus each slice graph compute the training model's networks of (μ_h, ŷ)."""
    model, b = sliced
    g = torch.Generator().manual_seed(2)
    mu_h = torch.randn(1, 12, 9, 7, generator=g)
    y = torch.randn(1, 12, 9, 7, generator=g) * 3
    width = slice_hidden(12)
    for k, (a, c) in enumerate(model.context.bounds):
        prior = tiling.slice_prior(b, mu_h[0].numpy(), k)
        assert prior.shape == ((2 if k else 1) * width, 9, 7)
        if k:
            (got,) = b.run(f"slice_mean{k}", mu_h=mu_h.numpy(), prior=prior[None, :width], y_prev=y[:, :a].numpy())
            want = mu_h[:, a:c] + model.context.mean[k - 1](torch.cat([mu_h, y[:, :a]], 1))
            np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4)
        (got,) = b.run(f"slice_lrp{k}", prior=prior[None, -width:], y_upto=y[:, :c].numpy())
        want = y[:, a:c] + 0.5 * torch.tanh(model.context.lrp[k](torch.cat([mu_h, y[:, :c]], 1)))
        np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4)


class _OldSliceMean(torch.nn.Module):
    """slice_meanK as onic 0.10 exported it: the network reads μ_h itself."""

    def __init__(self, model: Onic, k: int):
        super().__init__()
        (self.a, self.b), self.net = model.context.bounds[k], model.context.mean[k - 1]

    def forward(self, mu_h, y_prev):
        return mu_h[:, self.a : self.b] + self.net(torch.cat([mu_h, y_prev], 1))


class _OldSliceLRP(torch.nn.Module):
    def __init__(self, model: Onic, k: int):
        super().__init__()
        (self.a, self.b), self.net = model.context.bounds[k], model.context.lrp[k]

    def forward(self, mu_h, y_upto):
        return y_upto[:, self.a : self.b] + 0.5 * torch.tanh(self.net(torch.cat([mu_h, y_upto], 1)))


def legacy_bundle(model: Onic, b: Bundle, folder: Path) -> Bundle:
    """b as onic 0.10 exported it, in folder: no slice_priorK.onnx, slice graphs that read μ_h."""
    import hashlib
    import shutil

    shutil.copytree(b.path, folder)
    for prior in folder.glob("slice_prior*.onnx"):
        prior.unlink()
    mu_h = torch.randn(1, model.cfg.M, 8, 12)
    for k, (a, c) in enumerate(model.context.bounds):
        if k:
            export_bundle.export_graph(_OldSliceMean(model, k), (mu_h, torch.randn(1, a, 8, 12)),
                                       ["mu_h", "y_prev"], ["mu"], folder / f"slice_mean{k}.onnx")
        export_bundle.export_graph(_OldSliceLRP(model, k), (mu_h, torch.randn(1, c, 8, 12)),
                                   ["mu_h", "y_upto"], ["y_hat"], folder / f"slice_lrp{k}.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
             for n in manifest["files"] if not n.startswith("slice_prior")}
    manifest.update(files=files, model_id=hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
                    also_decodes=[b.model_id])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return Bundle(folder)


def test_a_bundle_without_slice_prior_still_decodes(sliced, image, tmp_path):
    """A bundle exported before slice_priorK.onnx (onic 0.10, e.g. a --model folder) decodes as it did:
    its slice graphs read μ_h, and the runtime gives them μ_h instead of a prior."""
    model, b = sliced
    legacy = legacy_bundle(model, b, tmp_path / "old")
    assert not legacy.slice_prior and b.slice_prior
    data = codec.compress(image, 60, bundle=b)
    assert codec.compress(image, 60, bundle=legacy)[16:-4] == data[16:-4]  # the same symbols past the model id
    new, then = (np.asarray(codec.decompress(data, bundle=x), dtype=int) for x in (b, legacy))
    assert np.abs(new - then).max() <= 1  # float rounding of μ only


@pytest.mark.parametrize("q", [0, 60, 100])
def test_round_trip_codes_the_symbols_torch_computes(sliced, image, q):
    model, b = sliced
    data = codec.compress(image, q, bundle=b)
    _, z_sym, y_sym = decode_latents(data, b)
    want_z, want_y, sigma = torch_latents(model, b, image, q)
    assert np.array_equal(z_sym, want_z)
    assert np.mean(y_sym == want_y) > 0.999  # μ is float: a rounding may flip on a tie, never more
    out = codec.decompress(data, bundle=b)
    assert out.size == image.size and out.mode == "RGB"
    # The integer path picks the float σ's table, or a neighbour.
    state = b.scale_state(z_sym, q)
    ids = np.concatenate([b.slice_indexes(k, state, y_sym) for k in range(len(b.slices))])
    diff = np.abs(ids.astype(int) - intscale.float_indexes(sigma, tables.SCALE_TABLE))
    assert np.mean(diff == 0) > 0.8 and diff.max() <= 1


def test_earlier_symbols_move_the_later_slices_indexes(sliced):
    """The scale path of slice k reads the symbols of slices < k, and nothing from k on."""
    _, b = sliced
    rng = np.random.default_rng(0)
    z = rng.integers(-3, 4, size=(8, 3, 4))
    state = b.scale_state(z, 50)
    sym = rng.integers(-4, 5, size=(12, 12, 16)).astype(np.int32)
    base = [b.slice_indexes(k, state, sym) for k in range(3)]
    later = sym.copy()
    later[6:] = 99
    assert all(np.array_equal(b.slice_indexes(k, state, later), base[k]) for k in range(3))
    earlier = sym.copy()
    earlier[:3] *= 5
    assert np.array_equal(b.slice_indexes(0, state, earlier), base[0])
    assert not np.array_equal(b.slice_indexes(2, state, earlier), base[2])


class Perturbed(Bundle):
    def __init__(self, path, noise: float, **kw):
        super().__init__(path, **kw)
        self.noise, self.rng = noise, np.random.default_rng(0)

    def run(self, graph, **inputs):
        return [o * (1 + self.rng.uniform(-self.noise, self.noise, o.shape)).astype(o.dtype)
                for o in super().run(graph, **inputs)]


@pytest.mark.parametrize("make", [
    lambda p: Bundle(p, threads=1, optimization="disable"),
    lambda p: Bundle(p, threads=3, optimization="all"),
    lambda p: Perturbed(p, 1e-3),
], ids=["1 thread, no optimization", "3 threads, all optimizations", "1e-3 noise on float outputs"])
def test_symbols_do_not_depend_on_float_arithmetic(sliced, image, make):
    _, b = sliced
    data = codec.compress(image, 70, bundle=b)
    _, z, y = decode_latents(data, b)
    other = make(b.path)
    _, z2, y2 = decode_latents(data, other)
    assert np.array_equal(z, z2) and np.array_equal(y, y2)
    codec.decompress(data, bundle=other)


def test_slice_bands_and_threads_equal_the_whole(sliced, monkeypatch):
    _, b = sliced
    rng = np.random.default_rng(3)
    z = rng.integers(-5, 6, size=(8, 11, 3))
    sym = rng.integers(-6, 7, size=(12, 44, 12)).astype(np.int32)
    mu_h = rng.standard_normal((12, 44, 12)).astype(np.float32)
    state = b.scale_state(z, 40)
    whole = [b.slice_indexes(k, state, sym) for k in range(3)]
    y_whole = tiling.conditional_latents(b, mu_h, sym)
    monkeypatch.setattr(intscale, "SLICE_BAND", 5)
    monkeypatch.setattr(intscale, "BAND", 2)
    monkeypatch.setattr(tiling, "Y_BAND", 6)
    monkeypatch.setattr(tiling, "whole", lambda h, w: False)  # images that run whole take no bands
    state = b.scale_state(z, 40)
    assert all(np.array_equal(b.slice_indexes(k, state, sym), whole[k]) for k in range(3))
    np.testing.assert_allclose(tiling.conditional_latents(b, mu_h, sym), y_whole, atol=1e-4)
    # Bands on three threads: the same integers (large images use the cores this way by default).
    threaded = Bundle(b.path, tile_workers=3)
    state3 = threaded.scale_state(z, 40)
    assert all(np.array_equal(s3, s) for s3, s in zip(state3, state, strict=True))
    assert all(np.array_equal(threaded.slice_indexes(k, state3, sym), whole[k]) for k in range(3))


def test_float_chain_beside_the_integer_chain_is_the_serial_decode(sliced, image):
    """decompress runs each slice's μ, ŷ and residual prediction on a second thread as the integer
    chain decodes the slice's symbols: the image is that of the steps run one after another."""
    _, b = sliced
    data = codec.compress(image, 55, bundle=b)
    h, z, y = decode_latents(data, b)
    y_hat = tiling.conditional_latents(b, tiling.hyper_decode(b, z, h.quality), y)
    serial = tiling.synthesize(b, y_hat, b.gains(h.quality)[1], h.height, h.width)
    assert np.array_equal(np.asarray(codec.decompress(data, bundle=b)), serial)


def test_a_failing_integer_chain_stops_the_float_chain(sliced, image):
    """A y section cut to nothing fails in one error while the float chain waits for the slice's
    symbols. The call returning at all is the check that the waiting thread is told (the
    decoder's pool joins it); the thread count says nothing is left behind. (Cut to half, this
    untrained model's y, nearly all zeros at the smallest σ, decodes from the zeros the range
    decoder reads past the end at no more bits than the half holds, so nothing fails; trained
    models' cut sections are refused: tests/test_hostile.py.)"""
    import threading

    _, b = sliced
    good = codec.compress(image, 90, bundle=b)
    z_len, y_len = struct.unpack_from("<II", good, 24)
    z = good[32 : 32 + z_len]
    body = good[:24] + struct.pack("<II", z_len, 0) + z + good[32 + z_len + y_len : -4]
    before = threading.active_count()
    with pytest.raises(OnicError, match="stream ends early|corrupt"):
        codec.decompress(body + struct.pack("<I", zlib.crc32(body)), bundle=b)
    assert threading.active_count() == before


def test_encoder_chains_beside_each_other_code_the_serial_bytes(sliced, image, monkeypatch):
    """An image that runs whole codes each slice's indexes and symbols on a second thread as the
    float chain makes the symbols: the file is that of the steps run one after another (the path
    of large images)."""
    _, b = sliced
    beside = codec.compress(image, 70, bundle=b)
    monkeypatch.setattr(tiling, "whole", lambda h, w: False)
    assert codec.compress(image, 70, bundle=b) == beside


def test_a_failing_float_chain_stops_the_encoders_integer_chain(sliced, image, tmp_path):
    """A slice graph that cannot load (a damaged copy opened without verification) fails the
    encode while the integer chain waits for that slice's symbols: the call returns with the
    error and leaves no thread behind."""
    import shutil
    import threading

    _, b = sliced
    shutil.copytree(b.path, tmp_path / "damaged")
    (tmp_path / "damaged" / "slice_mean2.onnx").write_bytes(b"not a graph")
    damaged = Bundle(tmp_path / "damaged", verify=False)
    before = threading.active_count()
    with pytest.raises(Exception, match="(?i)protobuf|load|invalid"):
        codec.compress(image, 70, bundle=damaged)
    assert threading.active_count() == before


def test_hostile_symbols_keep_the_slice_path_bounded(sliced):
    _, b = sliced
    z = np.full((8, 2, 3), 2**23, dtype=np.int64)
    sym = np.full((12, 8, 12), 2**24, dtype=np.int32)
    sym[:, ::2] = -(2**24)
    state = b.scale_state(z, 100)
    for k in range(3):
        idx = b.slice_indexes(k, state, sym)
        assert idx.min() >= 0 and idx.max() < len(tables.SCALE_TABLE)


def _reseal(data: bytes, offset: int, new: bytes) -> bytes:
    body = bytearray(data[:-4])
    body[offset : offset + len(new)] = new
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def test_damaged_slice_stream_is_one_clear_error(sliced, image):
    _, b = sliced
    data = codec.compress(image, 50, bundle=b)
    z_len, y_len = struct.unpack_from("<II", data, 24)
    broken = _reseal(data, 32 + z_len, b"\xff" * y_len)
    try:
        codec.decompress(broken, bundle=b)  # a range coder may also read garbage as valid symbols
    except OnicError as e:
        assert "corrupt" in str(e)


def test_version_1_files_still_decode(bundle, sample_onic):
    """0.2.0 wrote version 1; its y section is the one part of a single-slice model."""
    v1 = _reseal(sample_onic, 4, b"\x01")
    assert codec.read_header(v1).version == 1
    assert np.array_equal(decode_latents(v1, bundle)[2], decode_latents(sample_onic, bundle)[2])


def test_files_of_an_earlier_default_model_name_the_release_that_decodes_them(bundle, sample_onic):
    old = _reseal(sample_onic, 8, bytes.fromhex("e3793b0615dd771e"))  # 0.2.0's default model
    with pytest.raises(OnicError, match="onic 0.2.0"):
        codec.decompress(old, bundle=bundle)
    unknown = _reseal(sample_onic, 8, b"\xaa" * 8)
    with pytest.raises(OnicError, match="model id mismatch") as e:
        codec.decompress(unknown, bundle=bundle)
    assert "release" not in str(e.value)


@pytest.fixture
def data(tmp_path) -> Path:
    """Two small training images."""
    return image_folder(tmp_path / "data", 2, 96, 96)


def test_training_adds_slices_to_a_resumed_model(tmp_path, data):
    from export.train import TrainConfig, load_model, train

    cfg = TrainConfig(data=str(data), crop=64, batch_size=2, N=8, M=12, max_steps=2, out=str(tmp_path / "a"))
    first = train(cfg)
    cfg.resume, cfg.max_steps, cfg.slices, cfg.out = str(first), 4, "4,8", str(tmp_path / "b")
    model, ck = load_model(train(cfg))
    assert model.cfg.slices == (4, 8) and ck["step"] == 4
    assert json.loads(json.dumps(model.cfg.to_dict()))["slices"] == [4, 8]


def test_benchmark_prints_its_table(tmp_path, sliced):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    model, _ = sliced
    save_weights(tmp_path / "sliced.pt", model, 3)
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(96, 64, seed=1).save(folder / "a.png")
    r = subprocess.run([sys.executable, "benchmarks/conditional.py", str(folder), str(tmp_path / "sliced.pt"),
                        "--qualities", "0", "100", "--repeat", "1", "--calibration", str(folder),
                        "--calibration_images", "1", "--megapixels", "0.1"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "BD-rate" in r.stdout and "channel-conditional" in r.stdout


def test_context_only_training_leaves_the_rest_untouched(tmp_path, data):
    from export.train import TrainConfig, load_model, train

    cfg = TrainConfig(data=str(data), crop=64, batch_size=2, N=8, M=12, max_steps=1, out=str(tmp_path / "a"))
    start, _ = load_model(train(cfg))
    cfg.resume, cfg.max_steps, cfg.slices, cfg.context_only = str(tmp_path / "a" / "ckpt.pt"), 4, "4,8", True
    cfg.out, cfg.warmup_steps = str(tmp_path / "b"), 1
    model, _ = load_model(train(cfg))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in start.state_dict().items())
    assert any(v.abs().sum() > 0 for k, v in after.items() if k.startswith("context.") and k.endswith("out.weight"))


def test_scale_bound_lets_gradients_raise_sigma_but_not_sink_it():
    from export.model import SCALE_MIN, scale_lower_bound

    x = torch.tensor([-1.0, 0.05, 0.2, 0.5], requires_grad=True)
    y = scale_lower_bound(x, SCALE_MIN)
    (y * torch.tensor([1.0, -1.0, 1.0, -1.0])).sum().backward()
    assert torch.equal(y.detach(), x.detach().clamp_min(SCALE_MIN))
    # x[0] is below the bound and descent would lower it further: blocked; x[1] would rise: passes.
    assert x.grad.tolist() == [0.0, -1.0, 1.0, -1.0]
