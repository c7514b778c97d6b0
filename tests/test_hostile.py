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
    r = CliRunner().invoke(main, ["decompress", str(src), "-o", str(tmp_path / "out.png"), "--max-pixels", "3072"])
    assert r.exit_code == 0
