"""Threads for the runtime: the cores a process may use, and one helper for its parallel loops (tiles of
the graphs, bands of the integer path)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

try:  # glibc's; absent on macOS, Windows and musl, where there is nothing to do
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError, TypeError):
    _malloc_trim = None


# The most threads a process codes with: each of a bundle's dozen sessions holds a pool of that many,
# so thousands of threads asked for would mostly wait on each other. libaom caps its threads at 64 too.
MAX_THREADS = 64


def cores() -> int:
    """The cores this process may use: the physical cores of its CPU affinity (taskset, a container's
    cpuset), which os.cpu_count() ignores, capped by a cgroup CPU quota (``docker run --cpus 2``, a
    Kubernetes limit), rounded up; every CPU where the OS says neither. Physical, as onnxruntime's own
    default counts them: two hyperthreads of one core share its multiply-add units."""
    try:
        count = _physical_cores(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota, MAX_THREADS) if quota else min(count, MAX_THREADS))


def counted() -> bool:
    """Whether ``cores()`` counts physical cores of the affinity (Linux), not every logical CPU (macOS,
    Windows, where onnxruntime's own default, its count of physical cores, is the better guess)."""
    return hasattr(os, "sched_getaffinity")


def _physical_cores(cpus: set[int], root: str = "/sys/devices/system/cpu") -> int:
    """How many distinct physical cores (package, core) the logical CPUs are on, by Linux's sysfs
    topology; the count of CPUs where it cannot be read."""
    seen = set()
    for cpu in cpus:
        try:
            with open(f"{root}/cpu{cpu}/topology/core_id") as f, \
                 open(f"{root}/cpu{cpu}/topology/physical_package_id") as g:
                seen.add((g.read().strip(), f.read().strip()))
        except OSError:
            return len(cpus)
    return len(seen) or len(cpus)


def _cgroup_v2_dir(root: str, own: str) -> str:
    """This process's cgroup v2 folder: its own path under ``root`` where ``own`` (/proc/self/cgroup)
    names one (a systemd slice); the root itself in a container's cgroup namespace, where it is "/"."""
    try:
        with open(own) as f:
            for line in f:
                if line.startswith("0::/"):
                    return root + line[3:].strip().rstrip("/")
    except OSError:
        pass
    return root


def _cgroup_quota(root: str = "/sys/fs/cgroup", own: str = "/proc/self/cgroup") -> int:
    """The cgroup CPU quota in whole cores (rounded up), or 0 where there is none or it cannot be read.
    cgroup v2: the smallest cpu.max of the process's folder and those above it (a slice's limit binds
    the services in it); v1: the cpu controller's quota and period."""
    folder = _cgroup_v2_dir(root, own)
    files = []
    while True:
        files.append((folder + "/cpu.max", None))  # "QUOTA PERIOD", or "max PERIOD" for none
        if len(folder) <= len(root):
            break
        folder = folder.rsplit("/", 1)[0]
    files += [(f"{root}/{d}/cpu.cfs_quota_us", f"{root}/{d}/cpu.cfs_period_us") for d in ("cpu", "cpu,cpuacct")]
    limits = []
    for path, period_path in files:
        try:
            with open(path) as f:
                fields = f.read().split()
            if period_path is not None:
                with open(period_path) as f:
                    fields += f.read().split()
            quota, period = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):  # absent, "max" (no limit) or unreadable
            continue
        if quota > 0 and period > 0:
            limits.append(-(-quota // period))
    return min(limits, default=0)


def bands(rows: int, band: int, workers: int, width: int = 1, max_cells: int = 0) -> list[tuple[int, int]]:
    """[r0, r1) of each band of ``band`` rows, for ``workers`` threads.

    Where the count does not divide among the workers, the bands grow (equal, up to ``max_cells``
    rows × ``width`` each) to the lower multiple of ``workers``: three bands on two workers leave
    one waiting on the third (a 12 MP image's 45 rows of z in 16-row bands: its integer indexes took
    1,421 ms against 1,116 in two of 23, full-size model; the shipped one 360 against 320, a one-off timing).
    """
    if rows <= 0:
        return []
    count = -(-rows // band)
    if workers > 1 and count > workers and count % workers:
        fewer = count - count % workers
        if -(-rows // fewer) * width <= max_cells:
            count = fewer
    step = -(-rows // count)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def each(fn: Callable, items: Sequence, workers: int) -> None:
    """fn(item) for every item, on up to ``workers`` threads where there are several items.

    The work inside (onnxruntime runs, numpy products) releases the GIL; callers write
    disjoint parts of their outputs, so the result does not depend on the order.

    After a parallel loop the memory its threads freed goes back to the OS: glibc keeps it in
    per-thread heaps, and the band temporaries of the 8-bit integer convolutions (1-30 MB, under
    glibc's mmap threshold) kept a 50 MP decode's peak at 1,520-1,630 MB (1,170-1,270 MB with
    this; round trip 2,100 → 1,810–1,890 MB). A fixed mmap threshold instead slowed kodim23 by 10-20 ms.
    """
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(min(workers, len(items))) as pool:
            list(pool.map(fn, items))
        if _malloc_trim is not None:
            _malloc_trim(0)
    else:
        for item in items:
            fn(item)
