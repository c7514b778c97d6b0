"""A/B speed of two or more source trees, each timed in processes of its own, alternated.

This machine's speed drifts by up to 2× within an hour, so a before/after pair of
single runs says little. Each round runs every tree once, in a fresh process
(median of --repeat warm round trips there), in turn; the table gives each tree's
per-round medians, their median and the median of its per-round speed-ups over
the first tree (the first tree's time over its own, in the same round).

    git worktree add /tmp/before <commit>
    python benchmarks/ab_speed.py ../shared/data/kodak/kodim23.png /tmp/before . --rounds 5
    python benchmarks/ab_speed.py IMAGE . . --env ONIC_X=1   # the same tree, an environment change
    python benchmarks/ab_speed.py IMAGE /tmp/before . --model runs/full   # each tree's own export of full.pt
    python benchmarks/ab_speed.py IMAGE /tmp/before . --synthesis-threads 1   # and the synthesis alone
    python benchmarks/ab_speed.py IMAGE . --model runs/a/bundle --model runs/b/bundle   # two bundles, one tree

With several --model, every tree runs every bundle (tree by tree, bundle by bundle, in each
round); the first of these runs is the one the speed-ups are over.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs inside each tree's process: its own codec package, warm sessions, stage-free timing.
CHILD = r"""
import hashlib, json, sys, time
import numpy as np
from PIL import Image
import codec
from codec.session import bundle_at
image, quality, repeat, megapixels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
bundle = bundle_at(sys.argv[5] or None)
im = Image.open(image).convert("RGB")
if megapixels:
    s = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
    im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
def median_ms(fn):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))
data = codec.compress(im, quality=quality, bundle=bundle)
result = {"encode": median_ms(lambda: codec.compress(im, quality=quality, bundle=bundle)),
          "decode": median_ms(lambda: codec.decompress(data, bundle=bundle)),
          "pixels": hashlib.sha256(np.asarray(codec.decompress(data, bundle=bundle)).tobytes()).hexdigest(),
          "bytes": len(data)}
threads = int(sys.argv[6])
if threads:  # the synthesis alone, on the file's ŷ, with sessions of that many threads
    from codec import api, bitstream, tiling
    from codec.session import Bundle
    b = Bundle(bundle.path, threads=threads)
    y_hat = api._latents(bitstream.unpack(data, bitstream.MAX_PIXELS), b)
    _, inv_gain = b.gains(quality)
    result["synthesis"] = median_ms(lambda: tiling.synthesize(b, y_hat, inv_gain, im.height, im.width))
print(json.dumps(result))
"""


def run_once(tree: Path, image: str, quality: int, repeat: int, megapixels: float, model: str, threads: int,
             env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, image, str(quality), str(repeat), str(megapixels), model,
                          str(threads)],
                         cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), **env},
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"ab_speed: {tree} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("trees", nargs="+", help="source checkouts (folders holding codec/)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=9, help="warm round trips per process")
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--megapixels", type=float, default=0.0, help="upscale the image to this size first (0: as is)")
    p.add_argument("--model", action="append", default=[],
                   help="a bundle folder, relative to each tree (default: its shipped one), e.g. the full-size model "
                   "exported by each tree's own export.bundle; repeat it to time several bundles")
    p.add_argument("--synthesis-threads", type=int, default=0, metavar="N",
                   help="also time the synthesis alone (the decoder graph on the file's ŷ) with N-thread sessions")
    p.add_argument("--env", action="append", default=[],
                   help="NAME=VALUE for the last tree's processes (to A/B a setting in one tree)")
    a = p.parse_args()
    trees = [Path(t).resolve() for t in a.trees]
    a.image = str(Path(a.image).resolve())
    extra = dict(e.split("=", 1) for e in a.env)
    runs = [(t, model) for t in range(len(trees)) for model in a.model or [""]]  # --env goes to the last tree
    results: list[list[dict]] = [[] for _ in runs]
    for r in range(a.rounds):
        for i, (t, model) in enumerate(runs):
            env = extra if t == len(trees) - 1 else {}
            results[i].append(run_once(trees[t], a.image, a.quality, a.repeat, a.megapixels, model,
                                       a.synthesis_threads, env))
        print(f"round {r + 1}: " + "  ".join(f"{res[-1]['decode']:.0f}/{res[-1]['encode']:.0f}" for res in results),
              file=sys.stderr)
    # Speed-ups per round (the first tree's time over this one's, in the same round), so that the
    # machine's drift between rounds cancels; their median is the table's ratio.
    def ratio(res: list[dict], key: str) -> float:
        return statistics.median(b[key] / x[key] for b, x in zip(results[0], res, strict=True))

    def label(t: int, model: str) -> str:
        env = " ".join(a.env) if t == len(trees) - 1 else ""
        return " ".join(part for part in (str(trees[t]), model if len(a.model) > 1 else "", env) if part)

    labels = [label(t, model) for t, model in runs]
    w = max(40, *map(len, labels))  # the whole label: tree, bundle and environment
    print(f"{'tree':{w}} {'decode ms, each round':>30} {'median':>7} {'speed-up':>8}  "
          f"{'encode ms':>9} {'speed-up':>8}  same pixels and bytes")
    for name, res in zip(labels, results, strict=True):
        dec = [x["decode"] for x in res]
        enc = statistics.median(x["encode"] for x in res)
        same = all(x["pixels"] == results[0][0]["pixels"] and x["bytes"] == results[0][0]["bytes"] for x in res)
        print(f"{name:{w}} {' '.join(f'{d:.0f}' for d in dec):>30} {statistics.median(dec):7.1f} "
              f"{ratio(res, 'decode'):8.2f}  {enc:9.1f} {ratio(res, 'encode'):8.2f}  {same}")
    if a.synthesis_threads:
        print(f"\nthe synthesis alone, {a.synthesis_threads}-thread sessions")
        for name, res in zip(labels, results, strict=True):
            ms = [x["synthesis"] for x in res]
            print(f"{name:{w}} {' '.join(f'{d:.0f}' for d in ms):>30} {statistics.median(ms):7.1f} "
                  f"{ratio(res, 'synthesis'):8.2f}")


if __name__ == "__main__":
    main()
