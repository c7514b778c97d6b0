"""The .onic container: a fixed 32-byte header, two entropy-coded sections, chunks, a CRC32.

Byte layout (all integers little-endian; docs/FORMAT.md is the reference):

    0   4  magic          b"ONIC"
    4   1  version        FORMAT_VERSION
    5   1  mode           1 = L, 2 = LA, 3 = RGB, 4 = RGBA
    6   1  quality        0..100
    7   1  index path     integer scale path version the file needs (INDEX_PATH_VERSION)
    8   8  model id       8 bytes; hex is the bundle's model_id
   16   4  width          ≥ 1
   20   4  height         ≥ 1
   24   4  z length       bytes of the hyperprior section, a multiple of 4
   28   4  y length       bytes of the latent section, a multiple of 4
   32   …  z section, y section
   …    …  chunks: 4-byte type, u32 length, data (PNG's rule: an upper-case
           first letter means critical, a lower-case one means safe to skip)
  end−4 4  crc32          zlib.crc32 of every byte before it

Known chunks: ALPH (critical; the alpha plane, zlib-deflated, exactly width ×
height bytes once inflated), iccp (ICC profile), exif (EXIF block), xmpp (XMP packet).

Everything is validated before any pixel buffer or graph run: a parser that
reads an honest header never allocates more than that header describes, and
the header's size is bounded (``check_size``) before anything else.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from codec.intscale import INDEX_PATH_VERSION

MAGIC = b"ONIC"
FORMAT_VERSION = 2  # 2 (onic 0.3.0): the y section holds one part per slice of the model
READ_VERSIONS = (1, 2)  # a version-1 file is a version-2 file of a single-slice model
HEADER = struct.Struct("<4sBBBB8sIIII")
CHUNK = struct.Struct("<4sI")
CRC = struct.Struct("<I")
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
KNOWN_CHUNKS = {b"ALPH", b"iccp", b"exif", b"xmpp"}
MAX_PIXELS = 2**28  # default limit (about 268 megapixels), like Pillow's decompression-bomb guard
MAX_SIDE = 65535  # widest and tallest image, on both sides of the codec (JPEG's limit)
PAD = 64  # the work of every model grows with the area padded to this grid (the coarsest latent stride)


class OnicError(ValueError):
    """A file that is not a valid .onic stream, or input the codec cannot take."""


def reason(e: BaseException) -> str:
    """An exception as the cause in a one-line message: the OS's words, else the first line of its text."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


@dataclass(frozen=True)
class Header:
    mode: str
    quality: int
    model_id: str  # 16 hex digits
    width: int
    height: int
    z_length: int
    y_length: int
    version: int = FORMAT_VERSION
    index_path: int = INDEX_PATH_VERSION

    @property
    def min_file_size(self) -> int:
        """Size of a file with these sections and no chunks."""
        return HEADER.size + self.z_length + self.y_length + CRC.size


@dataclass(frozen=True)
class Container:
    header: Header
    z: bytes
    y: bytes
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    alpha: bytes | None = None  # the inflated ALPH plane, width × height bytes


def padded_area(width: int, height: int) -> int:
    """Pixels a model works on for an image of this size: each side rounded up to ``PAD``."""
    return -(-width // PAD) * PAD * (-(-height // PAD) * PAD)


def check_size(width: int, height: int, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse a size whose sides exceed ``MAX_SIDE`` or whose padded area exceeds ``max_pixels``.

    The padded area, not width × height, bounds the work: a 4,194,304 × 1 image
    is run as 4,194,304 × 64 pixels.
    """
    if width < 1 or height < 1:
        raise OnicError(f"bad image size {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise OnicError(f"image of {width}x{height} exceeds the limit of {MAX_SIDE} pixels per side")
    if max_pixels is not None and padded_area(width, height) > max_pixels:
        raise OnicError(f"image of {width}x{height} (padded to multiples of {PAD}: {padded_area(width, height)} "
                        f"pixels) exceeds the limit of {max_pixels} pixels")


def pack(header: Header, z: bytes, y: bytes, chunks: dict[bytes, bytes] | None = None) -> bytes:
    mode = {v: k for k, v in MODES.items()}[header.mode]
    parts = [
        HEADER.pack(MAGIC, FORMAT_VERSION, mode, header.quality, header.index_path, bytes.fromhex(header.model_id),
                    header.width, header.height, len(z), len(y)),
        z,
        y,
    ]
    for kind, data in (chunks or {}).items():
        parts += [CHUNK.pack(kind, len(data)), data]
    body = b"".join(parts)
    return body + CRC.pack(zlib.crc32(body))


def accept(prefix: bytes) -> bool:
    """True if the bytes start like an .onic file (for format sniffing)."""
    return prefix[:4] == MAGIC


def parse_header(data: bytes, max_pixels: int | None = MAX_PIXELS) -> Header:
    """Validate and decode the fixed header; needs only the first 32 bytes."""
    if len(data) < 4 or not accept(data):
        raise OnicError("not an .onic file (bad magic)")
    if len(data) < HEADER.size:
        raise OnicError(f"truncated file: {len(data)} bytes, the header alone needs {HEADER.size}")
    magic, version, mode, quality, index_path, model_id, width, height, zlen, ylen = HEADER.unpack_from(data)
    if version not in READ_VERSIONS:
        raise OnicError(f"unsupported format version {version} (this onic reads versions "
                        f"{', '.join(map(str, READ_VERSIONS))})")
    if mode not in MODES:
        raise OnicError(f"bad header: mode {mode} is not 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)")
    if quality > 100:
        raise OnicError(f"bad header: quality {quality} is above 100")
    if index_path != INDEX_PATH_VERSION:
        raise OnicError(f"unsupported integer scale path version {index_path} "
                        f"(this onic runs version {INDEX_PATH_VERSION})")
    if width < 1 or height < 1:
        raise OnicError(f"bad header: image size {width}x{height}")
    check_size(width, height, max_pixels)
    if zlen % 4 or ylen % 4:
        raise OnicError("bad header: section lengths must be multiples of 4")
    return Header(MODES[mode], quality, model_id.hex(), width, height, zlen, ylen, version, index_path)


STREAM_CHUNKS = 2**26  # bytes of chunks beyond an alpha plane's bound that a stream may carry
_BLOCK = 2**20


def read_from(f: BinaryIO, name: str, max_pixels: int | None = MAX_PIXELS) -> bytes:
    """The bytes of an .onic file open for reading, its header checked on the first 32 bytes
    before the rest is read: anything else fails there, however large.

    A stream whose size is not known beforehand (stdin, a pipe, a device) is read no
    further than its header allows: the sections, an alpha plane's deflate bound and
    ``STREAM_CHUNKS`` bytes of other chunks (`onic decompress /dev/zero` read until
    memory ran out). OSError is the caller's.
    """
    head = f.read(HEADER.size)
    if not isinstance(head, (bytes, bytearray)):
        raise OnicError(f"{name} is a text stream: open it in binary mode ('rb')")
    header = parse_header(head, max_pixels)
    try:
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, AttributeError):  # an in-memory file (io.UnsupportedOperation is an OSError): its size is known
        regular = True
    if regular:
        return head + f.read()
    pixels = header.width * header.height
    limit = header.min_file_size + pixels + pixels // 1000 + 2**16 + STREAM_CHUNKS
    data = read_bounded(f, head, limit)
    if data is None:
        raise OnicError(f"{name} goes on past the {limit} bytes its header allows")
    return data


def read_bounded(f: BinaryIO, head: bytes, limit: int | None) -> bytes | None:
    """``head`` and the rest of ``f``, or None as soon as they go on past ``limit`` bytes (None: no
    limit): a stream is never read more than one byte beyond it, however long it is."""
    blocks, size = [head], len(head)
    while block := f.read(_BLOCK if limit is None else min(_BLOCK, limit + 1 - size)):
        blocks.append(block)
        size += len(block)
        if limit is not None and size > limit:
            return None
    return b"".join(blocks)


def _parse_chunks(region: bytes) -> dict[bytes, bytes]:
    chunks: dict[bytes, bytes] = {}
    seen: set[bytes] = set()
    pos = 0
    while pos < len(region):
        if len(region) - pos < CHUNK.size:
            raise OnicError(f"bad chunk: {len(region) - pos} stray bytes after the sections")
        kind, length = CHUNK.unpack_from(region, pos)
        if not kind.isalpha() or not kind.isascii():
            raise OnicError(f"bad chunk: type {kind!r} is not four ASCII letters")
        if length > len(region) - pos - CHUNK.size:
            raise OnicError(f"bad chunk: {kind.decode()} claims {length} bytes, the file has fewer")
        if kind in seen:
            raise OnicError(f"bad chunk: {kind.decode()} appears twice")
        seen.add(kind)
        if kind not in KNOWN_CHUNKS and kind[:1].isupper():
            raise OnicError(f"unknown critical chunk {kind.decode()} (needs a newer onic)")
        if kind in KNOWN_CHUNKS:
            chunks[kind] = region[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
    return chunks


def unpack(data: bytes, max_pixels: int | None = MAX_PIXELS) -> Container:
    """Validate the whole file (header, lengths, CRC, chunks) and split it into parts."""
    header = parse_header(data, max_pixels)
    if len(data) < header.min_file_size:
        raise OnicError(f"truncated file: {len(data)} bytes, the header describes at least {header.min_file_size}")
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(data[: -CRC.size]) != crc:
        raise OnicError("corrupt file: CRC32 mismatch")
    z_end = HEADER.size + header.z_length
    y_end = z_end + header.y_length
    chunks = _parse_chunks(data[y_end : -CRC.size])
    if (b"ALPH" in chunks) != (header.mode in ("LA", "RGBA")):
        raise OnicError(f"bad file: mode {header.mode} {'needs' if 'A' in header.mode else 'forbids'} an ALPH chunk")
    # The alpha plane is checked here, before any entropy decoding: a bad chunk costs nothing.
    alpha = inflate_alpha(chunks[b"ALPH"], header.width, header.height) if b"ALPH" in chunks else None
    return Container(header, data[HEADER.size : z_end], data[z_end:y_end], chunks, alpha)


def inflate_alpha(chunk: bytes, width: int, height: int) -> bytes:
    """The alpha plane, refusing to inflate beyond the width × height the header states."""
    d = zlib.decompressobj()
    try:
        plane = d.decompress(chunk, width * height + 1)
    except zlib.error as e:
        raise OnicError(f"bad ALPH chunk: {e}") from None
    if len(plane) != width * height or not d.eof:
        raise OnicError(f"bad ALPH chunk: inflates to {len(plane)}+ bytes, expected {width * height}")
    if d.unused_data:
        raise OnicError(f"bad ALPH chunk: {len(d.unused_data)} bytes after its zlib stream")
    return plane
