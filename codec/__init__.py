"""onic: a learned image codec. The runtime here never imports torch.

    import codec
    data = codec.compress("photo.png", quality=75)
    image = codec.decompress(data)

Importing the package also registers the Pillow plugin (``Image.open`` and
``Image.save`` of ``.onic``); onnxruntime loads only when pixels are coded.
"""

from __future__ import annotations

__version__ = "0.18.0"

from codec import plugin  # noqa: E402,F401  (registers the Pillow plugin)
from codec.api import DEFAULT_QUALITY, OnicWarning, compress, decompress, read_header  # noqa: E402
from codec.bitstream import OnicError  # noqa: E402

__all__ = ["DEFAULT_QUALITY", "OnicError", "OnicWarning", "__version__", "compress", "decompress", "read_header"]
