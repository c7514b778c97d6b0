"""One helper for the runtime's parallel loops (tiles of the graphs, bands of the integer path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def each(fn: Callable, items: Sequence, workers: int) -> None:
    """fn(item) for every item, on up to ``workers`` threads where there are several items.

    The work inside (onnxruntime runs, numpy products) releases the GIL; callers write
    disjoint parts of their outputs, so the result does not depend on the order.
    """
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(min(workers, len(items))) as pool:
            list(pool.map(fn, items))
    else:
        for item in items:
            fn(item)
