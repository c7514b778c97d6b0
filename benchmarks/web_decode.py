"""Decode time in a web browser (web/, headless Chromium) against the Python runtime, same files.

    python benchmarks/web_decode.py ../shared/data/kodak/kodim23.png [--megapixels 12] [--repeat 5] [--threads 1 2]

Each image is coded once at --quality; the Python runtime decodes it --repeat times after a
warm-up (median), and so does the page in Chromium, once per onnxruntime-web thread count.
A second table gives what a page downloads: the model files the decoder fetches, the
JavaScript and onnxruntime-web's WebAssembly, raw and gzipped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from codec import api
from codec.session import DEFAULT_BUNDLE, Bundle
from codec.speed import large_image, median_ms
from codec.webview import WEB_DIR, serve_in_background, web_dir

ORT_DIST = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
DECODER_FILES = ("tables.npz", "scale_path.npz", "hyper_decoder.onnx", "decoder.onnx")  # and the slice graphs


def decoder_files(bundle: Path) -> list[Path]:
    """The files a page fetches (web/src/bundle.js): DECODER_FILES and a channel-conditional model's slice graphs."""
    b = Bundle(bundle, verify=False)
    priors = b.slice_prior  # onic 0.11.0's bundles on
    graphs = [g for k in range(len(b.slices))
              for g in ([f"slice_prior{k}"] if priors else []) + ([f"slice_mean{k}"] if k else []) + [f"slice_lrp{k}"]]
    return [bundle / n for n in (*DECODER_FILES, *(f"{g}.onnx" for g in graphs))]


def download_bytes() -> dict[str, tuple[int, int]]:
    """(bytes, gzip -9 bytes) of what a page fetches: model files, our JavaScript (and pako's), onnxruntime-web."""
    groups = {
        "model": decoder_files(DEFAULT_BUNDLE),
        "javascript": [*(WEB_DIR / "src").glob("*.js"), WEB_DIR / "node_modules" / "pako" / "dist" / "pako.esm.mjs"],
        "onnxruntime-web": [ORT_DIST / n for n in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs",
                                                   "ort-wasm-simd-threaded.wasm")],
    }
    out = {}
    for name, files in groups.items():
        data = [f.read_bytes() for f in files]
        out[name] = (sum(map(len, data)), sum(len(gzip.compress(d, 9)) for d in data))
    return out


def browser_times(files: dict[str, Path], repeat: int, threads: int, chromium: str) -> dict:
    server, url = serve_in_background(list(files.values()), DEFAULT_BUNDLE)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tasks = Path(tmp) / "tasks.json"
            tasks.write_text(json.dumps([{"name": n, "url": f"/files/{i}/{p.name}", "repeat": repeat + 1}
                                         for i, (n, p) in enumerate(files.items())]))
            out = subprocess.run(["node", str(WEB_DIR / "test" / "browser.mjs"), url, str(tasks), str(threads)],
                                 capture_output=True, text=True, cwd=WEB_DIR,
                                 env={**os.environ, "ONIC_CHROMIUM": chromium})
            if out.returncode:
                raise SystemExit(f"the browser run failed:\n{out.stderr[-2000:]}")
    finally:
        server.shutdown()
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--megapixels", type=float, default=12.0, help="also the image upscaled to this size (0: not)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime-web thread counts")
    p.add_argument("--chromium", default=os.environ.get("ONIC_CHROMIUM") or shutil.which("chromium") or "")
    a = p.parse_args()
    web_dir()
    with Image.open(a.image) as im:
        image = im.convert("RGB")
    images = {f"{image.width}x{image.height}": image}
    if a.megapixels:
        big = large_image(image, a.megapixels)
        images[f"{big.width}x{big.height}"] = big
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, im in images.items():
            files[name] = Path(tmp) / f"{name}.onic"
            files[name].write_bytes(api.compress(im, a.quality))
        python = {}
        for name, path in files.items():
            data = path.read_bytes()
            api.decompress(data)
            python[name] = median_ms(lambda data=data: api.decompress(data), a.repeat)
        runs = {t: browser_times(files, a.repeat, t, a.chromium) for t in a.threads}
    first = next(iter(runs.values()))
    sizes = download_bytes()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {first['userAgent']}")
    print(f"# quality {a.quality}, median of {a.repeat} warm decodes")
    head = "| image | Python runtime | " + " | ".join(f"browser, {t} thread{'s' * (t > 1)}" for t in runs) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in files:
        cells = []
        for r in runs.values():
            t = next(x for x in r["results"] if x["name"] == name)["timings"]
            cells.append(f"{t['total_ms']:.0f} ms (entropy + integer path {t['entropy_and_integer_ms']:.0f}, "
                         f"μ {t['hyper_decoder_ms']:.0f}, synthesis {t['synthesis_ms']:.0f})")
        print(f"| {name} | {python[name]:.0f} ms | " + " | ".join(cells) + " |")
    print("\n| a page downloads | bytes | gzip -9 |\n|---|---|---|")
    for name, (raw, packed) in sizes.items():
        print(f"| {name} | {raw / 1e6:.2f} MB | {packed / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
