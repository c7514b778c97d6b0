"""What encoder-side refinement costs in time and memory, and buys, at several image sizes.

    python benchmarks/refine_cost.py ../shared/data/kodak/kodim23.png --steps 20 --megapixels 0 12 [50]

Each size (0: the image as it is; otherwise the image upscaled with Lanczos to about that
many megapixels) is coded twice in a fresh process of its own, plain and with ``--steps``
of refinement, and decoded; it prints encode seconds, seconds per step, the process's
peak RSS (ru_maxrss, Python and onnxruntime included), bpp and RGB PSNR.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import resource, sys, time
from PIL import Image
import codec
from codec import metrics, speed
image = Image.open(sys.argv[1]).convert("RGB")
mp, quality, steps = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if mp:
    image = speed.large_image(image, mp)
t0 = time.perf_counter()
data = codec.compress(image, quality, refine=steps)
t1 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = codec.decompress(data)
print(image.width, image.height, t1 - t0, peak, 8 * len(data) / (image.width * image.height), metrics.psnr(image, out))
"""


def measure(path: str, megapixels: float, quality: int, steps: int) -> list[float]:
    r = subprocess.run([sys.executable, "-c", CHILD, path, str(megapixels), str(quality), str(steps)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr.strip().splitlines()[-1])
    return [float(v) for v in r.stdout.split()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--megapixels", type=float, nargs="+", default=[0.0, 12.0])
    a = p.parse_args()
    print(f"{'size':>11} {'steps':>5} {'encode s':>9} {'s/step':>7} {'peak MiB':>9} {'bpp':>7} {'PSNR':>6}")
    for mp in a.megapixels:
        plain = measure(a.image, mp, a.quality, 0)
        refined = measure(a.image, mp, a.quality, a.steps)
        for steps, (w, h, secs, peak, bpp, psnr) in ((0, plain), (a.steps, refined)):
            per_step = f"{(secs - plain[2]) / steps:7.2f}" if steps else f"{'':>7}"
            print(f"{int(w):>5}x{int(h):<5} {steps:>5} {secs:>9.2f} {per_step} {peak:>9.0f} {bpp:>7.4f} {psnr:>6.2f}")


if __name__ == "__main__":
    main()
