"""One file's work for the CLI: compress or decompress, with errors and warnings as data.

Functions here are top-level and take/return plain dataclasses so that
``--jobs N`` can run them in worker processes; each process loads the model
once (codec.session.default_bundle) and reuses it for every file it gets.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from codec.bitstream import OnicError

STDIO = "-"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".avif", ".jxl"}


class Failure(Exception):
    """A user-facing error: one line on stderr."""


@dataclass
class Job:
    src: str  # a path or "-" for stdin
    dst: str  # a path or "-" for stdout
    force: bool = False
    quality: int = 75
    target_bpp: float | None = None
    target_psnr: float | None = None
    verbose: bool = False
    max_pixels: int = 2**28


@dataclass
class Result:
    src: str
    ok: bool
    message: str = ""  # the error, or the -v line
    warnings: list[str] = field(default_factory=list)
    data: bytes | None = None  # output bytes when dst is stdout


def write_atomic(path: Path, write: Callable[[Path], None], force: bool) -> None:
    """Write through a temporary file in the same folder, then rename: no partial outputs."""
    if path.exists() and not force:
        raise Failure(f"{path} exists (use --force to overwrite)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_input(src: str) -> bytes:
    """Bytes of a file, or of stdin for '-'."""
    return sys.stdin.buffer.read() if src == STDIO else Path(src).read_bytes()


def _run(job: Job, work: Callable[[Job], tuple[bytes | None, str]]) -> Result:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data, message = work(job)
            ok = True
        except (OnicError, Failure) as e:
            data, message, ok = None, str(e), False
        except OSError as e:
            data, message, ok = None, f"{e.strerror or e}: {e.filename}" if e.filename else str(e), False
        except MemoryError:
            data, message, ok = None, "out of memory", False
    from codec.api import OnicWarning

    notes = [str(w.message) for w in caught if issubclass(w.category, OnicWarning)]
    return Result(job.src, ok, message, notes, data)


def compress_file(job: Job) -> Result:
    return _run(job, _compress)


def decompress_file(job: Job) -> Result:
    return _run(job, _decompress)


def _compress(job: Job) -> tuple[bytes | None, str]:
    from codec import api, metrics

    source = io.BytesIO(read_input(job.src)) if job.src == STDIO else job.src
    image = api._to_image(source)
    if job.target_bpp is not None or job.target_psnr is not None:
        data, quality = api.compress_to_target(image, bpp=job.target_bpp, psnr=job.target_psnr)
    else:
        data, quality = api.compress(image, job.quality), job.quality
    out = None
    if job.dst == STDIO:
        out = data
    else:
        write_atomic(Path(job.dst), lambda p: p.write_bytes(data), job.force)
    line = ""
    if job.verbose:
        h = api.read_header(data)
        psnr = metrics.psnr(image.convert(h.mode), api.decompress(data))
        line = (f"{job.src} -> {job.dst}: {len(data)} bytes, {8 * len(data) / (h.width * h.height):.4f} bpp, "
                f"PSNR {psnr:.2f} dB at quality {quality}")
    return out, line


def output_format(dst: str, default: str = "PNG") -> str:
    from PIL import Image

    if dst == STDIO:
        return default
    suffix = Path(dst).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE or fmt == "ONIC":
        raise Failure(f"cannot write {dst}: unknown image extension {suffix!r}")
    return fmt


def _decompress(job: Job) -> tuple[bytes | None, str]:
    from codec import api

    fmt = output_format(job.dst)
    image = api.decompress(read_input(job.src), max_pixels=job.max_pixels)
    kwargs = {k: image.info[k] for k in ("icc_profile", "exif") if image.info.get(k)}
    if fmt == "JPEG" and image.mode in ("RGBA", "LA"):
        raise Failure(f"cannot write {job.dst}: JPEG has no alpha channel (use PNG or WebP)")

    def save(target) -> None:
        image.save(target, format=fmt, **kwargs)

    if job.dst == STDIO:
        buf = io.BytesIO()
        save(buf)
        return buf.getvalue(), ""
    write_atomic(Path(job.dst), save, job.force)
    return None, f"{job.src} -> {job.dst}" if job.verbose else ""


def expand_inputs(inputs: tuple[str, ...], suffixes: set[str]) -> list[str]:
    """Files as given; folders become their files with a matching suffix (sorted, not recursive)."""
    out = []
    for item in inputs:
        p = Path(item)
        if item != STDIO and p.is_dir():
            out += [str(f) for f in sorted(p.iterdir()) if f.is_file() and f.suffix.lower() in suffixes]
        else:
            out.append(item)
    return out
