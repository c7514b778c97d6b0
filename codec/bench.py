"""Rate-distortion and speed benchmark of onic against classical codecs (``onic bench``).

Per codec and quality point it records mean bpp (from real encoded byte counts),
mean RGB PSNR and MS-SSIM, and median encode/decode seconds per image (warm
process), in CompressAI's result layout, so that CompressAI's published curves
load with the same code (``load_curves``). BD-rates compare onic with every
other codec. matplotlib, scipy and tqdm come from the ``[bench]`` extra.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

from codec import metrics
from codec.batch import IMAGE_SUFFIXES
from codec.bdrate import bd_rate
from codec.bitstream import reason


class Unavailable(Exception):
    """A codec this machine cannot run (a missing plugin or library)."""


@dataclass
class Codec:
    name: str
    description: str
    qualities: list[int]
    encode: Callable[[Image.Image, int], bytes]
    decode: Callable[[bytes], Image.Image]


def _pillow_codec(name: str, fmt: str, description: str, qualities: list[int], **options) -> Codec:
    def encode(im: Image.Image, q: int) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, quality=q, **options)
        return buf.getvalue()

    def decode(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    return Codec(name, description, qualities, encode, decode)


REFINE_STEPS = 20  # onic-refine's default: --refine STEPS of the encoder (codec/refine.py)


def _onic(model: str | os.PathLike | None = None, refine: int = 0) -> Codec:
    import codec
    from codec.session import bundle_at

    b = bundle_at(model)
    name, extra = ("onic-refine", f", --refine {refine}") if refine else ("onic", "")
    return Codec(name, f"onic {codec.__version__}, model {b.model_id}, onnxruntime CPU{extra}",
                 list(range(0, 101, 10)), lambda im, q: codec.compress(im, quality=q, bundle=b, refine=refine),
                 lambda data: codec.decompress(data, bundle=b))


def _jpeg(subsampling: int, label: str) -> Callable[[], Codec]:
    def make() -> Codec:
        return _pillow_codec(
            f"jpeg{label}", "JPEG", f"JPEG {label or '4:2:0'}, Pillow {_pil()} (libjpeg-turbo "
            f"{features.version('jpg')})", [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
            subsampling=subsampling, optimize=True,
        )

    return make


def _webp() -> Codec:
    if not features.check("webp"):
        raise Unavailable("Pillow was built without WebP")
    return _pillow_codec("webp", "WEBP", f"WebP method 6, Pillow {_pil()} (libwebp {features.version('webp')})",
                         [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95], method=6)


AVIF_SPEED = 4


def _avif() -> Codec:
    if not features.check("avif"):
        raise Unavailable("Pillow was built without AVIF (needs Pillow ≥ 11.3 wheels)")
    return _pillow_codec("avif", "AVIF", f"AVIF speed {AVIF_SPEED}, 4:4:4, Pillow {_pil()} "
                         f"(libavif {features.version('avif')})", [10, 20, 30, 40, 50, 60, 70, 80, 90],
                         speed=AVIF_SPEED, subsampling="4:4:4")


JXL_EFFORT = 7


def _jxl() -> Codec:
    try:
        import pillow_jxl  # noqa: F401  (registers the JPEG XL plugin)
    except ImportError:
        raise Unavailable("JPEG XL needs pillow-jxl-plugin (pip install 'onic[bench]')") from None
    return _pillow_codec("jxl", "JXL", f"JPEG XL effort {JXL_EFFORT}, pillow-jxl-plugin",
                         [10, 20, 30, 40, 50, 60, 70, 80, 90, 95], effort=JXL_EFFORT)


def _heif() -> Codec:
    try:
        import pillow_heif
    except ImportError:
        raise Unavailable("HEIF needs pillow-heif (pip install 'onic[bench]')") from None
    pillow_heif.register_heif_opener()
    encoder = pillow_heif.libheif_info().get("HEIF") or "no HEVC encoder"
    return _pillow_codec("heif", "HEIF", f"HEIF 4:2:0 as phones write it, pillow-heif {pillow_heif.__version__} "
                         f"({encoder})", [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60], chroma="420")


def _pil() -> str:
    import PIL

    return PIL.__version__


CODECS: dict[str, Callable[[], Codec]] = {
    "onic": _onic,
    "onic-refine": lambda: _onic(refine=REFINE_STEPS),
    "jpeg": _jpeg(2, ""),
    "jpeg444": _jpeg(0, "444"),
    "webp": _webp,
    "avif": _avif,
    "jxl": _jxl,
    "heif": _heif,
}
DEFAULT_CODECS = "onic,jpeg,jpeg444,webp,avif,jxl,heif"


def read_image(path: str | os.PathLike) -> Image.Image:
    """An image file as every codec here is measured on: RGB, 8 bits, as onic codes it.

    ``api.reference`` scales 16-bit samples (Pillow's RGB conversion clips them, so a
    16-bit PNG came out white), reads JPEG XL and HEIF through their plugins and checks
    the size before the pixels. The alpha plane is left out: the benchmark compares colour.
    """
    from codec import api

    return api.reference(path).convert("RGB")


def first_image(paths: Iterable[str | os.PathLike], warn: Callable[[str], None]) -> str | None:
    """The first of ``paths`` that ``read_image`` reads, the others before it skipped with ``warn``."""
    for p in paths:
        try:
            read_image(p)
            return str(p)
        except MemoryError:
            raise
        except Exception as e:  # as in load_images
            warn(f"skipping {Path(p).name}: {reason(e)}")
    return None


def load_images(folder: str | os.PathLike, limit: int = 0,
                warn: Callable[[str], None] | None = None) -> list[tuple[str, Image.Image]]:
    """The folder's images (those ``onic compress FOLDER`` takes, sorted by name, the first ``limit``)
    by ``read_image``; one that cannot be read is skipped with ``warn`` (default: a UserWarning)."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for p in paths[: limit or None]:
        try:
            images.append((p.name, read_image(p)))
        except MemoryError:
            raise
        except Exception as e:  # OnicError of a bad or huge file, a missing plugin…
            message = f"skipping {p.name}: {reason(e)}"
            if warn is None:
                warnings.warn(message, stacklevel=2)
            else:
                warn(message)
    return images


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
    except ImportError:
        return None


def run_codec(c: Codec, images: list[tuple[str, Image.Image]], qualities: Iterable[int] | None = None) -> dict:
    """Encode and decode every image at every quality; CompressAI-style result dict plus per-image rows."""
    qualities = list(qualities or c.qualities)
    c.decode(c.encode(images[0][1], qualities[0]))  # warm-up: sessions, plugins, caches
    rows = []
    bar = _progress(len(qualities) * len(images), c.name)
    for q in qualities:
        for name, im in images:
            t0 = time.perf_counter()
            data = c.encode(im, q)
            t1 = time.perf_counter()
            out = c.decode(data)
            t2 = time.perf_counter()
            rows.append({
                "image": name, "quality": q, "bytes": len(data), "bpp": 8 * len(data) / (im.width * im.height),
                "psnr": metrics.psnr(im, out), "ms_ssim": metrics.ms_ssim(im, out),
                "encode_s": t1 - t0, "decode_s": t2 - t1,
            })
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    results: dict[str, list] = {k: [] for k in
                                ("quality", "bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")}
    for q in qualities:
        r = [row for row in rows if row["quality"] == q]
        results["quality"].append(q)
        results["bpp"].append(float(np.mean([x["bpp"] for x in r])))
        results["psnr-rgb"].append(float(np.mean([x["psnr"] for x in r])))
        results["ms-ssim-rgb"].append(float(np.mean([x["ms_ssim"] for x in r])))
        results["encoding_time"].append(float(np.median([x["encode_s"] for x in r])))
        results["decoding_time"].append(float(np.median([x["decode_s"] for x in r])))
    return {"name": c.name, "description": c.description, "results": results, "per_image": rows}


def load_curves(path: str | os.PathLike) -> dict[str, dict]:
    """name → CompressAI-style ``results`` from a CompressAI file, a folder of them, or our bench JSON."""
    path = Path(path)
    if path.is_dir():
        out = {}
        for f in sorted(path.glob("*.json")):
            out.update(load_curves(f))
        return out
    obj = json.loads(path.read_text())
    if "codecs" in obj:
        return {name: entry["results"] for name, entry in obj["codecs"].items()}
    return {obj.get("name", path.stem): obj["results"]}


def bd_rates(curves: dict[str, dict], ours: str = "onic") -> dict[str, dict[str, float]]:
    """BD-rate of ``ours`` against every other curve, over PSNR and over MS-SSIM in dB."""
    if ours not in curves:
        return {}
    o = curves[ours]
    out = {}
    for name, r in curves.items():
        if name == ours:
            continue
        out[name] = {
            "psnr": bd_rate(r["bpp"], r["psnr-rgb"], o["bpp"], o["psnr-rgb"]),
            "ms-ssim": bd_rate(r["bpp"], [metrics.ms_ssim_db(v) for v in r["ms-ssim-rgb"]],
                               o["bpp"], [metrics.ms_ssim_db(v) for v in o["ms-ssim-rgb"]]),
        }
    return out


def machine() -> dict:
    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "pillow": _pil()}


def write_csv(report: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["codec", "quality", "image", "bpp", "psnr_rgb", "ms_ssim_rgb", "encode_s", "decode_s"])
        for name, entry in report["codecs"].items():
            r = entry["results"]
            for i, q in enumerate(r["quality"]):
                w.writerow([name, q, "mean", r["bpp"][i], r["psnr-rgb"][i], r["ms-ssim-rgb"][i],
                            r["encoding_time"][i], r["decoding_time"][i]])
            for row in entry["per_image"]:
                w.writerow([name, row["quality"], row["image"], row["bpp"], row["psnr"], row["ms_ssim"],
                            row["encode_s"], row["decode_s"]])


def plot(report: dict, anchors: dict[str, dict], path: Path, max_bpp: float = 2.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for name, r, style in [(n, e["results"], "-") for n, e in report["codecs"].items()] + \
                          [(n, r, "--") for n, r in anchors.items()]:
        bpp = np.array(r["bpp"])
        keep = bpp <= max_bpp
        ours = name.startswith("onic")
        kw = dict(lw=2.6 if ours else 1.2, ls=style, marker="o" if style == "-" else None, ms=3,
                  label=name + (" (published)" if style == "--" else ""), zorder=3 if ours else 2)
        axes[0].plot(bpp[keep], np.array(r["psnr-rgb"])[keep], **kw)
        axes[1].plot(bpp[keep], [metrics.ms_ssim_db(v) for v in np.array(r["ms-ssim-rgb"])[keep]], **kw)
    for ax, ylabel in zip(axes, ["RGB PSNR (dB)", "MS-SSIM (dB)"], strict=True):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{report['dataset']} ({report['images']} images)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: dict) -> str:
    lines = [f"{'codec':<9}{'q':>4}{'bpp':>8}{'PSNR':>8}{'MS-SSIM':>9}{'enc ms':>9}{'dec ms':>9}"]
    for name, entry in report["codecs"].items():
        r = entry["results"]
        for i, q in enumerate(r["quality"]):
            lines.append(f"{name:<9}{q:>4}{r['bpp'][i]:>8.4f}{r['psnr-rgb'][i]:>8.2f}{r['ms-ssim-rgb'][i]:>9.4f}"
                         f"{1000 * r['encoding_time'][i]:>9.1f}{1000 * r['decoding_time'][i]:>9.1f}")
    for key, ours in (("bd_rate", "onic"), ("bd_rate_refine", "onic-refine")):
        if report.get(key):
            lines += ["", f"BD-rate of {ours} (negative = {ours} needs fewer bits at equal quality)",
                      f"{'vs':<40}{'PSNR':>9}{'MS-SSIM':>9}"]
            for name, v in report[key].items():
                lines.append(f"{name:<40}{_pct(v['psnr']):>9}{_pct(v['ms-ssim']):>9}")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.1f}%"


def run(folder: str | os.PathLike, codecs: list[str], qualities: list[int] | None = None,
        out: str | os.PathLike = "results", anchors: Iterable[str | os.PathLike] = (), limit: int = 0,
        warn: Callable[[str], None] = print, update: bool = False,
        model: str | os.PathLike | None = None, refine: int = REFINE_STEPS) -> dict:
    """Run the benchmark and write DIR_NAME.json, .csv and _rd.png into ``out``; returns the report.

    ``model`` is a bundle folder for onic (default: the shipped model); ``refine``
    the encoder's refinement steps for the codec onic-refine.
    ``update`` keeps the other codecs of an earlier DIR_NAME.json in ``out`` (same
    image count) and replaces only those run now: after retraining, rerun onic alone.
    """
    folder = Path(folder)
    images = load_images(folder, limit, warn)
    if not images:
        raise ValueError(f"no images in {folder}")
    report = {"dataset": folder.resolve().name, "images": len(images), "machine": machine(), "codecs": {}}
    previous = Path(out) / f"{report['dataset']}.json"
    if update and previous.exists():
        old = json.loads(previous.read_text())
        if old.get("images") != len(images):
            raise ValueError(f"{previous} holds {old.get('images')} images, this run {len(images)}: cannot update")
        report["codecs"] = {k: v for k, v in old["codecs"].items() if k not in codecs}
    for name in codecs:
        if name not in CODECS:
            raise ValueError(f"unknown codec {name!r} (choose from {', '.join(CODECS)})")
        try:
            c = _onic(model, refine if name == "onic-refine" else 0) if name.startswith("onic") else CODECS[name]()
        except Unavailable as e:
            warn(f"skipping {name}: {e}")
            continue
        report["codecs"][name] = run_codec(c, images, qualities)
    # CODECS' order, whichever were rerun: an update keeps the table's and the plot's order.
    order = list(CODECS)
    report["codecs"] = dict(sorted(report["codecs"].items(),
                                   key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    anchor_curves = {}
    for a in anchors:
        anchor_curves.update(load_curves(a))
    curves = {n: e["results"] for n, e in report["codecs"].items()}
    everything = {**{f"{n} (published)": r for n, r in anchor_curves.items()}, **curves}
    report["bd_rate"] = bd_rates(everything)
    report["bd_rate_refine"] = bd_rates(everything, "onic-refine")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = report["dataset"]
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    write_csv(report, out / f"{stem}.csv")
    plot(report, anchor_curves, out / f"{stem}_rd.png")
    return report
