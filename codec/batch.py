"""One file's work for the CLI: compress or decompress, with errors and warnings as data.

Functions here are top-level and take/return plain dataclasses so that
``--jobs N`` can run them in worker processes; each process loads a model
once (codec.session.bundle_at) and reuses it for every file it gets.

Outputs never appear half-written: they are written to a temporary file in
the destination folder and moved into place, without replacing an existing
file unless asked (a hard link, which fails if the name exists, even as a
dangling symlink). Every error names the user's paths, never the temporary one.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from codec import formats
from codec.bitstream import MAX_PIXELS, OnicError, read_bounded
from codec.bitstream import reason as _reason

MAX_REFINE_STEPS = 1000  # codec.refine's limit, kept here so that the CLI knows it without importing the runtime

STDIO = "-"
STDIN_NAME = "<stdin>"
# What a folder given to compress contributes (case aside): the photo and web formats, and the rest of
# what Pillow reads that cameras and browsers save (.jfif from a browser's "save image").
IMAGE_SUFFIXES = {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".jxl", ".heic", ".heif", ".hif", ".tga", ".qoi", ".jp2"}
LOSSY_OUTPUTS = {"JPEG", "WEBP", "AVIF", "JXL", "HEIF", "PDF"}  # PDF: Pillow puts RGB and gray in as JPEG
# Formats that Pillow writes without the alpha channel of an RGBA or LA image, silently (PPM) or not.
NO_ALPHA = {"JPEG": "JPEG", "GIF": "GIF, as Pillow writes it,", "PPM": "PPM"}
ICO_MAX = 256  # the largest side an ICO directory entry holds
DEFAULT_OUTPUT_QUALITY = 95  # for lossy output formats: Pillow's defaults (75, 80) would lose visibly more


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
    max_pixels: int | None = MAX_PIXELS
    psnr: bool = False  # compress: decode the output and report its PSNR (costs a decode)
    refine: int = 0  # compress: gradient steps on the latents (codec/refine.py)
    metadata: tuple[str, ...] | None = None  # compress: the metadata kinds kept (api.METADATA); None: all
    output_quality: int = DEFAULT_OUTPUT_QUALITY  # decompress: quality of lossy output formats
    stdout_format: str = "png"  # decompress: the extension whose format goes to stdout ('-o -')
    model: str | None = None  # a bundle folder; None is the shipped model
    threads: int = 0  # threads the coding uses (codec.session.Bundle's); 0 = every core
    debug: bool = False  # put the traceback of an unexpected error in the message


@dataclass
class Result:
    src: str
    ok: bool
    message: str = ""  # the error, or the -v line
    warnings: list[str] = field(default_factory=list)
    data: bytes | None = None  # output bytes when dst is stdout


def display(path: str) -> str:
    """A path as messages show it: '-' is stdin."""
    return STDIN_NAME if path == STDIO else path


_umask: int | None = None


def _new_file_mode() -> int:
    """0o666 less the process umask, as open() would create a file."""
    global _umask
    if _umask is None:
        _umask = os.umask(0)
        os.umask(_umask)
    return 0o666 & ~_umask


def _place(tmp: Path, path: Path, force: bool) -> None:
    """Move the finished temporary file to ``path``; without ``force``, never over an existing name."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if the name exists (a dangling symlink included)
    except FileExistsError:
        raise Failure(f"{path} exists (use --force to overwrite)") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # No hard links here (some network and FAT file systems): reserve the name exclusively.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise Failure(f"{path} exists (use --force to overwrite)") from None
        os.replace(tmp, path)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block is done, then act on the first that came.

    For the steps that create, place and remove a temporary file: an interruption between
    them left a ``.onic-*.tmp`` behind (a signal sent as the output appeared, about one run
    in 60 of tests/test_failures.py's signal tests on a busy machine). Python runs signal
    handlers in the main thread only; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, object]] = []
    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not None:  # None: installed outside Python
            previous[sig] = signal.signal(sig, lambda n, frame: caught.append((n, frame)))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            sig, frame = caught[0]
            handler = previous[sig]
            if callable(handler):
                handler(sig, frame)  # KeyboardInterrupt, or the CLI's exception for SIGTERM and SIGHUP
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


_temp_owner = os.getpid()  # whose run the temporaries belong to: a pool's workers take their main process's


def adopt_temporaries(owner: int) -> None:
    """Name this process's temporaries after ``owner`` (a worker pool's main process), so that
    it can remove those of a worker that was killed mid-write (remove_temporaries)."""
    global _temp_owner
    _temp_owner = owner


def _temp_prefix(owner: int) -> str:
    return f".onic-{owner}-"


def remove_temporaries(folders: set[Path], owner: int) -> None:
    """Remove the temporaries of ``owner``'s run left in ``folders`` (by a SIGKILL'd worker: the
    others remove their own). Another run's, with its own owner in the name, stay."""
    for folder in folders:
        try:
            for tmp in folder.glob(f"{_temp_prefix(owner)}*.tmp"):
                tmp.unlink(missing_ok=True)
        except OSError:  # the folder went away, or cannot be listed: nothing more to do
            pass


def write_atomic(path: Path, write: Callable[[Path], None], force: bool) -> None:
    """Write through a temporary file in the same folder, then move it into place: no partial outputs.

    A new file gets the umask's permissions; an overwritten one keeps its own.
    The temporary file is removed on every failure and interruption (the CLI
    turns SIGTERM and SIGHUP into exceptions for that; the steps that create,
    place and remove it hold signals until they are done).
    """
    if not force and os.path.lexists(path):
        raise Failure(f"{path} exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Failure(f"cannot create the folder of {path}: {_reason(e)}") from None
    tmp: Path | None = None
    try:
        try:
            mode = os.stat(path).st_mode & 0o7777 if force and path.exists() else _new_file_mode()
            with _uninterrupted():
                fd, name = tempfile.mkstemp(prefix=_temp_prefix(_temp_owner), suffix=".tmp", dir=path.parent)
                os.close(fd)
                tmp = Path(name)
        except OSError as e:
            raise Failure(f"cannot write {path}: {_reason(e)}") from None
        try:
            write(tmp)
            os.chmod(tmp, mode)
            with _uninterrupted():  # the output appears and the temporary goes in one step
                _place(tmp, path, force)
                tmp.unlink(missing_ok=True)
        except (Failure, OnicError, MemoryError):
            raise
        except Exception as e:  # Pillow's encoders raise OSError, ValueError, KeyError, struct.error…
            raise Failure(f"cannot write {path}: {_reason(e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def read_onic(src: str, max_pixels: int | None = MAX_PIXELS) -> bytes:
    """An .onic file's bytes (a path, or stdin for '-'), read as bitstream.read_from does: the
    header first, a stream no further than its header allows."""
    from codec.bitstream import read_from

    try:
        if src == STDIO:
            return read_from(sys.stdin.buffer, display(src), max_pixels)
        with open(src, "rb") as f:
            return read_from(f, display(src), max_pixels)
    except OSError as e:
        raise Failure(f"cannot read {display(src)}: {_reason(e)}") from None


IMAGE_PREFIX = 2**20  # bytes of a streamed image read before deciding whether it is one
IMAGE_BYTES_PER_PIXEL, IMAGE_SLACK = 8, 2**26  # a streamed image's bound: 16-bit RGBA, uncompressed, and metadata


def read_image_stream(f: BinaryIO, name: str, max_pixels: int | None = MAX_PIXELS) -> bytes:
    """An image's bytes from a stream of unknown length (stdin, a pipe): a prefix first, which must
    look like an image Pillow reads, then no more than an image of ``max_pixels`` could need
    (``IMAGE_BYTES_PER_PIXEL`` each and ``IMAGE_SLACK`` of metadata; unbounded for None), so
    that `cat /dev/zero | onic compress -` fails at once instead of reading until memory runs out.
    OSError is the caller's."""
    data = f.read(IMAGE_PREFIX)
    if len(data) < IMAGE_PREFIX:
        return data  # the whole stream
    if not _looks_like_an_image(data):
        raise Failure(f"cannot identify an image in {name}: its first {IMAGE_PREFIX} bytes are no format "
                      "Pillow reads")
    limit = None if max_pixels is None else max_pixels * IMAGE_BYTES_PER_PIXEL + IMAGE_SLACK
    whole = read_bounded(f, data, limit)
    if whole is None:
        raise Failure(f"{name} goes on past {limit} bytes, more than an image of --max-pixels {max_pixels} needs")
    return whole


def _looks_like_an_image(prefix: bytes) -> bool:
    """Whether Pillow opens the prefix (most formats read only their headers), or one of its formats
    claims the first bytes (WebP, which Pillow decodes whole; a TIFF whose directory lies further on)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(prefix)):
                return True
        except Exception:  # any failure here only means: look at the magic numbers
            pass
    Image.init()
    return any(accept is not None and accept(prefix[:16]) for _, accept in Image.OPEN.values())


def read_input(src: str, max_pixels: int | None = MAX_PIXELS) -> bytes:
    """Bytes of an image file, or of stdin for '-' (as read_image_stream reads it)."""
    try:
        return read_image_stream(sys.stdin.buffer, display(src), max_pixels) if src == STDIO else Path(src).read_bytes()
    except OSError as e:
        raise Failure(f"cannot read {display(src)}: {_reason(e)}") from None


def _run(job: Job, work: Callable[[Job], tuple[bytes | None, str]]) -> Result:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data, message = work(job)
            ok = True
        except (OnicError, Failure) as e:
            data, message, ok = None, str(e), False
        except OSError as e:
            data, message, ok = None, f"{_reason(e)}: {e.filename or display(job.src)}", False
        except MemoryError:
            data, message, ok = None, "out of memory", False
        except Exception as e:  # a bug: still one line, unless --debug asks for the traceback
            data, ok = None, False
            message = (f"internal error: {type(e).__name__}: {e}\n{traceback.format_exc().rstrip()}" if job.debug
                       else f"internal error: {type(e).__name__}: {e} (onic --debug shows the traceback)")
    from codec.api import OnicWarning

    notes = [str(w.message) for w in caught if issubclass(w.category, OnicWarning)]
    return Result(display(job.src), ok, message, notes, data)


def compress_file(job: Job) -> Result:
    return _run(job, _compress)


def decompress_file(job: Job) -> Result:
    return _run(job, _decompress)


def _compress(job: Job) -> tuple[bytes | None, str]:
    from codec import api
    from codec.session import bundle_at

    bundle = bundle_at(job.model, job.threads)
    source = io.BytesIO(read_input(job.src, job.max_pixels)) if job.src == STDIO else job.src
    image = api._to_image(source, job.max_pixels, name=display(job.src))
    if job.target_bpp is not None or job.target_psnr is not None:
        data, quality = api.compress_to_target(image, bpp=job.target_bpp, psnr=job.target_psnr, bundle=bundle,
                                               max_pixels=job.max_pixels, refine=job.refine, metadata=job.metadata)
    else:
        data = api.compress(image, job.quality, bundle, job.max_pixels, refine=job.refine, metadata=job.metadata)
        quality = job.quality
    out = None
    if job.dst == STDIO:
        out = data
    else:
        write_atomic(Path(job.dst), lambda p: p.write_bytes(data), job.force)
    line = ""
    if job.verbose or job.psnr:
        h = api.read_header(data, None)
        line = (f"{display(job.src)} -> {display(job.dst)}: {len(data)} bytes, "
                f"{8 * len(data) / (h.width * h.height):.4f} bpp at quality {quality}")
        if job.psnr:
            line += f", PSNR {api.psnr_of(image, data, bundle):.2f} dB"
    return out, line


def output_format(dst: str, default: str = "PNG") -> str:
    """The Pillow format that writes ``dst``, judged by its extension."""
    from PIL import Image

    if dst == STDIO:
        return default
    suffix = Path(dst).suffix.lower()
    if not suffix:
        raise Failure(f"cannot write {dst}: it has no extension to choose the image format by ({dst}.png, .webp, …)")
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None and formats.register():  # JPEG XL, HEIF: their plugins register on first need
        fmt = Image.registered_extensions().get(suffix)
    if fmt == "ONIC":
        raise Failure(f"cannot write {dst}: decompress writes images (.png, .webp, …), not .onic")
    if fmt is None or fmt not in Image.SAVE:
        raise Failure(f"cannot write {dst}: {formats.missing(dst) or f'unknown image extension {suffix!r}'}")
    return fmt


def save_options(image, fmt: str, output_quality: int, dst: str) -> dict:
    """Pillow's save() arguments for a decoded image: its ICC profile, EXIF and XMP, and the quality
    of a lossy format; refuses what a format would lose silently (alpha into JPEG, GIF or PPM, any
    image into ICNS, one larger than ICO holds) and warns of GIF's 256 colours."""
    if fmt in NO_ALPHA and image.mode in ("RGBA", "LA"):
        raise Failure(f"cannot write {dst}: {NO_ALPHA[fmt]} has no alpha channel (use PNG or WebP)")
    if fmt == "ICO":  # Pillow's writer scales to its own list of icon sizes, at most 32×22 of a 53×37 image
        if max(image.size) > ICO_MAX:
            raise Failure(f"cannot write {dst}: an ICO image is at most {ICO_MAX}×{ICO_MAX} pixels, this one is "
                          f"{image.width}×{image.height} (use PNG)")
        return {"sizes": [image.size]}
    if fmt == "ICNS":  # Pillow's writer stretches the image to every fixed icon size, up to 1024×1024
        raise Failure(f"cannot write {dst}: ICNS holds square icons of fixed sizes, which would stretch the image "
                      "(use PNG)")
    if fmt == "GIF" and image.mode == "RGB":
        from codec.api import OnicWarning

        warnings.warn("GIF holds 256 colours: the image is reduced to them (PNG keeps every colour)", OnicWarning,
                      stacklevel=2)
    kwargs = {k: image.info[k] for k in ("icc_profile", "exif") if image.info.get(k)}
    if image.info.get("xmp"):
        kwargs |= xmp_options(fmt, image.info["xmp"], image.info.get("exif"))
    if fmt in ("JPEG", "MPO"):
        _fit_jpeg_segments(kwargs)
    if fmt in LOSSY_OUTPUTS:
        kwargs["quality"] = output_quality
    return kwargs


# The most that one JPEG APP segment holds, less the XMP segment's name (Pillow's limits); the ICC
# profile, split over several segments, has none.
JPEG_SEGMENT = {"exif": 65533, "xmp": 65533 - 29}


def _fit_jpeg_segments(kwargs: dict) -> None:
    """Drop, with a warning, EXIF or XMP too long for a JPEG segment: the image is still written
    (Pillow would refuse it whole)."""
    from codec.api import OnicWarning

    for key, limit in JPEG_SEGMENT.items():
        if key in kwargs and len(kwargs[key]) > limit:
            size = len(kwargs.pop(key))
            warnings.warn(f"{key.upper()} of {size} bytes not written: a JPEG segment holds {limit} "
                          "(PNG, WebP and TIFF keep it)", OnicWarning, stacklevel=2)


XMP_KEYWORD = {"JPEG", "MPO", "WEBP", "AVIF", "JXL", "HEIF"}  # formats whose Pillow writer takes xmp=


def xmp_options(fmt: str, xmp: bytes, exif: bytes | None = None) -> dict:
    """Pillow's save() arguments that write an XMP packet into ``fmt``: xmp= where its writer takes
    it, PNG's iTXt "XML:com.adobe.xmp" (UTF-8, as XMP is nearly always) and TIFF's tag 700 beside
    the file's EXIF tags (``exif``: Pillow's TIFF writer takes tiffinfo or exif, never both); none
    for a format without a place for one (GIF, BMP …), as for EXIF."""
    if fmt in XMP_KEYWORD:
        return {"xmp": xmp}
    if fmt == "PNG":
        from PIL import PngImagePlugin

        try:
            text = xmp.decode("utf-8")
        except UnicodeDecodeError:  # PNG's iTXt holds UTF-8 only
            from codec.api import OnicWarning

            warnings.warn("XMP not written: it is not UTF-8, which PNG's iTXt needs (TIFF and WebP keep it)",
                          OnicWarning, stacklevel=2)
            return {}
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", text)
        return {"pnginfo": info}
    if fmt == "TIFF":
        from PIL import Image

        tags = Image.Exif()
        if exif:
            tags.load(exif)
        tags[700] = xmp
        return {"exif": tags}
    return {}


def _decompress(job: Job) -> tuple[bytes | None, str]:
    from codec import api
    from codec.session import bundle_at

    fmt = output_format("x." + job.stdout_format) if job.dst == STDIO else output_format(job.dst)
    bundle = bundle_at(job.model, job.threads)
    image = api.decompress(read_onic(job.src, job.max_pixels), bundle, max_pixels=job.max_pixels)
    kwargs = save_options(image, fmt, job.output_quality, job.dst)

    def save(target) -> None:
        image.save(target, format=fmt, **kwargs)

    if job.dst == STDIO:
        buf = io.BytesIO()
        try:
            save(buf)
        except Exception as e:
            raise Failure(f"cannot write {fmt} to stdout: {_reason(e)}") from None
        return buf.getvalue(), ""
    write_atomic(Path(job.dst), save, job.force)
    return None, f"{display(job.src)} -> {job.dst}" if job.verbose else ""


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
