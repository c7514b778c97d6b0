"""Pillow plugin: ``Image.open("x.onic")`` and ``img.save("x.onic", quality=60)`` after ``import codec``.

Shaped like Pillow's own WebPImagePlugin: ``_accept`` checks the magic,
``_open`` reads and validates only the 32-byte header (size, mode) and applies
Pillow's decompression-bomb limit to the padded area that decoding costs; pixels
are decoded on ``load()``, which raises ``OnicDecodeError`` (an ``OSError``)
for a damaged file. onnxruntime is imported only then.
"""

from __future__ import annotations

import warnings
from typing import IO

from PIL import Image, ImageFile

from codec import bitstream

FORMAT = "ONIC"
MIME = "image/x-onic"


class OnicDecodeError(OSError):
    """A file that opened (its header is valid) but cannot be decoded; an OSError, as Pillow's plugins raise."""


def _bomb_check(width: int, height: int) -> None:
    """Pillow's decompression-bomb rule (``Image.MAX_IMAGE_PIXELS``), applied to the padded area that decoding costs."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = bitstream.padded_area(width, height)
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(
            f"Image size ({pixels} pixels, padded to multiples of {bitstream.PAD}) exceeds limit of "
            f"{2 * limit} pixels, could be decompression bomb DOS attack.")
    if pixels > limit:
        warnings.warn(f"Image size ({pixels} pixels, padded to multiples of {bitstream.PAD}) exceeds limit of "
                      f"{limit} pixels, could be decompression bomb DOS attack.", Image.DecompressionBombWarning,
                      stacklevel=3)


def _accept(prefix: bytes) -> bool:
    return bitstream.accept(prefix)


class OnicImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "onic learned image codec"

    def _open(self) -> None:
        head = self.fp.read(bitstream.HEADER.size)
        try:
            h = bitstream.parse_header(head, max_pixels=None)  # the side limit only; Pillow's rule below
        except bitstream.OnicError as e:
            raise SyntaxError(str(e)) from None
        _bomb_check(h.width, h.height)
        self._size = (h.width, h.height)
        self._mode = h.mode
        self.info["quality"] = h.quality
        self.info["model_id"] = h.model_id
        self.tile = []
        self._decoded = False

    def load(self):
        if not self._decoded and self.fp is not None:
            from codec import api

            self.fp.seek(0)
            try:
                image = api.decompress(self.fp.read(), max_pixels=None)  # _open applied Pillow's limit
            except bitstream.OnicError as e:
                raise OnicDecodeError(f"cannot decode .onic image: {e}") from None
            self.im = image.im
            self.info.update(image.info)
            self._decoded = True
        return Image.Image.load(self)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from codec import api

    options = im.encoderinfo  # the save() arguments; a copy of the image has none
    metadata = {key: options[key] for key in ("icc_profile", "exif", "xmp") if options.get(key)}
    if isinstance(metadata.get("exif"), Image.Exif):  # Pillow's writers take either
        metadata["exif"] = metadata["exif"].tobytes()
    if metadata:  # save(…, exif=…) as Pillow's other writers take it
        im = im.copy()
        im.info.update(metadata)
    fp.write(api.compress(im, quality=options.get("quality", api.DEFAULT_QUALITY), refine=options.get("refine", 0),
                          metadata=options.get("metadata")))


Image.register_open(FORMAT, OnicImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, ".onic")
Image.register_mime(FORMAT, MIME)
