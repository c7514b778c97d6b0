"""Image formats beyond Pillow's own, where their Pillow plugins are installed.

JPEG XL (pillow-jxl-plugin) and HEIF, the iPhone's HEIC photos (pillow-heif),
are read and written through Pillow once their plugins are registered.
Registering costs an import (pillow_jxl: about 14 ms), so it happens only when
Pillow meets a file or an extension it does not know, and once per process.
Without the plugin, a file of one of these formats fails with a line that
names the package to install.
"""

from __future__ import annotations

import threading
from pathlib import Path

# extension → (format name, the module that registers it, the pip package)
OPTIONAL = {
    ".jxl": ("JPEG XL", "pillow_jxl", "pillow-jxl-plugin"),
    ".heic": ("HEIF", "pillow_heif", "pillow-heif"),
    ".heif": ("HEIF", "pillow_heif", "pillow-heif"),
    ".hif": ("HEIF", "pillow_heif", "pillow-heif"),
}

_lock = threading.Lock()
_tried = False


def register() -> bool:
    """Register the installed optional plugins with Pillow; True the first time (so that a caller
    may retry what failed), False once done before."""
    global _tried
    with _lock:
        if _tried:
            return False
        _tried = True
        for _, module, _ in sorted(set(OPTIONAL.values())):
            try:
                if module == "pillow_heif":
                    from pillow_heif import register_heif_opener

                    register_heif_opener()
                else:
                    __import__(module)  # pillow_jxl registers itself on import
            except Exception:  # noqa: BLE001 – absent, or a broken install: Pillow goes on without it
                continue
        return True


def missing(name: str) -> str | None:
    """For a file name whose extension is an optional format whose plugin is not installed, what to
    install ("JPEG XL needs pillow-jxl-plugin …"); None otherwise."""
    entry = OPTIONAL.get(Path(name).suffix.lower())
    if entry is None:
        return None
    from PIL import Image

    register()
    if Path(name).suffix.lower() in Image.registered_extensions():
        return None
    fmt, _, package = entry
    return f"{fmt} needs the Pillow plugin {package} (pip install {package})"
