"""The container: header fields validated one by one, before any allocation."""

from __future__ import annotations

import struct
import zlib

import pytest

from codec import bitstream
from codec.bitstream import HEADER, Header, OnicError


def make(**fields) -> bytes:
    """A container built field by field (like Pillow's chunk() helper), CRC fixed up."""
    f = dict(magic=b"ONIC", version=1, mode=3, quality=75, index=1, model_id=bytes(8), width=64, height=32,
             z=b"\0" * 8, y=b"\0" * 16)
    f.update(fields)
    zlen = f.pop("zlen", len(f["z"]))
    ylen = f.pop("ylen", len(f["y"]))
    head = HEADER.pack(f["magic"], f["version"], f["mode"], f["quality"], f["index"], f["model_id"],
                       f["width"], f["height"], zlen, ylen)
    body = head + f["z"] + f["y"]
    return body + struct.pack("<I", zlib.crc32(body))


def test_pack_unpack_round_trip():
    h = Header("L", 42, "0123456789abcdef", 5, 7, 4, 8)
    data = bitstream.pack(h, b"abcd", b"efghijkl")
    c = bitstream.unpack(data)
    assert c.header == h and c.z == b"abcd" and c.y == b"efghijkl"
    assert len(data) == h.file_size == 32 + 12 + 4


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(magic=b"RIFF"), "not an .onic file"),
        (dict(version=2), "unsupported format version 2"),
        (dict(version=0), "unsupported format version 0"),
        (dict(mode=4), "mode 4"),
        (dict(quality=101), "quality 101"),
        (dict(index=0), "integer scale path version 0"),
        (dict(index=2), "integer scale path version 2"),
        (dict(width=0), "image size 0x32"),
        (dict(height=0), "image size 64x0"),
        (dict(width=100_000, height=100_000), "exceeds the limit"),
        (dict(z=b"\0" * 5), "multiples of 4"),
        (dict(zlen=2**32 - 4), "truncated file"),
        (dict(ylen=4), "trailing data"),
    ],
)
def test_bad_headers(fields, message):
    with pytest.raises(OnicError, match=message):
        bitstream.unpack(make(**fields))


def test_every_truncation_is_refused():
    data = make()
    for n in range(len(data)):
        with pytest.raises(OnicError):
            bitstream.unpack(data[:n])


def test_flipped_bit_fails_the_crc():
    data = bytearray(make())
    data[40] ^= 0x10
    with pytest.raises(OnicError, match="CRC32"):
        bitstream.unpack(bytes(data))


def test_pixel_limit_is_configurable():
    data = make(width=1000, height=1000)
    with pytest.raises(OnicError, match="exceeds the limit of 999999 pixels"):
        bitstream.parse_header(data, max_pixels=999_999)
    assert bitstream.parse_header(data, max_pixels=None).width == 1000
