"""Pillow plugin: ``Image.open("x.onic")`` and ``img.save("x.onic", quality=60)`` after ``import codec``.

Shaped like Pillow's own WebPImagePlugin: ``_accept`` checks the magic,
``_open`` reads and validates only the 32-byte header (size, mode), pixels are
decoded on ``load()``. onnxruntime is imported only then.
"""

from __future__ import annotations

from typing import IO

from PIL import Image, ImageFile

from codec import bitstream

FORMAT = "ONIC"
MIME = "image/x-onic"


def _accept(prefix: bytes) -> bool:
    return bitstream.accept(prefix)


class OnicImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "onic learned image codec"

    def _open(self) -> None:
        head = self.fp.read(bitstream.HEADER.size)
        try:
            h = bitstream.parse_header(head, max_pixels=None)  # Image.open applies its own bomb check
        except bitstream.OnicError as e:
            raise SyntaxError(str(e)) from None
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
            image = api.decompress(self.fp.read())
            self.im = image.im
            self.info.update(image.info)
            self._decoded = True
        return Image.Image.load(self)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from codec import api

    quality = im.encoderinfo.get("quality", api.DEFAULT_QUALITY)
    if im.encoderinfo.get("icc_profile") or im.encoderinfo.get("exif"):
        im = im.copy()
        for key in ("icc_profile", "exif"):
            if im.encoderinfo.get(key):
                im.info[key] = im.encoderinfo[key]
    fp.write(api.compress(im, quality=quality))


Image.register_open(FORMAT, OnicImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, ".onic")
Image.register_mime(FORMAT, MIME)
