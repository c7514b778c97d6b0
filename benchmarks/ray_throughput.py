"""Images per second: `onic compress --ray` against `onic compress --jobs N` on one folder.

    python benchmarks/ray_throughput.py ../shared/data/kodak [--jobs 2] [--quality 75]

Both run as the command a user types, in a fresh process, into empty folders;
the table gives the wall time of the whole command (Ray's start-up included)
and, for Ray, the rate the job itself reports (its start-up excluded), which is
what grows with workers on a cluster.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "codec.cli", *args], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"onic {' '.join(args)} failed: {r.stderr.strip()}")
    return time.perf_counter() - t0, r.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quality", type=int, default=75)
    a = p.parse_args()
    images = [f for f in Path(a.folder).iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}]
    n = len(images)
    with tempfile.TemporaryDirectory() as tmp:
        jobs_s, _ = timed(["compress", a.folder, "--out-dir", f"{tmp}/jobs", "--jobs", str(a.jobs), "-q",
                           str(a.quality), "--quiet"])
        ray_s, err = timed(["compress", a.folder, "--out-dir", f"{tmp}/ray", "--ray", "-q", str(a.quality)])
        rerun_s, err2 = timed(["compress", a.folder, "--out-dir", f"{tmp}/ray", "--ray", "-q", str(a.quality)])
        same = all((Path(tmp) / "jobs" / f.with_suffix(".onic").name).read_bytes()
                   == (Path(tmp) / "ray" / f.with_suffix(".onic").name).read_bytes() for f in images)
    job_rate = float(re.search(r"\(([\d.]+) images/s\)", err).group(1))
    print(f"{n} images from {a.folder}, quality {a.quality}, this machine's CPUs; outputs identical: {same}\n")
    print(f"{'command':<38}{'wall s':>8}{'images/s':>10}")
    print(f"{f'onic compress --jobs {a.jobs}':<38}{jobs_s:>8.1f}{n / jobs_s:>10.2f}")
    print(f"{'onic compress --ray (local)':<38}{ray_s:>8.1f}{n / ray_s:>10.2f}")
    print(f"{'  the Ray job alone (no start-up)':<38}{'':>8}{job_rate:>10.2f}")
    print(f"{'  rerun: every output verified, skipped':<38}{rerun_s:>8.1f}{'':>10}")


if __name__ == "__main__":
    main()
