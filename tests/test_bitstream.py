"""The container: header fields validated one by one, before any allocation."""

from __future__ import annotations

import struct
import zlib

import pytest

from codec import bitstream
from codec.bitstream import HEADER, Header, OnicError
from codec.intscale import INDEX_PATH_VERSION


def make(**fields) -> bytes:
    """A container built field by field (like Pillow's chunk() helper), CRC fixed up."""
    f = dict(magic=b"ONIC", version=1, mode=3, quality=75, index=INDEX_PATH_VERSION, model_id=bytes(8),
             width=64, height=32, z=b"\0" * 8, y=b"\0" * 16)
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
    assert c.header == h and c.z == b"abcd" and c.y == b"efghijkl" and c.chunks == {}
    assert len(data) == h.min_file_size == 32 + 12 + 4


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack("<4sI", kind, len(data)) + data


def with_chunks(*chunks: bytes, mode: int = 3) -> bytes:
    return make(mode=mode, y=b"\0" * 16 + b"".join(chunks), ylen=16)


def test_chunks_round_trip_and_unknown_ancillary_skipped():
    h = Header("RGBA", 42, "0123456789abcdef", 2, 2, 4, 4)
    chunks = {b"ALPH": zlib.compress(b"\1\2\3\4"), b"iccp": b"profile", b"exif": b"Exif\0\0II"}
    c = bitstream.unpack(bitstream.pack(h, b"abcd", b"efgh", chunks))
    assert c.chunks == chunks
    assert bitstream.inflate_alpha(c.chunks[b"ALPH"], 2, 2) == b"\1\2\3\4"
    assert bitstream.unpack(with_chunks(chunk(b"zzzz", b"later"))).chunks == {}


@pytest.mark.parametrize(
    "data, message",
    [
        (with_chunks(chunk(b"ZZZZ", b"")), "unknown critical chunk ZZZZ"),
        (with_chunks(chunk(b"ab1d", b"")), "not four ASCII letters"),
        (with_chunks(chunk(b"iccp", b"x"), chunk(b"iccp", b"y")), "appears twice"),
        (with_chunks(struct.pack("<4sI", b"iccp", 1000) + b"x"), "claims 1000 bytes"),
        (with_chunks(b"\0\0"), "stray bytes"),
        (with_chunks(mode=4), "needs an ALPH chunk"),
        (with_chunks(chunk(b"ALPH", zlib.compress(bytes(64 * 32)))), "forbids an ALPH chunk"),
        (with_chunks(chunk(b"zzzz", b"a"), chunk(b"zzzz", b"b")), "zzzz appears twice"),
        (with_chunks(chunk(b"ALPH", b"not zlib"), mode=4), "bad ALPH chunk"),
        (with_chunks(chunk(b"ALPH", b"x"), mode=4), "bad ALPH chunk"),
        (with_chunks(chunk(b"ALPH", zlib.compress(bytes(64 * 32)) + b"tail"), mode=4), "4 bytes after"),
        (with_chunks(chunk(b"ALPH", zlib.compress(bytes(64 * 32 - 1))), mode=4), "expected 2048"),
    ],
)
def test_bad_chunks(data, message):
    """Every chunk, the alpha plane's zlib stream included, is checked by unpack: before any entropy decoding."""
    with pytest.raises(OnicError, match=message):
        bitstream.unpack(data)


def test_alpha_bomb_is_bounded():
    bomb = zlib.compress(bytes(10**7))  # 10 MB of zeros in about 10 kB
    with pytest.raises(OnicError, match="expected 2048"):
        bitstream.inflate_alpha(bomb, 64, 32)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(magic=b"RIFF"), "not an .onic file"),
        (dict(version=3), "unsupported format version 3"),
        (dict(version=0), "unsupported format version 0"),
        (dict(mode=5), "mode 5"),
        (dict(quality=101), "quality 101"),
        (dict(index=0), "integer scale path version 0"),
        (dict(index=1), "integer scale path version 1"),  # onic 0.1.0's, which floored in its LeakyReLU
        (dict(index=3), "integer scale path version 3"),
        (dict(width=0), "image size 0x32"),
        (dict(height=0), "image size 64x0"),
        (dict(width=100_000, height=100_000), "exceeds the limit"),
        (dict(z=b"\0" * 5), "multiples of 4"),
        (dict(zlen=2**32 - 4), "truncated file"),
        (dict(ylen=4), "bad chunk"),
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


@pytest.mark.parametrize("width, height", [(65536, 1), (1, 65536), (2**32 - 1, 1)])
def test_side_limit(width, height):
    with pytest.raises(OnicError, match="limit of 65535 pixels per side"):
        bitstream.parse_header(make(width=width, height=height), max_pixels=None)


def test_pixel_limit_counts_the_padded_area():
    """A 65535 × 1 image costs what 65536 × 64 does: the limit counts that."""
    assert bitstream.padded_area(65535, 1) == 65536 * 64
    assert bitstream.padded_area(64, 64) == bitstream.padded_area(1, 1) == 4096
    with pytest.raises(OnicError, match="padded to multiples of 64: 4194304 pixels"):
        bitstream.parse_header(make(width=65535, height=1), max_pixels=65536 * 63)
    assert bitstream.parse_header(make(width=65535, height=1), max_pixels=65536 * 64).width == 65535


def test_pixel_limit_is_configurable():
    data = make(width=1000, height=1000)
    with pytest.raises(OnicError, match="exceeds the limit of 999999 pixels"):
        bitstream.parse_header(data, max_pixels=999_999)
    assert bitstream.parse_header(data, max_pixels=None).width == 1000


@pytest.mark.parametrize(("error", "text"), [
    (ValueError("bad chunk\nsecond line"), "bad chunk"),
    (ValueError("\n  \nthe cause  \n"), "the cause"),  # a plugin's text that opens with blank lines
    (RuntimeError(""), "RuntimeError"),
    (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
])
def test_reason_is_one_nonblank_line(error, text):
    assert bitstream.reason(error) == text
