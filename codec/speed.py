"""Speed and memory of onic, beside Pillow's decoders and CompressAI's PyTorch model (``onic bench --speed``).

Everything runs warm (sessions created, one burn-in) and reports the median
of ``repeat`` runs, on this machine, in this run, so every number has a
ratio beside it. Peak memory comes from a fresh child process (peak_rss_mb),
so it is the whole process, Python and onnxruntime included.
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, features

import codec
from codec import profile
from codec.bench import read_image
from codec.session import Bundle, bundle_at
from codec.threads import cores


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall-clock ms of ``repeat`` calls after one burn-in call."""
    fn()  # burn-in
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _stages(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median ms per profiled stage over ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        with profile.record() as totals:
            fn()
        runs.append(dict(totals))
    return {k: 1000 * statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}


def large_image(image: Image.Image, megapixels: float) -> Image.Image:
    """A photo-sized test image: the input upscaled (Lanczos) to about ``megapixels``."""
    scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def onic_times(image: Image.Image, quality: int, repeat: int, bundle: Bundle | None = None) -> dict:
    bundle = bundle or bundle_at(None)
    data = codec.compress(image, quality, bundle)
    mp = image.width * image.height / 1e6
    enc = median_ms(lambda: codec.compress(image, quality, bundle), repeat)
    dec = median_ms(lambda: codec.decompress(data, bundle), repeat)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.onic"
        io_ms = median_ms(lambda: (path.write_bytes(data), path.read_bytes()), repeat)
    return {
        "size": f"{image.width}x{image.height}", "bpp": 8 * len(data) / (mp * 1e6),
        "encode_ms": enc, "decode_ms": dec, "encode_mp_s": mp / enc * 1000, "decode_mp_s": mp / dec * 1000,
        "file_io_ms": io_ms,
        "encode_stages_ms": _stages(lambda: codec.compress(image, quality, bundle), max(1, repeat // 2)),
        "decode_stages_ms": _stages(lambda: codec.decompress(data, bundle), max(1, repeat // 2)),
    }


def _pillow_peers() -> dict[str, dict]:
    peers = {"jpeg": {"format": "JPEG", "quality": 75}, "webp": {"format": "WEBP", "quality": 75, "method": 6}}
    if features.check("avif"):
        peers["avif"] = {"format": "AVIF", "quality": 60, "speed": 4}
    try:
        import pillow_jxl  # noqa: F401

        peers["jxl"] = {"format": "JXL", "quality": 75, "effort": 7}
    except ImportError:
        pass
    return peers


def pillow_decode_times(image: Image.Image, repeat: int) -> dict[str, dict]:
    out = {}
    for name, opts in _pillow_peers().items():
        buf = io.BytesIO()
        image.save(buf, **opts)
        data = buf.getvalue()

        def decode(data=data) -> None:
            with Image.open(io.BytesIO(data)) as im:
                im.load()

        out[name] = {"bpp": 8 * len(data) / (image.width * image.height), "decode_ms": median_ms(decode, repeat)}
    return out


PEER_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compressai_peer.py"


def compressai_times(python: str, width: int, height: int, repeat: int, bundle: Bundle | None = None,
                     threads: int = 0) -> dict:
    """CompressAI's mean-scale hyperprior of onic's size (random weights), run by another interpreter
    on ``threads`` of torch's threads (0: torch's default)."""
    cfg = (bundle or bundle_at(None)).manifest["config"]
    if not PEER_SCRIPT.exists():
        raise RuntimeError(f"the CompressAI comparison needs the onic source tree ({PEER_SCRIPT} is missing)")
    r = subprocess.run([python, str(PEER_SCRIPT), str(cfg["N"]), str(cfg["M"]), str(width), str(height),
                        str(repeat), str(threads)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"CompressAI run failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def startup_ms(small_onic: Path, repeat: int = 5) -> dict[str, float]:
    """Whole-process wall time: `import codec`, and `onic decompress` of a small file."""
    def run(args: list[str]) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    out = small_onic.with_suffix(".png")
    return {
        "python_ms": run(["-c", "pass"]),
        "import_codec_ms": run(["-c", "import codec"]),
        "decompress_process_ms": run(["-m", "codec.cli", "decompress", str(small_onic), "-o", str(out), "--force"]),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's VmHWM where there is one.

    Not ``ru_maxrss`` there: Linux carries the parent's peak into a child across fork and exec,
    so a child spawned by a process that had held more (speed.py, after its 12 MP runs) reported
    the parent's peak as its own (a 1 GiB parent: ru_maxrss 1,051 MiB, VmHWM 13 MiB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def peak_rss_round_trip(width: int, height: int, quality: int, bundle: str | None = None) -> dict:
    """Compress and decompress a synthetic photo-like image of width × height in a fresh process,
    with the bundle folder ``bundle`` (default: the shipped one)."""
    code = f"""
import time, numpy as np
from PIL import Image
import codec
from codec.session import Bundle, default_bundle
from codec.speed import peak_rss_mb
bundle = Bundle({bundle!r}) if {bundle!r} else default_bundle()
rng = np.random.default_rng(0)
small = rng.integers(0, 256, size=({height} // 64 + 1, {width} // 64 + 1, 3), dtype=np.uint8)
image = Image.fromarray(small).resize(({width}, {height}), Image.BICUBIC)
base = peak_rss_mb()
t0 = time.perf_counter(); data = codec.compress(image, {quality}, bundle); t1 = time.perf_counter()
out = codec.decompress(data, bundle); t2 = time.perf_counter()
assert out.size == image.size
print(base, peak_rss_mb(), t1 - t0, t2 - t1, len(data))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    base, peak, enc, dec, size = r.stdout.split()
    image_mb = width * height * 3 / 2**20
    return {"size": f"{width}x{height}", "megapixels": width * height / 1e6, "peak_rss_mb": float(peak),
            "rss_before_mb": float(base), "image_mb": image_mb, "encode_s": float(enc), "decode_s": float(dec),
            "bytes": int(size)}


def machine() -> dict:
    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "cores": cores(),
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def run(image_path: str, quality: int = 75, repeat: int = 5, megapixels: float = 12.0,
        compressai_python: str | None = None, big_megapixels: float = 0.0, model: str | None = None,
        tile_workers: int = 0, threads: int = 0) -> dict:
    """The whole report; ``model`` is a bundle folder (default: the shipped model); ``megapixels`` 0
    leaves out the large image; ``tile_workers`` and ``threads`` as in ``Bundle`` (tile_workers 1:
    large images on one thread's tiles, to compare with the default; threads 1: everything on one
    core, CompressAI too)."""
    bundle = bundle_at(model, threads)
    if tile_workers:
        bundle = Bundle(bundle.path, threads=threads, tile_workers=tile_workers)
    image = read_image(image_path)
    cfg = bundle.manifest["config"]
    report: dict = {"machine": machine(), "image": Path(image_path).name, "quality": quality,
                    "model": f"{bundle.model_id} (N={cfg['N']}, M={cfg['M']})", "threads": bundle.threads}
    report["onic"] = onic_times(image, quality, repeat, bundle)
    report["pillow"] = pillow_decode_times(image, repeat)
    if megapixels > 0:
        large = large_image(image, megapixels)
        report["onic_large"] = onic_times(large, quality, max(1, repeat // 3), bundle)
        report["pillow_large"] = pillow_decode_times(large, max(1, repeat // 3))
    if compressai_python:
        report["compressai"] = compressai_times(compressai_python, image.width, image.height, repeat, bundle,
                                                threads)
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.onic"
        small.write_bytes(codec.compress(image.crop((0, 0, 128, 128)), quality))
        report["startup"] = startup_ms(small)
    if big_megapixels:
        side = (big_megapixels * 1e6 / 1.5) ** 0.5
        report["memory"] = peak_rss_round_trip(round(side * 1.5), round(side), quality,
                                               None if model is None else str(bundle.path))
    report["self_peak_rss_mb"] = peak_rss_mb()
    return report


def format_report(r: dict) -> str:
    m = r["machine"]
    lines = [f"{m['cpu']}, {m['cpus']} CPUs, {r.get('threads') or m.get('cores', '?')} threads, onnxruntime "
             f"{m['onnxruntime']}; model {r.get('model', '?')}; "
             f"quality {r['quality']}; median of warm runs", ""]
    for key, label in (("onic", r["image"]), ("onic_large", "large")):
        if key not in r:  # megapixels 0: no large image
            continue
        o = r[key]
        lines += [f"onic on {label} ({o['size']}, {o['bpp']:.3f} bpp): encode {o['encode_ms']:.0f} ms "
                  f"({o['encode_mp_s']:.2f} MP/s), decode {o['decode_ms']:.0f} ms ({o['decode_mp_s']:.2f} MP/s), "
                  f"file write+read {o['file_io_ms']:.2f} ms"]
        for what in ("encode", "decode"):
            stages = ", ".join(f"{k} {v:.0f}" for k, v in sorted(o[f"{what}_stages_ms"].items(), key=lambda kv: -kv[1]))
            lines.append(f"  {what} stages (ms): {stages}")
        peers = r["pillow" if key == "onic" else "pillow_large"]
        lines.append(f"  {'decoder':<10}{'bpp':>7}{'decode ms':>11}{'onic / it':>11}")
        lines.append(f"  {'onic':<10}{o['bpp']:>7.3f}{o['decode_ms']:>11.1f}{1:>11.2f}")
        for name, p in peers.items():
            lines.append(f"  {name:<10}{p['bpp']:>7.3f}{p['decode_ms']:>11.1f}{o['decode_ms'] / p['decode_ms']:>11.2f}")
        lines.append("")
    if "compressai" in r:
        c, o = r["compressai"], r["onic"]
        lines.append(f"CompressAI {c['compressai']} MeanScaleHyperprior, same N/M, torch {c['torch']} "
                     f"({c['threads']} threads) on {r['image']}: encode {c['encode_ms']:.0f} ms, decode "
                     f"{c['decode_ms']:.0f} ms -> onic decodes {c['decode_ms'] / o['decode_ms']:.2f}x and "
                     f"encodes {c['encode_ms'] / o['encode_ms']:.2f}x as fast")
    s = r["startup"]
    lines.append(f"start-up: python {s['python_ms']:.0f} ms, import codec {s['import_codec_ms']:.0f} ms, "
                 f"`onic decompress` of a 128x128 file as a whole process {s['decompress_process_ms']:.0f} ms")
    if "memory" in r:
        mem = r["memory"]
        lines.append(f"{mem['megapixels']:.1f} MP round trip ({mem['size']}): peak RSS {mem['peak_rss_mb']:.0f} MB "
                     f"(the RGB image alone is {mem['image_mb']:.0f} MB), encode {mem['encode_s']:.1f} s, "
                     f"decode {mem['decode_s']:.1f} s")
    return "\n".join(lines)
