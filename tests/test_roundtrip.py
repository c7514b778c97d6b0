"""Round trips through the real bundle: ONNX graphs in onnxruntime, constriction range coding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import codec
from codec import metrics
from codec.session import Bundle
from tests.conftest import ROOT, random_image

DATA = ROOT / "tests" / "data"

# Measured on the shipped model (onic demo at quality 75) minus a 0.3 dB margin;
# update on purpose whenever the shipped bundle changes.
SAMPLE_PSNR_FLOOR = 34.1


def test_sample_round_trip(sample, sample_onic):
    out = codec.decompress(sample_onic)
    assert out.size == sample.size and out.mode == "RGB"
    assert metrics.psnr(sample, out) > SAMPLE_PSNR_FLOOR
    h = codec.read_header(sample_onic)
    assert (h.width, h.height, h.quality, h.mode) == (256, 256, 75, "RGB")
    assert h.min_file_size == len(sample_onic)  # no chunks for a plain RGB image


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (1000, 7), (7, 65)])
def test_odd_sizes(size, bundle):
    im = random_image(*size)
    out = codec.decompress(codec.compress(im, bundle=bundle), bundle=bundle)
    assert out.size == size and out.mode == "RGB"


def test_grayscale_comes_back_grayscale(sample):
    gray = sample.convert("L")
    out = codec.decompress(codec.compress(gray, quality=90))
    assert out.mode == "L" and out.size == gray.size
    assert metrics.psnr(gray, out) > SAMPLE_PSNR_FLOOR - 3


def test_inputs_numpy_and_path(sample, tmp_path):
    p = tmp_path / "in.png"
    sample.save(p)
    from_path = codec.compress(p, quality=40)
    from_array = codec.compress(np.asarray(sample), quality=40)
    assert from_path == from_array == codec.compress(sample, quality=40)


def test_higher_quality_never_smaller(sample):
    sizes = [len(codec.compress(sample, quality=q)) for q in range(0, 101, 5)]
    assert sizes == sorted(sizes), sizes
    assert sizes[-1] > 1.3 * sizes[0]  # the shipped model spans about 0.37–0.92 bpp on Kodak


def test_decode_is_deterministic_across_thread_counts(sample_onic):
    one = codec.decompress(sample_onic, bundle=Bundle(threads=1))
    two = codec.decompress(sample_onic, bundle=Bundle(threads=2))
    assert np.array_equal(np.asarray(one), np.asarray(two))


def test_encode_is_deterministic(sample):
    assert codec.compress(sample, bundle=Bundle(threads=1)) == codec.compress(sample, bundle=Bundle(threads=2))


def test_float_images_are_refused():
    with pytest.raises(codec.OnicError, match="not supported"):
        codec.compress(Image.new("F", (8, 8)))


@pytest.mark.parametrize("quality", [-1, 101, 50.5, True])
def test_bad_quality(quality, sample):
    with pytest.raises(codec.OnicError, match="quality"):
        codec.compress(sample, quality=quality)


def test_the_previous_releases_files_decode_to_its_pixels():
    """A file onic 0.7.0 wrote (tests/data, made with that release) decodes with this one, to the
    pixels 0.7.0 decoded: 0.8.0 changed only how its graphs compute the same values. Another
    CPU's float kernels may move a handful of pixels by one level (docs/FORMAT.md)."""
    data = (DATA / "parrots-0.7.0.onic").read_bytes()
    assert codec.read_header(data).model_id == "4a3671d07ed71d8b"
    got = np.asarray(codec.decompress(data), dtype=np.int16)
    with Image.open(DATA / "parrots-0.7.0.png") as im:
        want = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 0.01
