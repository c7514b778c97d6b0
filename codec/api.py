"""Python API: ``compress(image, quality) -> bytes`` and ``decompress(data) -> PIL.Image``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from codec import bitstream, entropy
from codec.bitstream import Header, OnicError
from codec.session import Bundle, default_bundle

DEFAULT_QUALITY = 75

ImageLike = Image.Image | np.ndarray | str | os.PathLike


def _to_image(image: ImageLike) -> Image.Image:
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
    try:
        with Image.open(image) as im:
            im.load()
            return im
    except OSError as e:
        raise OnicError(f"cannot read image {image}: {e}") from None


def _pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """uint8 (H, W, 3) pixels and the mode to restore ("RGB" or "L")."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        raise OnicError(f"images with an alpha channel ({mode}) are not supported yet")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise OnicError(f"{mode} images (16-bit or float) are not supported yet; convert to 8 bits first")
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"))
        return np.repeat(gray[..., None], 3, axis=2), "L"
    return np.asarray(image.convert("RGB")), "RGB"


def _pad(x: np.ndarray, stride: int) -> np.ndarray:
    """(1, 3, H, W) → padded by edge replication to multiples of stride."""
    h, w = x.shape[2:]
    return np.pad(x, ((0, 0), (0, 0), (0, -h % stride), (0, -w % stride)), mode="edge")


def _check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 0 <= quality <= 100:
        raise OnicError(f"quality must be an integer from 0 to 100, got {quality!r}")
    return int(quality)


def compress(image: ImageLike, quality: int = DEFAULT_QUALITY, bundle: Bundle | None = None) -> bytes:
    """Encode an image (PIL image, uint8 array or path) as .onic bytes.

    ``quality`` runs from 0 (smallest) to 100 (best); a higher quality never
    gives a smaller file for the same image. RGB and grayscale are supported.
    """
    quality = _check_quality(quality)
    bundle = bundle or default_bundle()
    rgb, mode = _pixels(_to_image(image))
    height, width = rgb.shape[:2]
    if width * height > bitstream.MAX_PIXELS:
        raise OnicError(f"image of {width}x{height} exceeds the limit of {bitstream.MAX_PIXELS} pixels")
    x = _pad(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255, bundle.stride)
    gain, _ = bundle.gains(quality)
    y, z = bundle.run("encoder", x=x, gain=gain)
    z_sym = np.round(z[0]).astype(np.int64)
    mu, _ = bundle.run("hyper_decoder", z_hat=z_sym[None].astype(np.float32))
    y_sym = np.round(y[0] - mu[0]).astype(np.int64)
    z_ids = np.broadcast_to(np.arange(z_sym.shape[0])[:, None, None], z_sym.shape)
    z_bytes = entropy.encode(z_sym, z_ids, bundle.z_tables)
    y_bytes = entropy.encode(y_sym, bundle.scale_indexes(z_sym), bundle.y_tables)
    header = Header(mode, quality, bundle.model_id, width, height, len(z_bytes), len(y_bytes))
    return bitstream.pack(header, z_bytes, y_bytes)


def read_header(data: bytes, max_pixels: int | None = bitstream.MAX_PIXELS) -> Header:
    """Validate and return the header of .onic bytes without decoding pixels."""
    return bitstream.parse_header(data, max_pixels)


def decode_latents(data: bytes, bundle: Bundle | None = None,
                   max_pixels: int | None = bitstream.MAX_PIXELS) -> tuple[Header, np.ndarray, np.ndarray]:
    """Validate .onic bytes and entropy-decode them: (header, ẑ symbols, y − μ symbols).

    Only integer work happens here (the scale indexes come from the integer
    path), so the symbols are the same on every machine and runtime.
    """
    c = bitstream.unpack(bytes(data), max_pixels)
    h = c.header
    bundle = bundle or default_bundle()
    if h.model_id != bundle.model_id:
        raise OnicError(f"model id mismatch: the file needs model {h.model_id}, this onic has {bundle.model_id}")
    s = bundle.stride
    n_z = len(bundle.z_tables)
    z_shape = (n_z, -(-h.height // s), -(-h.width // s))
    z_ids = np.broadcast_to(np.arange(n_z)[:, None, None], z_shape)
    z_sym = entropy.decode(c.z, z_ids, bundle.z_tables)
    y_sym = entropy.decode(c.y, bundle.scale_indexes(z_sym), bundle.y_tables)
    return h, z_sym, y_sym


def decompress(data: bytes | str | os.PathLike, bundle: Bundle | None = None,
               max_pixels: int | None = bitstream.MAX_PIXELS) -> Image.Image:
    """Decode .onic bytes (or a path to a file) into a PIL image ("RGB" or "L")."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = Path(data).read_bytes()
    bundle = bundle or default_bundle()
    h, z_sym, y_sym = decode_latents(data, bundle, max_pixels)
    mu, _ = bundle.run("hyper_decoder", z_hat=z_sym[None].astype(np.float32))
    _, inv_gain = bundle.gains(h.quality)
    y_hat = y_sym[None].astype(np.float32) + mu
    (x_hat,) = bundle.run("decoder", y_hat=y_hat, inv_gain=inv_gain)
    with np.errstate(over="ignore", invalid="ignore"):  # a crafted file may drive the synthesis to inf
        x_hat = np.nan_to_num(x_hat[0, :, : h.height, : h.width] * 255, nan=0.0, posinf=255.0, neginf=0.0)
        rgb = np.clip(np.rint(x_hat), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    return image.convert("L") if h.mode == "L" else image
