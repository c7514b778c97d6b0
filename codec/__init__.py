"""onic: a learned image codec. The runtime here never imports torch.

    import codec
    data = codec.compress("photo.png", quality=75)
    image = codec.decompress(data)
"""

from __future__ import annotations

__version__ = "0.1.0"

from codec.api import DEFAULT_QUALITY, compress, decompress, read_header  # noqa: E402
from codec.bitstream import OnicError  # noqa: E402

__all__ = ["DEFAULT_QUALITY", "OnicError", "__version__", "compress", "decompress", "read_header"]
