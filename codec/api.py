"""Python API: ``compress(image, quality) -> bytes`` and ``decompress(data) -> PIL.Image``."""

from __future__ import annotations

import io
import os
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from codec import bitstream, entropy, formats, intscale, profile, tiling
from codec import refine as refinement
from codec.bitstream import Header, OnicError
from codec.session import Bundle, default_bundle

DEFAULT_QUALITY = 75

ImageLike = Image.Image | np.ndarray | str | os.PathLike | bytes


def _to_image(image: ImageLike, max_pixels: int | None = bitstream.MAX_PIXELS, name: str | None = None) -> Image.Image:
    """A PIL image; a file's size is checked (``bitstream.check_size``) before its pixels are read.

    Any failure of Pillow to read the file (OSError, ValueError of a bad chunk,
    a decompression bomb…) becomes one ``OnicError`` naming ``name`` or the path.
    Bytes are an image file's contents, as a file-like object's are.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise OnicError(f"numpy input must be uint8, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            return Image.fromarray(image)
        raise OnicError(f"numpy input must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        image, name = io.BytesIO(bytes(image)), name or "<bytes>"
    if not isinstance(image, (str, os.PathLike)) and not hasattr(image, "read"):
        raise OnicError("compress takes a PIL image, a uint8 array, a path, an image file's bytes or a binary "
                        f"stream, not {type(image).__name__}")
    # a path names itself; anything else (a stream) by its kind, never by its repr or contents
    name = name or (os.fsdecode(image) if isinstance(image, (str, os.PathLike)) else f"<{type(image).__name__}>")
    # A second try where Pillow knew no format: one whose plugin is installed but not yet registered
    # (JPEG XL, HEIF: codec/formats.py).
    for again in (False, True):
        if again and not (formats.register() and _rewound(image)):
            break
        try:
            return _opened(image, max_pixels)
        except (OnicError, MemoryError):
            raise
        except UnidentifiedImageError:  # its text names the stream object (<_io.BytesIO object at 0x…>)
            continue
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error… for bad files
            raise OnicError(f"cannot read image {name}: {bitstream.reason(e)}") from None
    cause = "empty input" if _is_empty(image) else formats.missing(name) or "no format Pillow reads"
    raise OnicError(f"cannot read image {name}: {cause}") from None


def _opened(image: str | os.PathLike | BinaryIO, max_pixels: int | None) -> Image.Image:
    """Image.open, its size checked before its pixels are read, and loaded."""
    with Image.open(image) as im:
        bitstream.check_size(im.width, im.height, max_pixels)
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            warnings.warn(f"animated image: only the first of its {frames} frames is coded", OnicWarning,
                          stacklevel=4)
        im.load()
        return im


def _rewound(image: str | os.PathLike | BinaryIO) -> bool:
    """Whether the input can be read again from its start (a path, a seekable stream)."""
    if isinstance(image, (str, os.PathLike)):
        return True
    try:
        image.seek(0)
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _is_empty(image: object) -> bool:
    """Whether a path or a file-like object (stdin's bytes) holds no bytes at all."""
    try:
        if hasattr(image, "getbuffer"):
            return image.getbuffer().nbytes == 0
        return os.path.getsize(image) == 0
    except (OSError, TypeError, ValueError):
        return False


class OnicWarning(UserWarning):
    """A lossy conversion of the input before coding (16-bit to 8-bit, CMYK or palette to RGB)."""


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _pixels(image: Image.Image) -> tuple[np.ndarray, str, np.ndarray | None]:
    """uint8 (H, W, 3) colour, the mode to restore (L, LA, RGB, RGBA) and the alpha plane or None."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        warnings.warn(f"{mode} input reduced to 8 bits", OnicWarning, stacklevel=3)
        a = np.asarray(image, dtype=np.int64)
        gray = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), "L")
        trns = image.info.get("transparency")  # a PNG's tRNS: the one 16-bit value that is transparent
        transparent = a == trns if isinstance(trns, int) and not isinstance(trns, bool) else None
        if transparent is not None and transparent.any():
            gray = Image.merge("LA", (gray, Image.fromarray(np.where(transparent, 0, 255).astype(np.uint8))))
        image, mode = gray, gray.mode
    elif mode == "F":
        raise OnicError("floating-point (F) images are not supported; convert to 8 bits first")
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        warnings.warn(f"palette image converted to {'RGBA' if has_alpha else 'RGB'}", OnicWarning, stacklevel=3)
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("PA", "RGBa", "La"):
        image = image.convert("RGBA" if mode != "La" else "LA")
    elif mode in ("1", "L", "RGB") and "transparency" in image.info:  # a PNG's tRNS colour: an alpha plane
        with_alpha = image.convert("RGBA" if mode == "RGB" else "LA")
        if with_alpha.getchannel("A").getextrema()[0] < 255:  # a colour that no pixel has changes nothing
            image = with_alpha
    elif mode not in ("1", "L", "LA", "RGB", "RGBA"):
        warnings.warn(f"{mode} image converted to RGB", OnicWarning, stacklevel=3)
        image = image.convert("RGB")
    mode = image.mode
    alpha = np.asarray(image.getchannel("A")) if mode in ("LA", "RGBA") else None
    if mode in ("1", "L", "LA"):
        gray = np.asarray(image.convert("L"))
        return np.repeat(gray[..., None], 3, axis=2), "LA" if alpha is not None else "L", alpha
    return np.asarray(image.convert("RGB")), "RGBA" if alpha is not None else "RGB", alpha


METADATA = ("icc", "exif", "xmp")  # what compress keeps of an image's metadata, unless told less


def check_metadata(metadata: Iterable[str] | None) -> frozenset[str]:
    """The metadata kinds to keep: all of ``METADATA`` for None, else the ones named (none for ())."""
    if metadata is None:
        return frozenset(METADATA)
    try:
        kinds = None if isinstance(metadata, str) else tuple(metadata)  # once: a generator is read here only
    except TypeError:  # not a collection
        kinds = None
    if kinds is None or not all(isinstance(m, str) for m in kinds):
        raise OnicError(f"metadata must be a collection of names from {', '.join(METADATA)}, got {metadata!r}")
    unknown = sorted(set(kinds) - set(METADATA))
    if unknown:
        raise OnicError(f"unknown metadata {', '.join(unknown)}: the kinds are {', '.join(METADATA)}")
    return frozenset(kinds)


def _icc_space(icc: bytes) -> str | None:
    """An ICC profile's data colour space ("RGB", "GRAY", "CMYK", "Lab"…: header bytes 16–19), or None."""
    signature = icc[16:20]
    if len(signature) < 4 or not all(c == 0x20 or 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A
                                     for c in signature):
        return None  # not a profile's header: kept as it came, as before
    return signature.decode("ascii").strip() or None


def _orientation_only(image: Image.Image) -> bytes | None:
    """An EXIF block holding only the image's orientation, where it is not the upright 1: EXIF left
    out (it may hold where a photo was taken) must not leave a photo lying on its side."""
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # an unreadable EXIF block: nothing to keep
        return None
    if orientation not in range(2, 9):
        return None
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _metadata(image: Image.Image, alpha: np.ndarray | None, keep: frozenset[str]) -> dict[bytes, bytes]:
    chunks = {}
    if alpha is not None:
        chunks[b"ALPH"] = zlib.compress(alpha.tobytes(), 9)
    icc = bytes(image.info.get("icc_profile") or b"") if "icc" in keep else b""
    space = _icc_space(icc)
    if space not in (None, "RGB", "GRAY"):
        # A CMYK (or Lab…) image is coded as RGB: its profile would tell viewers to read RGB as CMYK.
        warnings.warn(f"{space} ICC profile left out: it does not describe the RGB pixels that are coded",
                      OnicWarning, stacklevel=3)
    elif icc:
        chunks[b"iccp"] = icc
    exif = image.info.get("exif") if "exif" in keep else None
    if "exif" in keep and not exif and any(k.lower() == "raw profile type exif" for k in image.info):
        # PNGs written by ImageMagick and exiftool keep EXIF as hex text; Pillow parses it for getexif().
        try:
            exif = image.getexif().tobytes()
        except Exception:
            warnings.warn("unreadable 'Raw profile type exif' text dropped", OnicWarning, stacklevel=3)
    if "exif" not in keep:
        exif = _orientation_only(image)
    if exif:
        chunks[b"exif"] = bytes(exif)
    xmp = xmp_packet(image) if "xmp" in keep else None
    if xmp:
        chunks[b"xmpp"] = xmp
    return chunks


def xmp_packet(image: Image.Image) -> bytes | None:
    """The image's XMP packet, as Pillow reads it: ``info["xmp"]`` (JPEG, WebP, AVIF, and PNG and
    TIFF since Pillow 11), else a PNG's "XML:com.adobe.xmp" text or a TIFF's tag 700 (older Pillow)."""
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if not xmp and hasattr(image, "tag_v2"):
        xmp = image.tag_v2.get(700)
    if isinstance(xmp, str):
        try:
            return xmp.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates in a text chunk: kept, each as "?"
            return xmp.encode("utf-8", "replace")
    return bytes(xmp) if isinstance(xmp, (bytes, bytearray, memoryview)) and xmp else None


def _check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 0 <= quality <= 100:
        raise OnicError(f"quality must be an integer from 0 to 100, got {quality!r}")
    return int(quality)


def compress(image: ImageLike, quality: int = DEFAULT_QUALITY, bundle: Bundle | None = None,
             max_pixels: int | None = bitstream.MAX_PIXELS, refine: int = 0,
             metadata: Iterable[str] | None = None) -> bytes:
    """Encode an image (PIL image, uint8 array, path, an image file's bytes or a binary stream) as .onic bytes.

    ``quality`` runs from 0 (smallest) to 100 (best); a higher quality never
    gives a smaller file for the same image. L, LA, RGB and RGBA are coded as
    such (alpha losslessly); ICC profile, EXIF and XMP are kept, or those of them named in
    ``metadata`` ("icc", "exif", "xmp"; () keeps none: EXIF may hold a location; without it an
    orientation other than upright is kept alone, so that the image still displays upright). 16-bit, palette
    and CMYK input is converted with an ``OnicWarning``. Images wider or taller
    than ``bitstream.MAX_SIDE``, or whose area padded to multiples of 64 exceeds
    ``max_pixels`` (None: no limit), are refused before any work.
    ``refine``: gradient steps on the latents before coding (codec/refine.py):
    a smaller file for about the same quality, decoded by any onic with the
    model, at about two decodes' time per step; 0 (the default) codes the
    analysis' latents as they are. Refined files are chosen per quality, so
    that sizes grow with quality is measured (every Kodak image) rather than
    guaranteed. Where the bundle has an int8 analysis graph (``Bundle.analysis_graph``),
    plain coding runs it and refinement starts from the float analysis instead.
    """
    quality = _check_quality(quality)
    steps = refinement.check_steps(refine)
    keep = check_metadata(metadata)
    bundle = bundle or default_bundle()
    image = _to_image(image, max_pixels)
    bitstream.check_size(image.width, image.height, max_pixels)
    rgb, mode, alpha = _pixels(image)
    height, width = rgb.shape[:2]
    gain, _ = bundle.gains(quality)
    # Refinement spends about two decodes a step on the latents: it starts from the float analysis'.
    y, z = tiling.analyse(bundle, rgb, gain, "analysis" if steps else None)
    if steps:
        y = refinement.refine(bundle, rgb, y, quality, steps)
        z = tiling.hyper_encode(bundle, y)
    del rgb  # a copy of the pixels (143 MB at 50 MP) that nothing after the analysis reads
    z_sym = tiling.z_symbols(bundle, z, quality)
    y_sym = np.empty(y.shape, dtype=np.int32)
    # The integer chain (indexes, then the range coder) needs only ẑ and the symbols, so for an image
    # that runs whole it codes each slice beside the float chain that makes the symbols (with
    # tiling._window's rewrite, kodim23's encode 69.7 → 57.4 ms, full-size model 158 → 139 ms:
    # ab_speed, onic 0.9.1's round). A large image's bands already use every core, and
    # both at once would hold both chains' arrays (50 MP encode peak: 1.83 → 2.15 GB). A bundle of one
    # thread runs the chains in turn.
    if tiling.whole(height, width) and bundle.threads != 1:
        slices = _Slices(max(1, len(bundle.slices)))

        def float_chain() -> bytes:
            try:
                _y_symbols_of(bundle, z_sym, quality, y, y_sym, True, slices.decoded)
            except BaseException:
                slices.fail()
                raise
            return _code_z(bundle, z_sym)

        # The integer chain runs on this thread, as in the decoder: its 8-bit kernels' buffers are
        # this thread's (intconv._scratch), kept from image to image, where a new pool thread made
        # them anew each time (the full-size model's kodim23 encode, speed.py's stages: integer path
        # 34 → 28 ms; README, onic 0.12.2).
        with ThreadPoolExecutor(1) as pool:
            floats = pool.submit(float_chain)
            try:
                y_bytes = _code_y(bundle, z_sym, quality, y_sym, slices.wait)
            except _Abandoned:
                floats.result()  # raises the float chain's failure, which abandoned this chain
                raise
            z_bytes = floats.result()
        del y
    else:
        _y_symbols_of(bundle, z_sym, quality, y, y_sym)
        del y
        z_bytes = _code_z(bundle, z_sym)
        y_bytes = _code_y(bundle, z_sym, quality, y_sym)
    header = Header(mode, quality, bundle.model_id, width, height, len(z_bytes), len(y_bytes))
    with profile.stage("container"):
        return bitstream.pack(header, z_bytes, y_bytes, _metadata(image, alpha, keep))


def _y_symbols_of(bundle: Bundle, z_sym: np.ndarray, quality: int, y: np.ndarray, y_sym: np.ndarray,
                  single_thread: bool = False, written: Callable[[int, np.ndarray], None] | None = None) -> None:
    """The float chain of the encoder: y_sym = round(y − μ), slice by slice for a channel-conditional
    model, with ``written(k, y_sym)`` told as each slice is in; y is overwritten."""
    mu_h = tiling.hyper_decode(bundle, z_sym, quality, single_thread, 1 if single_thread else bundle.tile_workers)
    if bundle.slices:
        tiling.conditional_latents(bundle, mu_h, y_sym, y, single_thread=single_thread, written=written)
        return
    y -= mu_h
    del mu_h
    np.clip(y, -(2**30), 2**30, out=y)  # escapes refuse beyond 2**24; in place: y is the largest array
    np.round(y, out=y)
    np.copyto(y_sym, y, casting="unsafe")
    if written is not None:
        written(0, y_sym)


def _code_z(bundle: Bundle, z_sym: np.ndarray) -> bytes:
    with profile.stage("entropy coding"):
        z_ids = np.broadcast_to(np.arange(z_sym.shape[0])[:, None, None], z_sym.shape)
        return entropy.encode(z_sym, z_ids, bundle.z_tables)


def _code_y(bundle: Bundle, z_sym: np.ndarray, quality: int, y_sym: np.ndarray,
            ready: Callable[[int], np.ndarray] | None = None) -> bytes:
    """The integer chain of the encoder: y's section, each slice's indexes (from ẑ and the earlier
    slices' symbols) and symbols coded in turn. ``ready(k)`` returns once slice k's symbols are in
    y_sym, where the float chain makes them on another thread."""
    enc = entropy.Encoder()
    if not bundle.slices:
        ids = bundle.scale_indexes(z_sym, quality)
        if ready is not None:
            ready(0)
        with profile.stage("entropy coding"):
            enc.add(y_sym, ids, bundle.y_tables)
        return enc.finish()
    state = bundle.scale_state(z_sym, quality)
    for k, (a, b) in enumerate(bundle.slices):
        if k and ready is not None:
            ready(k - 1)  # slice k's indexes read the symbols of the slices before it
        ids = bundle.slice_indexes(k, state, y_sym)
        if ready is not None:
            ready(k)
        with profile.stage("entropy coding"):
            enc.add(y_sym[a:b], ids, bundle.y_tables)
    return enc.finish()


def read_header(data: bytes, max_pixels: int | None = bitstream.MAX_PIXELS) -> Header:
    """Validate and return the header of .onic bytes without decoding pixels."""
    return bitstream.parse_header(data, max_pixels)


def decode_latents(data: bytes | bitstream.Container, bundle: Bundle | None = None,
                   max_pixels: int | None = bitstream.MAX_PIXELS) -> tuple[Header, np.ndarray, np.ndarray]:
    """Validate .onic bytes and entropy-decode them: (header, ẑ symbols, y − μ symbols).

    Only integer work happens here (the scale indexes come from the integer
    path), so the symbols are the same on every machine and runtime.
    """
    c = data if isinstance(data, bitstream.Container) else bitstream.unpack(bytes(data), max_pixels)
    bundle = bundle or default_bundle()
    z_sym, dec = _open_latents(c, bundle)
    return c.header, z_sym, _y_symbols(dec, bundle, z_sym, c.header.quality)


def _open_latents(c: bitstream.Container, bundle: Bundle) -> tuple[np.ndarray, entropy.Decoder]:
    """The ẑ symbols and a decoder of y's section, once both sections are known to have room."""
    h = c.header
    bundle.check_decodes(h.model_id)
    s = bundle.stride
    n_z = len(bundle.z_tables)
    z_shape = (n_z, -(-h.height // s), -(-h.width // s))
    # Both sections must have room for their symbols before anything image-sized exists.
    z_count = z_shape[1] * z_shape[2]
    entropy.check_room(c.z, z_count * float(bundle.z_tables.min_bits.sum()), n_z * z_count, "hyperprior")
    y_count = int(bundle.manifest["config"]["M"]) * z_count * (s // tiling.LATENT) ** 2
    entropy.check_room(c.y, y_count * float(bundle.y_tables.min_bits.min()), y_count, "latent")
    z_ids = np.broadcast_to(np.arange(n_z)[:, None, None], z_shape)
    with profile.stage("entropy coding"):
        z_sym = entropy.decode(c.z, z_ids, bundle.z_tables)
    return z_sym, entropy.Decoder(c.y)


def _y_symbols(dec: entropy.Decoder, bundle: Bundle, z_sym: np.ndarray, quality: int,
               decoded: Callable[[int, np.ndarray], None] | None = None,
               shared: intscale.SharedHyperState | None = None) -> np.ndarray:
    """y's symbols, slice by slice for a channel-conditional model: slice k's indexes need the
    symbols of the slices before it. ``decoded(k, symbols)`` is told as each slice is complete;
    ``shared``: the slices' shared integer state, which another thread may help make."""
    if not bundle.slices:
        return _read_y(dec, bundle.scale_indexes(z_sym, quality), bundle)
    state = bundle.scale_state(z_sym, quality, shared)
    y_sym = np.empty(state[0].shape, dtype=np.int32)
    for k, (a, b) in enumerate(bundle.slices):
        ids = bundle.slice_indexes(k, state, y_sym)
        with profile.stage("entropy coding"):
            y_sym[a:b] = dec.read(ids, bundle.y_tables)
        if decoded:
            decoded(k, y_sym)
    return y_sym


# Latents of y up to which a hyperprior image's entropy decoding runs beside μ's bands. The decoding's
# temporaries (about 18 bytes a latent) then live beside μ's: a 50 MP full-size decode (37.5 M
# latents) peaked at 1,587 MB against 941 without them, so larger images run the two in turn.
BESIDE_MAX = 2**24


def _read_y(dec: entropy.Decoder, y_ids: np.ndarray, bundle: Bundle) -> np.ndarray:
    with profile.stage("entropy coding"):
        return dec.read(y_ids, bundle.y_tables)


class _InTurn:
    """ThreadPoolExecutor(1)'s submit() for a bundle of one thread: the function runs when its result
    is asked for, on the asking thread. The decoder's float chain waits on the integer chain's symbols,
    so it runs after it, in turn."""

    def __enter__(self) -> _InTurn:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn: Callable, *args) -> _InTurn:
        self._call = lambda: fn(*args)
        return self

    def result(self):
        return self._call()


def _beside(bundle: Bundle) -> ThreadPoolExecutor | _InTurn:
    """Where the decoder's second chain runs: a thread of its own, or in turn for a bundle of one thread."""
    return _InTurn() if bundle.threads == 1 else ThreadPoolExecutor(1)


class _Abandoned(Exception):
    """The integer chain failed, so the float chain waiting on its slices stops."""


class _Slices:
    """y's symbols handed slice by slice from the integer chain to the float chain on another thread."""

    def __init__(self, count: int):
        self._ready = [threading.Event() for _ in range(count)]
        self._symbols: np.ndarray | None = None
        self._failed = False

    def decoded(self, k: int, symbols: np.ndarray) -> None:
        self._symbols = symbols
        self._ready[k].set()

    def wait(self, k: int) -> np.ndarray:
        self._ready[k].wait()
        if self._failed:
            raise _Abandoned
        return self._symbols

    def fail(self) -> None:
        self._failed = True
        for event in self._ready:
            event.set()


def _latents(c: bitstream.Container, bundle: Bundle) -> np.ndarray:
    """ŷ of a file. For a channel-conditional model the float chain (μ of h_s, then each slice's μ,
    ŷ and residual prediction) runs on a second thread beside the integer chain (indexes, then
    entropy decoding of each slice), taking each slice's symbols as they are decoded: the float
    chain never feeds the integer one, so the symbols are those of a serial decode. Without
    slices, h_s's μ runs beside the indexes and the entropy decoding."""
    h = c.header
    z_sym, dec = _open_latents(c, bundle)
    # One core each for the two chains where the image runs whole, as in the encoder. Large images'
    # integer bands take both cores anyway, and second sessions of h_s and the slice graphs would
    # hold arenas of their own beside the encoder's (50 MP round trip: 1.82 → 2.20 GB).
    single = tiling.whole(h.height, h.width)
    if not bundle.slices and single:  # μ is h_s's alone: it runs beside the indexes and the entropy decoding
        with _beside(bundle) as pool:
            mu = pool.submit(tiling.hyper_decode, bundle, z_sym, h.quality, True)
            y_sym = _y_symbols(dec, bundle, z_sym, h.quality)
            y_hat = mu.result()
        y_hat += y_sym
        return y_hat
    if not bundle.slices:  # a large image's indexes take every core; then μ's bands take them too
        y_ids = bundle.scale_indexes(z_sym, h.quality)
        if y_ids.size > BESIDE_MAX:
            y_sym = _read_y(dec, y_ids, bundle)
            del y_ids
            y_hat = tiling.hyper_decode(bundle, z_sym, h.quality, workers=bundle.tile_workers)
        else:  # sharing them with the entropy decoding, which takes one
            with _beside(bundle) as pool:
                read = pool.submit(_read_y, dec, y_ids, bundle)
                y_hat = tiling.hyper_decode(bundle, z_sym, h.quality, workers=bundle.tile_workers)
                y_sym = read.result()
        y_hat += y_sym
        return y_hat
    slices = _Slices(len(bundle.slices))
    # The float chain has made μ well before the integer chain has its shared state, and then
    # waits for the first slice's symbols, which need that state: meanwhile it takes a share of it.
    shared = bundle.shared_scale_state(z_sym, h.quality) if single else None

    def float_chain() -> np.ndarray:
        mu = tiling.hyper_decode(bundle, z_sym, h.quality, single)
        # The slice networks' μ_h part first, for an image that runs whole: slice 0's network needs
        # it as soon as its symbols arrive, and by the time it is made the shared state is (kodim23:
        # 72.3 → 68.3 ms a decode, ab_speed; README, Speed and memory, onic 0.11.0). A large image's
        # are made slice by slice, so that it holds one slice's at a time.
        priors = {k: tiling.slice_prior(bundle, mu, k, single) for k in range(len(bundle.slices))} if single else {}
        if shared is not None:
            shared.help()
        return tiling.conditional_latents(bundle, mu, None, ready=slices.wait, single_thread=single, priors=priors)

    with _beside(bundle) as pool:
        floats = pool.submit(float_chain)
        try:
            _y_symbols(dec, bundle, z_sym, h.quality, slices.decoded, shared)
        except BaseException:
            slices.fail()
            if shared is not None:
                shared.cancel()
            raise
        return floats.result()


def decompress(data: bytes | str | os.PathLike | BinaryIO, bundle: Bundle | None = None,
               max_pixels: int | None = bitstream.MAX_PIXELS) -> Image.Image:
    """Decode .onic bytes (or a path to a file, or a binary stream) into a PIL image (L, LA, RGB or RGBA).

    ICC profile, EXIF and XMP come back in ``image.info`` ("icc_profile", "exif",
    "xmp": bytes); EXIF orientation is kept as metadata, never applied to the pixels.
    """
    if isinstance(data, (str, os.PathLike)):
        try:
            with open(data, "rb") as f:  # the header first; a stream (a pipe, a device) only as far as it allows
                data = bitstream.read_from(f, os.fsdecode(data), max_pixels)
        except OSError as e:
            raise OnicError(f"cannot read {os.fsdecode(data)}: {bitstream.reason(e)}") from None
    elif hasattr(data, "read"):
        data = bitstream.read_from(data, f"<{type(data).__name__}>", max_pixels)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise OnicError(f"decompress takes .onic bytes, a path or a binary stream, not {type(data).__name__}")
    bundle = bundle or default_bundle()
    with profile.stage("container"):
        c = bitstream.unpack(bytes(data), max_pixels)
    h = c.header
    alpha = c.alpha
    y_hat = _latents(c, bundle)
    _, inv_gain = bundle.gains(h.quality)
    rgb = tiling.synthesize(bundle, y_hat, inv_gain, h.height, h.width, workers=bundle.tile_workers)
    del y_hat
    image = Image.fromarray(rgb, "RGB")
    if h.mode in ("L", "LA"):
        image = image.convert("L")
    if alpha is not None:
        image.putalpha(Image.frombytes("L", image.size, alpha))
    if b"iccp" in c.chunks:
        image.info["icc_profile"] = c.chunks[b"iccp"]
    if b"exif" in c.chunks:
        image.info["exif"] = c.chunks[b"exif"]
    if b"xmpp" in c.chunks:
        image.info["xmp"] = c.chunks[b"xmpp"]
    return image


def compress_to_target(image: ImageLike, bpp: float | None = None, psnr: float | None = None,
                       bundle: Bundle | None = None,
                       max_pixels: int | None = bitstream.MAX_PIXELS, refine: int = 0,
                       metadata: Iterable[str] | None = None) -> tuple[bytes, int]:
    """Search the quality for a target: the largest whose bpp ≤ ``bpp``, or the smallest whose PSNR ≥ ``psnr``.

    Binary search over 0–100 (file size and PSNR grow with quality), about
    seven encodes (each refined by ``refine`` steps and keeping ``metadata``, as ``compress``). Returns the
    bytes and the quality chosen; if no quality meets the target, the closest
    end (0 or 100) with an ``OnicWarning``.
    """
    from codec import metrics

    if (bpp is None) == (psnr is None):
        raise OnicError("give exactly one of a target bpp and a target PSNR")
    goal = bpp if bpp is not None else psnr
    if isinstance(goal, bool) or not isinstance(goal, (int, float)) or not goal > 0:  # NaN too
        raise OnicError(f"a target {'bpp' if bpp is not None else 'PSNR'} must be a number above 0, got {goal!r}")
    refinement.check_steps(refine)
    metadata = check_metadata(metadata)
    image = _to_image(image, max_pixels)
    bundle = bundle or default_bundle()
    target = reference(image) if psnr is not None else None  # once, not per quality tried
    pixels = image.width * image.height
    cache: dict[int, bytes] = {}

    def encode(q: int) -> bytes:
        if q not in cache:
            cache[q] = compress(image, q, bundle, max_pixels, refine, metadata)
        return cache[q]

    def meets(q: int) -> bool:
        data = encode(q)
        if bpp is not None:
            return 8 * len(data) / pixels <= bpp
        return metrics.psnr(target, decompress(data, bundle, max_pixels=None)) >= psnr

    # bpp: meets() is true for low q; PSNR: true for high q. Find the boundary.
    lo, hi = 0, 100
    if bpp is not None:
        if not meets(0):
            warnings.warn(f"no quality reaches {bpp} bpp; using quality 0", OnicWarning, stacklevel=2)
            return encode(0), 0
        while lo < hi:  # largest q with meets(q)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if meets(mid) else (lo, mid - 1)
        return encode(lo), lo
    if not meets(100):
        warnings.warn(f"no quality reaches {psnr} dB; using quality 100", OnicWarning, stacklevel=2)
        return encode(100), 100
    while lo < hi:  # smallest q with meets(q)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid + 1, hi)
    return encode(lo), lo


def reference(image: ImageLike) -> Image.Image:
    """The image as onic codes it: 8 bits per sample (16-bit input scaled, not clipped), in L, LA, RGB or RGBA."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnicWarning)
        rgb, mode, alpha = _pixels(_to_image(image))
    out = Image.fromarray(rgb, "RGB")
    if mode in ("L", "LA"):
        out = out.convert("L")
    if alpha is not None:
        out.putalpha(Image.fromarray(alpha, "L"))
    return out


def psnr_of(image: ImageLike, data: bytes, bundle: Bundle | None = None) -> float:
    """RGB PSNR in dB of .onic ``data`` decoded, against the 8-bit ``reference`` of ``image`` it was coded from."""
    from codec import metrics

    return metrics.psnr(reference(image), decompress(data, bundle, max_pixels=None))
