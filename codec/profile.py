"""Per-stage wall-clock totals for benchmarks: a no-op unless ``record()`` is active."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_totals: dict[str, float] | None = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    if _totals is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _totals[name] = _totals.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def record() -> Iterator[dict[str, float]]:
    """Collect stage totals (seconds) of the code run inside; single-threaded use."""
    global _totals
    previous, _totals = _totals, {}
    try:
        yield _totals
    finally:
        _totals = previous
