from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec.session import DEFAULT_BUNDLE, Bundle, default_bundle

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "codec" / "samples" / "parrots.png"


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    return default_bundle()


@pytest.fixture(scope="session")
def sample() -> Image.Image:
    with Image.open(SAMPLE) as im:
        return im.convert("RGB")


@pytest.fixture(scope="session")
def sample_onic(sample, bundle) -> bytes:
    import codec

    return codec.compress(sample, quality=75, bundle=bundle)


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth-ish content so that the codec sees something image-like
    base = rng.integers(0, 256, size=(max(1, height // 4 + 1), max(1, width // 4 + 1), 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((width, height), Image.BILINEAR)
    return im.convert(mode)


def image_folder(folder: Path, count: int, width: int = 80, height: int = 72) -> Path:
    """A folder of ``count`` small training images (0.png, 1.png, …); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        random_image(width, height, seed=i).save(folder / f"{i}.png")
    return folder


def run_onic(*args: str, input: bytes | None = None, env: dict | None = None, cwd: Path | None = None):
    """The real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "codec.cli", *args], capture_output=True, input=input, env=env, cwd=cwd,
    )


__all__ = ["DEFAULT_BUNDLE", "ROOT", "SAMPLE", "image_folder", "random_image", "run_onic"]
