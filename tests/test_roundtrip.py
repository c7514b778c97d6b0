"""Round trips through the real bundle: ONNX graphs in onnxruntime, constriction range coding."""

from __future__ import annotations

import re
import threading
import warnings

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


@pytest.mark.parametrize(("mode", "trns", "back"), [("RGB", (0, 0, 0), "RGBA"), ("L", 0, "LA"), ("I;16", 0, "LA"),
                                                    ("RGB", (1, 2, 3), "RGB")])
def test_a_transparent_colour_comes_back_as_alpha(tmp_path, mode, trns, back):
    """A PNG's tRNS makes one colour transparent; it was dropped, and the hidden pixels showed. A colour
    that no pixel has leaves the image as it was."""
    a = np.zeros((20, 30), dtype=np.uint16 if mode == "I;16" else np.uint8)
    a[5:15, 5:25] = 50000 if mode == "I;16" else 200
    image = Image.fromarray(a) if mode != "RGB" else Image.fromarray(np.repeat(a[..., None], 3, axis=2))
    image.save(tmp_path / "t.png", transparency=trns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", codec.OnicWarning)  # I;16: reduced to 8 bits
        out = codec.decompress(codec.compress(str(tmp_path / "t.png")))
    assert out.mode == back
    if back.endswith("A"):
        assert np.array_equal(np.asarray(out.getchannel("A")) == 0, a == 0)


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


def test_one_thread_codes_on_the_calling_thread(sample, sample_onic):
    """A bundle of one thread (``onic … --threads 1``, Ray's actors) starts no thread: the decoder's
    two chains run in turn, the encoder's too, to the same bytes and pixels."""
    started: set[str] = set()
    one = Bundle(threads=1)
    threading.setprofile(lambda *_: started.add(threading.current_thread().name))
    try:
        data = codec.compress(sample, bundle=one)
        image = codec.decompress(sample_onic, bundle=one)
    finally:
        threading.setprofile(None)
    assert started <= {threading.main_thread().name}
    assert data == sample_onic
    assert np.array_equal(np.asarray(image), np.asarray(codec.decompress(sample_onic)))


def test_float_images_are_refused():
    with pytest.raises(codec.OnicError, match="not supported"):
        codec.compress(Image.new("F", (8, 8)))


@pytest.mark.parametrize("quality", [-1, 101, 50.5, True])
def test_bad_quality(quality, sample):
    with pytest.raises(codec.OnicError, match="quality"):
        codec.compress(sample, quality=quality)


@pytest.mark.parametrize(("release", "model_id"), [("0.7.0", "4a3671d07ed71d8b"), ("0.15.0", "31341257384d06f6"),
                                                ("0.16.0", "89d8131d6e1d7e99"), ("0.17.0", "7895250cf0f9464f")])
def test_an_earlier_releases_file_is_refused_naming_that_release(release, model_id):
    """Each retrained model has new symbols (0.15.0's to 0.18.0's), unlike the re-exports of one
    encoder and entropy model that 0.7.0 to 0.14.0 shipped. A file of an earlier release
    (tests/data: the sample's top-left 160×112 at quality 60) is refused in one line that names
    the release to decode it with."""
    data = (DATA / f"parrots-{release}.onic").read_bytes()
    assert codec.read_header(data).model_id == model_id
    hint = rf"onic {re.escape(release)}: decode it with that release"
    with pytest.raises(codec.OnicError, match=rf"^model id mismatch: .*{hint}"):
        codec.decompress(data)
