"""Hostile and broken input: every failure is OnicError → exit 2 with one line, nothing else."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec
from codec.api import decode_latents
from codec.cli import main

_small: bytes | None = None


def small_file() -> bytes:
    """A real file of a 64×48 image: short enough to try every truncation."""
    global _small
    if _small is None:
        from tests.conftest import random_image

        _small = codec.compress(random_image(64, 48), quality=10)
    return _small


def fix_crc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def cli_decompress(tmp_path, data: bytes):
    src = tmp_path / "in.onic"
    src.write_bytes(data)
    result = CliRunner().invoke(main, ["decompress", str(src), "-o", str(tmp_path / "out.png"), "--force"])
    return result


def assert_clean_failure(result, tmp_path):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onic: error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_every_truncation(tmp_path):
    data = small_file()
    for n in range(len(data)):
        assert_clean_failure(cli_decompress(tmp_path, data[:n]), tmp_path)


def test_random_single_bit_flips(tmp_path):
    data = small_file()
    rng = np.random.default_rng(0)
    for bit in rng.choice(8 * len(data), size=min(400, 8 * len(data)), replace=False):
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        assert_clean_failure(cli_decompress(tmp_path, bytes(b)), tmp_path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes(data):
    with pytest.raises(codec.OnicError):
        codec.decompress(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_valid_crc_garbage_sections(data):
    """A crafted file: header and CRC valid, sections random. It decodes to garbage or fails cleanly."""
    good = small_file()
    head = good[:32]
    z = data.draw(st.binary(min_size=0, max_size=64).map(lambda b: b[: len(b) // 4 * 4]))
    y = data.draw(st.binary(min_size=0, max_size=512).map(lambda b: b[: len(b) // 4 * 4]))
    head = head[:24] + struct.pack("<II", len(z), len(y))
    crafted = fix_crc(head + z + y + b"\0\0\0\0")
    try:
        _, z_sym, y_sym = decode_latents(crafted)
    except codec.OnicError:
        return
    assert np.abs(z_sym).max() < 2**25 and np.abs(y_sym).max() < 2**25
    image = codec.decompress(crafted)
    assert image.size == (64, 48)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 35), st.integers(0, 255))
def test_header_byte_changes_with_valid_crc(offset, value):
    b = bytearray(small_file())
    b[offset] = value
    crafted = fix_crc(bytes(b))
    try:
        codec.decompress(crafted)
    except codec.OnicError:
        pass


def test_absurd_dimensions_are_refused_before_any_work(tmp_path):
    b = bytearray(small_file())
    b[16:24] = struct.pack("<II", 100_000, 100_000)
    result = cli_decompress(tmp_path, fix_crc(bytes(b)))
    assert_clean_failure(result, tmp_path)
    assert "exceeds the limit" in result.stderr


def test_pixel_limit_option(tmp_path):
    src = tmp_path / "in.onic"
    src.write_bytes(small_file())
    r = CliRunner().invoke(main, ["decompress", str(src), "-o", str(tmp_path / "out.png"), "--max-pixels", "1000"])
    assert_clean_failure(r, tmp_path)
    assert "limit of 1000 pixels" in r.stderr
    # 64 × 48 is padded to 64 × 64 for the model: the limit counts the 4096 pixels of work.
    r = CliRunner().invoke(main, ["decompress", str(src), "-o", str(tmp_path / "out.png"), "--max-pixels", "4095"])
    assert_clean_failure(r, tmp_path)
    r = CliRunner().invoke(main, ["decompress", str(src), "-o", str(tmp_path / "out.png"), "--max-pixels", "4096"])
    assert r.exit_code == 0


def crafted(width: int, height: int, z: bytes = b"", y: bytes = b"", mode: int = 3, chunks: bytes = b"") -> bytes:
    """A file of the default model with a valid CRC, any size and any sections."""
    head = bytearray(small_file()[:32])
    head[5] = mode
    head[16:32] = struct.pack("<IIII", width, height, len(z), len(y))
    return fix_crc(bytes(head) + z + y + chunks + b"\0\0\0\0")


@pytest.mark.parametrize("width, height", [(16384, 16384), (65535, 64), (4096, 4096), (300, 200)])
def test_sections_too_short_for_the_image_are_refused_before_decoding(width, height, monkeypatch):
    """Empty or tiny sections cannot hold a large image: refused from the header, nothing decoded."""
    import codec.tiling

    monkeypatch.setattr(codec.tiling, "hyper_decode", lambda *a: pytest.fail("ran a graph"))
    for z, y in [(b"", b""), (b"\0" * 8, b"\0" * 8)]:
        with pytest.raises(codec.OnicError, match="truncated file: the hyperprior section"):
            codec.decompress(crafted(width, height, z, y))


def test_reading_past_a_sections_end_is_an_error():
    """A real z section with its y section cut short: the range decoder would read zeros past the end.

    The check counts information against the section's bits plus 96 of slack (docs/FORMAT.md), so
    the last cut takes 32 bytes: a cut of 12 bytes or less (within the slack) can decode unnoticed,
    and 16 is borderline (measured once: caught or not by the model's last symbols). Only the CRC catches those."""
    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    good = codec.compress(image, 50)
    h = codec.read_header(good)
    z = good[32 : 32 + h.z_length]
    y = good[32 + h.z_length : 32 + h.z_length + h.y_length]
    for cut in (0, 4, len(y) // 8 * 4, len(y) - 32):
        with pytest.raises(codec.OnicError, match="stream ends early|truncated file|corrupt entropy-coded data"):
            decode_latents(crafted(256, 256, z, y[:cut]))
    for cut in (0, 4, len(z) // 8 * 4):
        with pytest.raises(codec.OnicError, match="stream ends early|truncated file|corrupt entropy-coded data"):
            decode_latents(crafted(256, 256, z[:cut], y))


def test_flat_images_decode_however_short_their_sections():
    """The room check never refuses a real file: flat and tiny images code to a few words."""
    for shape in [(1, 1, 3), (3, 7, 3), (64, 64, 3), (130, 300, 3)]:
        for value in (0, 128, 255):
            for q in (0, 100):
                image = np.full(shape, value, dtype=np.uint8)
                assert codec.decompress(codec.compress(image, q)).size == (shape[1], shape[0])


@pytest.mark.parametrize("alph", [b"x", b"", zlib.compress(b"\0" * 10) + b"junk"])
def test_bad_alpha_is_refused_before_entropy_decoding(alph, monkeypatch):
    """A 45-byte RGBA file of a huge image with a broken ALPH chunk fails on the chunk, at once."""
    import codec.entropy

    monkeypatch.setattr(codec.entropy.Decoder, "read", lambda *a: pytest.fail("entropy decoding ran"))
    data = crafted(16384, 16384, mode=4, chunks=struct.pack("<4sI", b"ALPH", len(alph)) + alph)
    with pytest.raises(codec.OnicError, match="bad ALPH chunk"):
        codec.decompress(data)


def test_plugin_honours_pillows_bomb_limit_on_the_padded_area(monkeypatch):
    import io

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)
    data = crafted(60_000, 1)  # 60,000 pixels, but 60,032 × 64 of work
    with pytest.raises(Image.DecompressionBombError, match="padded"):
        Image.open(io.BytesIO(data))


def test_plugin_load_raises_oserror():
    import io

    from PIL import Image

    b = bytearray(small_file())
    b[40] ^= 0xFF
    with Image.open(io.BytesIO(bytes(b))) as im, pytest.raises(OSError, match="CRC32"):
        im.load()


def test_compress_refuses_a_huge_padded_area_before_reading_pixels(tmp_path, monkeypatch):
    """An 8.8 kB PNG of 3,000,000 × 1 pixels is refused from its size, before Pillow decodes it."""
    from PIL import Image, ImageFile

    path = tmp_path / "wide.png"
    Image.new("RGB", (3_000_000, 1)).save(path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were read"))
    with pytest.raises(codec.OnicError, match="per side"):
        codec.compress(path)
    Image.new("RGB", (60_000, 1)).save(path)
    with pytest.raises(codec.OnicError, match="limit of 1000000 pixels"):
        codec.compress(path, max_pixels=1_000_000)
