"""What the int8 analysis costs: Kodak rate and PSNR of a bundle's encodes with analysis_int8.onnx
against its float analysis, and the graphs' time on one thread.

    python -m export.analysis_int8 runs/w7/bundle --calibration ../shared/data/train
    python benchmarks/analysis_int8.py ../shared/data/kodak --model runs/w7/bundle

Every image is encoded twice at each quality (same bundle, same decoder: only the
latents the encoder picks differ) and decoded; the table gives mean bpp (real file
sizes) and RGB PSNR of each, their differences and the BD-rate of the int8 analysis'
curve against the float one's (Bjøntegaard, piecewise cubic, codec/bdrate.py). A second
table codes synthetic images (``synthetic_images``: a colour gradient, colour bars, black
text on white, flat black, noise), the content where one 8-bit grid per tensor fails:
saturated flat colours clip, and flat areas round the same way everywhere. The graphs are
timed on the folder's first image, one thread, alternated, median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw

import codec
from codec import bdrate, bench, metrics, tiling
from codec.session import INT8_ANALYSIS, Bundle


def curve(bundle: Bundle, images: list, qualities: list[int]) -> tuple[list[float], list[float]]:
    bpp, psnr = [], []
    for q in qualities:
        rows = []
        for _, im in images:
            data = codec.compress(im, q, bundle)
            rows.append((8 * len(data) / (im.width * im.height), metrics.psnr(im, codec.decompress(data, bundle))))
        bpp.append(float(np.mean([r[0] for r in rows])))
        psnr.append(float(np.mean([r[1] for r in rows])))
    return bpp, psnr


def synthetic_images() -> list[tuple[str, Image.Image]]:
    """Small synthetic images (512×384 but one) of the kinds a photo-calibrated int8 layer gets wrong."""
    w, h = 512, 384
    ramp = np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8)
    gradient = np.stack([ramp, np.zeros_like(ramp), 255 - ramp], axis=-1)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 0, 0),
               (255, 255, 255)]
    bars = np.zeros((h, w, 3), np.uint8)
    for i, c in enumerate(colours):
        bars[:, i * w // len(colours) : (i + 1) * w // len(colours)] = c
    text = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(text)
    for i in range(20):
        draw.text((10, 10 + 18 * i), "The quick brown fox jumps over the lazy dog 0123456789", fill=(0, 0, 0))
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [("gradient", Image.fromarray(gradient)), ("colour bars", Image.fromarray(bars)), ("text", text),
            ("black", Image.new("RGB", (256, 256))), ("noise", Image.fromarray(noise))]


def graph_ms(bundle: Bundle, image, repeat: int) -> dict[str, float]:
    """Median ms of each analysis graph on ``image`` (one thread), the two alternated."""
    rgb = np.asarray(image)
    s = bundle.stride
    hp, wp = -(-rgb.shape[0] // s) * s, -(-rgb.shape[1] // s) * s
    x = tiling._window(rgb, 0, hp, 0, wp)
    gain, _ = bundle.gains(75)
    times: dict[str, list[float]] = {"analysis": [], INT8_ANALYSIS: []}
    for graph in times:
        bundle.run(graph, single_thread=True, x=x, gain=gain)  # warm-up
    for _ in range(repeat):
        for graph, ts in times.items():
            t = time.perf_counter()
            bundle.run(graph, single_thread=True, x=x, gain=gain)
            ts.append(time.perf_counter() - t)
    return {g: 1e3 * float(np.median(ts)) for g, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--model", required=True, help="a bundle with analysis_int8.onnx (export/analysis_int8.py)")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 25, 50, 75, 100])
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    fast, exact = Bundle(a.model), Bundle(a.model, float_analysis=True)
    if fast.analysis_graph != INT8_ANALYSIS:
        raise SystemExit(f"{a.model} has no {INT8_ANALYSIS}.onnx: python -m export.analysis_int8 {a.model}")
    images = bench.load_images(a.folder)
    ms = graph_ms(fast, images[0][1], a.repeat)
    b0, p0 = curve(exact, images, a.qualities)
    b1, p1 = curve(fast, images, a.qualities)
    print(f"{a.model} (model {fast.model_id}); {len(images)} images from {a.folder}; {bench.machine()}")
    print(f"analysis on {images[0][0]}, one thread: float {ms['analysis']:.0f} ms, "
          f"int8 {ms[INT8_ANALYSIS]:.0f} ms ({ms['analysis'] / ms[INT8_ANALYSIS]:.2f}x)")
    print("| quality | float bpp | float dB | int8 bpp | int8 dB | Δ rate | Δ dB |")
    print("|---|---|---|---|---|---|---|")
    for q, x0, y0, x1, y1 in zip(a.qualities, b0, p0, b1, p1, strict=True):
        print(f"| {q} | {x0:.4f} | {y0:.3f} | {x1:.4f} | {y1:.3f} | {100 * (x1 / x0 - 1):+.2f}% | {y1 - y0:+.3f} |")
    if len(a.qualities) >= 4:
        print(f"BD-rate of the int8 analysis against the float one: {bdrate.bd_rate(b0, p0, b1, p1):+.2f}%")
    print("\n| synthetic image | quality | float bpp | float dB | int8 bpp | int8 dB | Δ dB |")
    print("|---|---|---|---|---|---|---|")
    for name, im in synthetic_images():
        for q in (50, 100):
            (x0,), (y0,) = curve(exact, [(name, im)], [q])
            (x1,), (y1,) = curve(fast, [(name, im)], [q])
            print(f"| {name} | {q} | {x0:.3f} | {y0:.2f} | {x1:.3f} | {y1:.2f} | {y1 - y0:+.2f} |")


if __name__ == "__main__":
    main()
