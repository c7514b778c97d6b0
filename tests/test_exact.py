"""Bit-exact decoding: the entropy-decoded symbols never depend on float arithmetic."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

import codec
from codec import intconv, intscale, metrics
from codec.api import decode_latents
from codec.session import DEFAULT_BUNDLE, Bundle


class Perturbed(Bundle):
    """The shipped bundle with relative noise on every float graph output (μ, σ, x̂)."""

    def __init__(self, noise: float, seed: int = 0, **kw):
        super().__init__(**kw)
        self.noise, self.rng = noise, np.random.default_rng(seed)

    def run(self, graph, **inputs):
        return [o * (1 + self.rng.uniform(-self.noise, self.noise, o.shape)).astype(o.dtype)
                for o in super().run(graph, **inputs)]


def bundle_with_decoder(tmp_path, convert) -> Bundle:
    """A copy of the shipped bundle whose synthesis graph is converted (fp16, int8); same model id."""
    d = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, d)
    convert(d / "decoder.onnx")
    assert json.loads((d / "manifest.json").read_text())["model_id"] == codec.session.default_bundle().model_id
    return Bundle(d, verify=False)


def to_fp16(path):
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # An int8 synthesis (export/qat.py) keeps its QDQ pairs in float32: QuantizeLinear takes no float16.
    keep = [*DEFAULT_OP_BLOCK_LIST, "QuantizeLinear", "DequantizeLinear"]
    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, op_block_list=keep), str(path))


def to_int8(path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the float convolutions only: those of an int8 synthesis take their weights from a DequantizeLinear
    graph = onnx.load(str(path)).graph
    initializers = {t.name for t in graph.initializer}
    quantized = [n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in initializers]
    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"],
                     nodes_to_exclude=quantized)
    tmp.replace(path)


@pytest.fixture(scope="module")
def reference(sample_onic):
    return decode_latents(sample_onic)


def assert_same_symbols(data, bundle, reference):
    _, z, y = decode_latents(data, bundle)
    assert np.array_equal(z, reference[1]) and np.array_equal(y, reference[2])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("opt", ["disable", "all"])
def test_threads_and_graph_optimization(sample_onic, reference, threads, opt):
    b = Bundle(threads=threads, optimization=opt)
    assert_same_symbols(sample_onic, b, reference)
    codec.decompress(sample_onic, bundle=b)


def test_noise_on_float_outputs(sample_onic, reference, sample):
    b = Perturbed(1e-3)
    assert_same_symbols(sample_onic, b, reference)
    assert metrics.psnr(sample, codec.decompress(sample_onic, bundle=b)) > 20


@pytest.mark.parametrize("convert", [to_fp16, to_int8], ids=["fp16", "int8"])
def test_reduced_precision_synthesis(sample_onic, reference, sample, tmp_path, convert):
    pytest.importorskip("onnx")
    b = bundle_with_decoder(tmp_path, convert)
    assert_same_symbols(sample_onic, b, reference)
    exact = metrics.psnr(sample, codec.decompress(sample_onic))
    assert metrics.psnr(sample, codec.decompress(sample_onic, bundle=b)) > exact - 1.5


def test_integer_convolutions_are_exact():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.integers(-intscale.ACT_MAX, intscale.ACT_MAX + 1, size=(5, 7, 6))
    w = rng.integers(-2047, 2048, size=(4, 5, 3, 3))
    want = torch.nn.functional.conv2d(torch.from_numpy(x)[None].double(), torch.from_numpy(w).double(), padding=1)
    assert np.array_equal(intscale.conv2d(x, w), want[0].numpy().astype(np.int64))
    wt = rng.integers(-2047, 2048, size=(5, 3, 5, 5))
    want = torch.nn.functional.conv_transpose2d(torch.from_numpy(x)[None].double(), torch.from_numpy(wt).double(),
                                                stride=2, padding=2, output_padding=1)
    assert np.array_equal(intscale.conv_transpose2d(x, wt), want[0].numpy().astype(np.int64))


@pytest.mark.parametrize("bound", [128, 129, 2**15])
def test_8bit_integer_convolutions_are_exact_in_one_and_two_digits(bound):
    """onnxruntime's ConvInteger (codec/intconv.py) gives PyTorch's float64 integers, for input that
    fits in one byte (one digit), just does not, and spans int16 (two digits)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(bound)
    x = rng.integers(-bound, bound, size=(6, 9, 7))
    x[0, 0, :2] = -bound, bound - 1
    w = rng.integers(-127, 128, size=(4, 6, 3, 3))
    wt = rng.integers(-127, 128, size=(6, 3, 5, 5))
    assert intconv.engine(w) is not None and intconv.engine(wt, transposed=True) is not None
    t = torch.from_numpy(x)[None].double()
    want = F.conv2d(t, torch.from_numpy(w).double(), padding=1)[0].numpy().astype(np.int64)
    assert np.array_equal(intscale.conv2d(x, w), want)
    want = F.conv_transpose2d(t, torch.from_numpy(wt).double(), stride=2, padding=2, output_padding=1)
    assert np.array_equal(intscale.conv_transpose2d(x, wt), want[0].numpy().astype(np.int64))


def test_integer_path_is_bounded_for_hostile_symbols(bundle):
    """Escape-coded ẑ can be huge in a crafted file: the path clips, stays exact and in range."""
    z = np.full((len(bundle.z_tables), 2, 3), 2**23, dtype=np.int64)
    z[:, 0] = -(2**23)
    idx = np.stack([bundle.scale_indexes(z, q) for q in (0, 100)])
    assert idx.min() >= 0 and idx.max() < len(bundle._tables["scale_table"])


def test_integer_path_bands_equal_the_whole(bundle, monkeypatch):
    """Bands of z rows with their margins give exactly the whole-image indexes."""
    rng = np.random.default_rng(1)
    z = rng.integers(-6, 7, size=(len(bundle.z_tables), 23, 5))
    whole = bundle.scale_indexes(z, 30)
    monkeypatch.setattr(intscale, "BAND", 3)
    assert np.array_equal(bundle.scale_indexes(z, 30), whole)


def test_bands_divide_among_the_workers():
    """Bands cover the rows once, in order; a count that the workers cannot share evenly grows
    its bands to the lower multiple of workers only while a band stays within its cells."""
    from codec.threads import bands

    assert bands(45, 16, 2, width=67, max_cells=16 * 144) == [(0, 23), (23, 45)]  # 12 MP's z
    assert bands(45, 16, 2, width=200, max_cells=16 * 144) == [(0, 15), (15, 30), (30, 45)]  # too wide to grow
    assert bands(45, 16, 1, width=67, max_cells=16 * 144) == [(0, 15), (15, 30), (30, 45)]
    assert bands(91, 16, 2, width=136, max_cells=16 * 144) == [(r, min(91, r + 16)) for r in range(0, 91, 16)]
    assert bands(0, 16, 2) == [] and bands(5, 16, 2) == [(0, 5)]
    rng = np.random.default_rng(4)
    for _ in range(200):
        rows, band, workers, width = (int(v) for v in rng.integers(1, 60, size=4))
        cells = int(rng.integers(0, 3000))
        spans = bands(rows, band, workers, width, cells)
        assert [r for a, b in spans for r in range(a, b)] == list(range(rows))
        assert all(b - a <= band or (b - a) * width <= cells for a, b in spans)


@pytest.mark.parametrize("helpers", [0, 1, 3])
def test_shared_hyper_state_is_the_serial_one(bundle, helpers):
    """The slices' shared state made in channel groups, with other threads taking some of them,
    is hyper_state's, integer for integer (hostile ẑ included: large values clip the same way)."""
    import threading

    rng = np.random.default_rng(2)
    for z in (rng.integers(-6, 7, size=(len(bundle.z_tables), 8, 12)),
              rng.integers(-2**15, 2**15, size=(len(bundle.z_tables), 3, 2))):
        want = intscale.hyper_state(z, bundle._scale_path)
        shared = bundle.shared_scale_state(z, 30)
        threads = [threading.Thread(target=shared.help) for _ in range(helpers)]
        for t in threads:
            t.start()
        got = bundle.scale_state(z, 30, shared)
        for t in threads:
            t.join()
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_a_failed_integer_chain_releases_the_helping_float_chain(sample_onic, monkeypatch):
    """If the integer chain fails before it starts the shared state, the float chain waiting to
    help is released: one error, no hang."""
    import threading

    def fail(*args, **kwargs):
        raise codec.OnicError("the integer chain failed")

    bundle = codec.session.default_bundle()
    monkeypatch.setattr(bundle, "scale_state", fail)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(pytest.raises(codec.OnicError, codec.decompress, sample_onic)),
                         daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive() and outcome and "integer chain failed" in str(outcome[0].value)


def test_hyper_graphs_in_bands_match_the_whole(bundle, monkeypatch):
    from codec import tiling

    rng = np.random.default_rng(2)
    y = (rng.standard_normal((bundle.manifest["config"]["M"], 4 * 29, 12)) * 4).astype(np.float32)
    z_whole = tiling.hyper_encode(bundle, y)
    z_sym = np.round(z_whole).astype(np.int32)
    mu_whole = tiling.hyper_decode(bundle, z_sym, 30)
    monkeypatch.setattr(tiling, "BAND", 4)  # 29 rows of z: bands with the shipped margin, which is their reach
    np.testing.assert_allclose(tiling.hyper_encode(bundle, y), z_whole, atol=1e-4)
    for workers in (1, 2, 3):
        np.testing.assert_allclose(tiling.hyper_decode(bundle, z_sym, 30, workers=workers), mu_whole, atol=1e-4)
    monkeypatch.setattr(tiling, "BAND_MARGIN", 1)  # short of their reach: not the whole
    assert not np.allclose(tiling.hyper_decode(bundle, z_sym, 30), mu_whole, atol=1e-4)


@pytest.mark.parametrize("margin, exact", [(32, True), (16, False)])
def test_tiles_match_the_whole_image(bundle, sample, monkeypatch, margin, exact):
    """Overlapping tiles with the shipped margin reproduce the whole-image transforms; half of it does not."""
    from codec import tiling

    rgb = np.tile(np.asarray(sample.convert("RGB")), (2, 2, 1))[:448, :384]
    gain, inv_gain = bundle.gains(60)
    y_whole, _ = tiling.analyse(bundle, rgb, gain)
    x_whole = tiling.synthesize(bundle, np.round(y_whole), inv_gain, *rgb.shape[:2])
    monkeypatch.setattr(tiling, "TILE", 128)
    monkeypatch.setattr(tiling, "MARGIN", margin)
    y_tiles, _ = tiling.analyse(bundle, rgb, gain)
    x_tiles = tiling.synthesize(bundle, np.round(y_whole), inv_gain, *rgb.shape[:2])
    y_close = np.allclose(y_tiles, y_whole, atol=1e-3)
    x_close = np.abs(x_tiles.astype(int) - x_whole).max() <= 1
    assert (y_close and x_close) == exact


@pytest.mark.parametrize("h, w, window", [(50, 70, (0, 64, 0, 128)), (100, 30, (20, 120, 5, 64)),
                                          (64, 64, (0, 64, 0, 64))])
def test_analysis_window_edge_pads_beyond_the_image(h, w, window):
    """A window reaching past the image repeats its last row and column, scaled to [0, 1]."""
    from codec import tiling

    rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    r0, r1, c0, c1 = window
    rows, cols = np.minimum(np.arange(r0, r1), h - 1), np.minimum(np.arange(c0, c1), w - 1)
    want = rgb[rows[:, None], cols[None, :]].transpose(2, 0, 1)[None].astype(np.float32) / 255
    assert np.array_equal(tiling._window(rgb, *window), want)


def test_non_finite_synthesis_output_gives_defined_pixels():
    """A crafted file can drive the synthesis to NaN or ±inf: they become 0, 0 and 255, and
    finite values round to the nearest level, clipped."""
    from codec import tiling

    x = np.zeros((3, 2, 4), dtype=np.float32)
    x[0, 0] = [np.nan, -np.inf, np.inf, 0.5]
    x[1, 1] = [-0.2, 1.7, 3e38, 127.4 / 255]
    out = np.full((2, 4, 3), 7, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hostile file's overflow must not print a warning
        tiling._to_uint8(x, out)
    assert out[0, :, 0].tolist() == [0, 0, 255, 128]
    assert out[1, :, 1].tolist() == [0, 255, 255, 127]
    assert (out[:, :, 2] == 0).all()


def test_requantize_clip_changes_nothing_up_to_the_largest_shift():
    """Clipping the accumulator keeps int64 from overflowing and equals exact arithmetic (Python ints)."""
    rng = np.random.default_rng(4)
    for shift in (1, 20, intscale.MAX_SHIFT):
        acc = np.concatenate([rng.integers(-(2**62), 2**62, 200), rng.integers(-(2**40), 2**40, 200)])
        mult = rng.integers(2**14, 2**15, 1)
        got = intscale.requantize(acc.reshape(1, 1, -1), mult, np.array([shift]))[0, 0]
        want = [max(-intscale.ACT_MAX, min(intscale.ACT_MAX, (int(a) * int(mult[0]) + (1 << (shift - 1))) >> shift))
                for a in acc]
        assert got.tolist() == want


def _reference_conv2d(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Integer convolution in int64, tap by tap: slow, obviously exact."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    xp = np.pad(x.astype(np.int64), ((0, 0), (p, p), (p, p)))
    out = np.zeros((o, h, wd), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx].astype(np.int64), xp[:, ky : ky + h, kx : kx + wd])
    return out


@pytest.mark.parametrize("c, o, k, h, w", [(144, 96, 3, 32, 48), (7, 5, 3, 1, 1), (3, 4, 5, 2, 9), (16, 8, 3, 300, 4)])
def test_integer_conv2d_is_exact(c, o, k, h, w, monkeypatch):
    """The output-shift convolution equals int64 arithmetic, at the largest values the bit limits allow,
    and across row chunks (a small chunk size forces several)."""
    from codec import intscale

    rng = np.random.default_rng(c + h)
    x = rng.integers(-intscale.ACT_MAX, intscale.ACT_MAX + 1, (c, h, w))
    x[:, ::2] = intscale.ACT_MAX
    weights = rng.integers(-(2**11) + 1, 2**11, (o, c, k, k))
    assert (intscale.conv2d(x, weights) == _reference_conv2d(x, weights)).all()
    monkeypatch.setattr(intscale, "CHUNK_ELEMENTS", 4096)
    assert (intscale.conv2d(x, weights) == _reference_conv2d(x, weights)).all()


def test_parallel_tiles_and_bands_decode_the_same_image():
    """Large images decode on several threads by default; the result is the sequential one
    (identical symbols and integer indexes; pixels within a level of float rounding)."""
    from tests.conftest import random_image

    image = random_image(1100, 1030)
    data = codec.compress(image, 50)
    one, two = Bundle(DEFAULT_BUNDLE, tile_workers=1), Bundle(DEFAULT_BUNDLE, tile_workers=2)
    z = decode_latents(data, one)[1]
    assert (one.scale_indexes(z, 50) == two.scale_indexes(z, 50)).all()
    a = np.asarray(codec.decompress(data, one), dtype=int)
    b = np.asarray(codec.decompress(data, two), dtype=int)
    assert np.abs(a - b).max() <= 1
    # One thread (--threads 1): the tiles and bands, and the chains, in turn.
    alone = Bundle(DEFAULT_BUNDLE, threads=1)
    assert np.abs(np.asarray(codec.decompress(data, alone), dtype=int) - a).max() <= 1
    assert codec.compress(image, 50, bundle=alone) == data


def test_released_arenas_change_nothing():
    """Large images give each graph's arena back once its tiles are done (Bundle.release);
    the next image grows them again and decodes the same pixels."""
    from tests.conftest import random_image

    b = Bundle(DEFAULT_BUNDLE)
    data = codec.compress(random_image(1100, 1030), 50, bundle=b)
    first = np.asarray(codec.decompress(data, b))
    for graph in [p.stem for p in DEFAULT_BUNDLE.glob("*.onnx")]:
        b.release(graph, single_thread=True)  # a session not made yet: nothing to do
        b.session(graph)
        b.release(graph)  # one run on a 1-latent input: every graph takes one
    assert np.array_equal(np.asarray(codec.decompress(data, b)), first)


def _reference_conv_transpose2d(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution (padding k//2, output padding 1) in int64, input pixel by pixel."""
    c, h, wd = x.shape
    o, k = w.shape[1], w.shape[2]
    p = k // 2
    full = np.zeros((o, 2 * h + k, 2 * wd + k), dtype=np.int64)
    for j in range(h):
        for i in range(wd):
            full[:, 2 * j : 2 * j + k, 2 * i : 2 * i + k] += np.einsum("c,cokl->okl", x[:, j, i].astype(np.int64), w)
    return full[:, p : p + 2 * h, p : p + 2 * wd]


@pytest.mark.parametrize("bound", [127, 63])
@pytest.mark.parametrize("c, o, k, h, w", [(144, 96, 3, 32, 48), (7, 5, 3, 1, 1), (3, 4, 5, 2, 9), (16, 8, 1, 300, 4)])
def test_8bit_convolutions_are_exact(c, o, k, h, w, bound, monkeypatch):
    """onnxruntime's ConvInteger (8-bit weights), or its uint8 × int8 MatMulInteger (weights within
    ±63), on the input's two uint8 digits equals int64 arithmetic at the extremes of int16 input and
    of the weights, across row chunks, and is what intscale.conv2d uses for them."""
    from codec import intconv

    rng = np.random.default_rng(c + h)
    x = rng.integers(intconv.X_MIN, intconv.X_MAX + 1, (c, h, w))
    x[:, ::2] = intconv.X_MAX
    x[:, 1::4] = intconv.X_MIN
    weights = rng.integers(-bound, bound + 1, (o, c, k, k))
    weights[:, ::2] = bound
    weights[::3] = -bound
    want = _reference_conv2d(x, weights)
    assert intconv.engine(weights) is not None and intconv.Conv(weights).matrix == (bound <= intconv.S8_MAX)
    assert (intconv.Conv(weights)(x) == want).all() and (intscale.conv2d(x, weights) == want).all()
    last = np.ascontiguousarray(x.transpose(1, 2, 0))  # channels last in and out: the same integers
    assert (intscale.conv2d(last, weights, channels_last=True) == want.transpose(1, 2, 0)).all()
    monkeypatch.setattr(intconv, "CHUNK_BYTES", 1)  # one row per call
    assert (intconv.Conv(weights)(x) == want).all()
    assert (intconv.Conv(weights)(last, channels_last=True) == want.transpose(1, 2, 0)).all()
    for kt in (3, 5):  # one convolution per output phase, on rows of one call each
        wt = rng.integers(-bound, bound + 1, (c, o, kt, kt))
        wt[::2] = -bound
        assert intconv.engine(wt, transposed=True) is not None
        want = _reference_conv_transpose2d(x, wt)
        assert (intscale.conv_transpose2d(x, wt) == want).all()
        assert (intscale.conv_transpose2d(last, wt, channels_last=True) == want.transpose(1, 2, 0)).all()


def test_float64_path_takes_what_8bit_kernels_cannot():
    """12-bit weights, input beyond int16 and kernels the sub-pixel form lacks stay on the float64 path."""
    from codec import intconv

    rng = np.random.default_rng(5)
    assert intconv.engine(rng.integers(-2047, 2048, (4, 3, 3, 3))) is None
    assert intconv.engine(rng.integers(-127, 128, (3, 4, 7, 7)), transposed=True) is None
    assert not intconv.in_range(np.array([2**15]))
    x = rng.integers(-(2**30), 2**30, (3, 4, 5))
    w8 = rng.integers(-127, 128, (4, 3, 3, 3))
    assert (intscale.conv2d(x, w8) == _reference_conv2d(x, w8)).all()
    wt = rng.integers(-127, 128, (3, 2, 5, 5))
    assert (intscale.conv_transpose2d(x, wt) == _reference_conv_transpose2d(x, wt)).all()
    last = x.transpose(1, 2, 0)  # channels last on the float64 path too
    assert (intscale.conv2d(last, w8, channels_last=True) == _reference_conv2d(x, w8).transpose(1, 2, 0)).all()
    want = _reference_conv_transpose2d(x, wt).transpose(1, 2, 0)
    assert (intscale.conv_transpose2d(last, wt, channels_last=True) == want).all()


def test_8bit_graph_is_valid_onnx():
    """The hand-written protobufs of the one-node ConvInteger and MatMulInteger graphs pass onnx's checker."""
    onnx = pytest.importorskip("onnx")
    from codec import intconv

    model = onnx.load_from_string(intconv.conv_integer_model(np.zeros((2, 3, 3, 3), dtype=np.int64)))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["ConvInteger"]
    model = onnx.load_from_string(intconv.matmul_integer_model(np.full((27, 2), -63, dtype=np.int64)))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["MatMulInteger"]
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).dtype == np.int8


def test_shipped_scale_path_runs_on_8bit_kernels_with_the_float64_indexes(bundle, sample_onic, monkeypatch):
    """Every layer of the shipped integer path but the first has 8-bit weights, and forcing them all
    back onto float64 products gives the same state and indexes of every slice."""
    from codec import intconv

    p = bundle._scale_path
    convs = ["w2"] + [n for n in p if n.startswith("k") and n.endswith(("_wf", "_ws", "_w2"))]
    assert intconv.engine(p["w1"], transposed=True) is not None
    assert all(intconv.engine(p[n]) is not None for n in convs)
    header, z, y = decode_latents(sample_onic, bundle)
    state = bundle.scale_state(z, header.quality)
    fast = [bundle.slice_indexes(k, state, y) for k in range(len(bundle.slices))]
    monkeypatch.setattr(intconv, "engine", lambda *a, **k: None)
    state64 = bundle.scale_state(z, header.quality)
    assert np.array_equal(state[0], state64[0]) and np.array_equal(state[1], state64[1])
    assert all(np.array_equal(f, bundle.slice_indexes(k, state64, y)) for k, f in enumerate(fast))


def test_index_lookup_equals_binary_search(bundle):
    """The log-guess index lookup gives binary search's counts: at, just above and just below every
    threshold, at extremes, and for tables that are not geometric, where the guess is far off."""
    rng = np.random.default_rng(2)
    t = bundle._scale_path["thresholds"]
    acc = rng.integers(-(10**6), 2 * int(t.max()), size=(len(t), 3, 3 * t.shape[1]))
    acc[:, 0], acc[:, 1, : t.shape[1]], acc[:, 2, : t.shape[1]] = np.tile(t, 3), t + 1, t - 1
    acc[:, 1, -3:] = [-(2**62), 2**62, 0]
    assert np.array_equal(intscale._to_index(acc, t), intscale._searched(acc, t))
    last = np.ascontiguousarray(acc.transpose(1, 2, 0))
    want = intscale._searched(acc, t).transpose(1, 2, 0)
    assert np.array_equal(intscale._to_index(last, t, channels_last=True), want)
    odd = np.sort(rng.integers(-5, 10**6, size=(8, 64)), axis=1)
    for table in (odd, np.abs(odd) + 1, np.ones((2, 5), dtype=np.int64)):
        acc = rng.integers(-10, 2 * 10**6, size=(len(table), 20, 30))
        want = intscale._searched(acc, table)
        assert np.array_equal(intscale._to_index(acc, table), want)
        got = intscale._to_index(np.ascontiguousarray(acc.transpose(1, 2, 0)), table, channels_last=True)
        assert np.array_equal(got, want.transpose(1, 2, 0))
