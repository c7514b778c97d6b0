"""The .onic container: a fixed 32-byte header, two entropy-coded sections, a CRC32.

Byte layout (all integers little-endian; docs/FORMAT.md is the reference):

    0   4  magic          b"ONIC"
    4   1  version        FORMAT_VERSION
    5   1  mode           1 = grayscale (L), 3 = RGB
    6   1  quality        0..100
    7   1  index path     integer scale path version the file needs (INDEX_PATH_VERSION)
    8   8  model id       8 bytes; hex is the bundle's model_id
   16   4  width          ≥ 1
   20   4  height         ≥ 1
   24   4  z length       bytes of the hyperprior section, a multiple of 4
   28   4  y length       bytes of the latent section, a multiple of 4
   32   …  z section, y section
  end−4 4  crc32          zlib.crc32 of every byte before it

Everything is validated before any pixel buffer or graph run: a parser that
reads an honest header never allocates more than that header describes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from codec.intscale import INDEX_PATH_VERSION

MAGIC = b"ONIC"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBBB8sIIII")
CRC = struct.Struct("<I")
MODES = {1: "L", 3: "RGB"}
MAX_PIXELS = 2**28  # default limit (about 268 megapixels), like Pillow's decompression-bomb guard


class OnicError(ValueError):
    """A file that is not a valid .onic stream, or input the codec cannot take."""


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
    def file_size(self) -> int:
        return HEADER.size + self.z_length + self.y_length + CRC.size


@dataclass(frozen=True)
class Container:
    header: Header
    z: bytes
    y: bytes


def pack(header: Header, z: bytes, y: bytes) -> bytes:
    mode = {v: k for k, v in MODES.items()}[header.mode]
    head = HEADER.pack(
        MAGIC, FORMAT_VERSION, mode, header.quality, header.index_path, bytes.fromhex(header.model_id),
        header.width, header.height, len(z), len(y),
    )
    body = head + z + y
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
    if version != FORMAT_VERSION:
        raise OnicError(f"unsupported format version {version} (this onic reads version {FORMAT_VERSION})")
    if mode not in MODES:
        raise OnicError(f"bad header: mode {mode} is not 1 (grayscale) or 3 (RGB)")
    if quality > 100:
        raise OnicError(f"bad header: quality {quality} is above 100")
    if index_path != INDEX_PATH_VERSION:
        raise OnicError(f"unsupported integer scale path version {index_path} "
                        f"(this onic runs version {INDEX_PATH_VERSION})")
    if width < 1 or height < 1:
        raise OnicError(f"bad header: image size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise OnicError(f"image of {width}x{height} exceeds the limit of {max_pixels} pixels")
    if zlen % 4 or ylen % 4:
        raise OnicError("bad header: section lengths must be multiples of 4")
    return Header(MODES[mode], quality, model_id.hex(), width, height, zlen, ylen, version, index_path)


def unpack(data: bytes, max_pixels: int | None = MAX_PIXELS) -> Container:
    """Validate the whole file (header, lengths, CRC) and split it into sections."""
    header = parse_header(data, max_pixels)
    if len(data) != header.file_size:
        what = "truncated file" if len(data) < header.file_size else "trailing data"
        raise OnicError(f"{what}: {len(data)} bytes, the header describes {header.file_size}")
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(data[: -CRC.size]) != crc:
        raise OnicError("corrupt file: CRC32 mismatch")
    z_end = HEADER.size + header.z_length
    return Container(header, data[HEADER.size : z_end], data[z_end : z_end + header.y_length])
