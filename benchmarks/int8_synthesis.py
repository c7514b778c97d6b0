"""Would an int8 synthesis pay? Speed and Kodak PSNR of a statically quantized decoder graph against fp32.

    python benchmarks/int8_synthesis.py ../shared/data/kodak --calibration ../shared/data/train
    python benchmarks/int8_synthesis.py ../shared/data/kodak --bundle runs/int8/bundle --base runs/bundle

The decoder graph is quantized with onnxruntime's static quantizer (QDQ, int8
per-channel weights, uint8 activations, every Conv), calibrated on ŷ of
training images, never Kodak. The same .onic files are then decoded by both
graphs: the question is the speed gained against the PSNR lost (issue 5's bar:
within 0.1 dB).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import codec
from codec import metrics, tiling
from codec.session import DEFAULT_BUNDLE, Bundle
from codec.speed import median_ms


def calibration_inputs(bundle: Bundle, folder: str, count: int, qualities: list[int]) -> list[dict[str, np.ndarray]]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    picks = np.random.default_rng(0).choice(len(paths), size=min(count, len(paths)), replace=False)
    out = []
    for i, k in enumerate(sorted(picks)):
        with Image.open(paths[k]) as im:
            # One size for all: the histogram calibrators stack their samples.
            rgb = np.asarray(im.convert("RGB").resize((384, 384), Image.BICUBIC))
        q = qualities[i % len(qualities)]
        gain, inv_gain = bundle.gains(q)
        y, z = tiling.analyse(bundle, rgb, gain)
        mu = tiling.hyper_decode(bundle, tiling.z_symbols(bundle, z, q), q)
        if bundle.slices:  # ŷ as the decoder makes it: slice by slice, with the residual prediction
            y_hat = tiling.conditional_latents(bundle, mu, np.empty(y.shape, dtype=np.int32), y)
        else:
            y_hat = np.round(y - mu) + mu
        out.append({"y_hat": y_hat[None], "inv_gain": inv_gain})
    return out


def quantized_bundle(calibration: list[dict[str, np.ndarray]], out: Path, method: str, keep: list[str]) -> Bundle:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    shutil.copytree(DEFAULT_BUNDLE, out)
    quantize_static(str(DEFAULT_BUNDLE / "decoder.onnx"), str(out / "decoder.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=keep)
    # Same symbols (the integer path and tables are the default's); only the synthesis differs.
    return Bundle(out, verify=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kodak")
    p.add_argument("--calibration", default="../shared/data/train")
    p.add_argument("--calibration_images", type=int, default=24)
    p.add_argument("--method", default="MinMax", choices=["MinMax", "Percentile", "Entropy"])
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 50, 100])
    p.add_argument("--keep_fp32", nargs="*", default=[], help="Conv node names to leave in fp32")
    p.add_argument("--bundle", help="instead of quantizing statically: an int8 bundle (python -m export.qat)")
    p.add_argument("--base", default=str(DEFAULT_BUNDLE),
                   help="the fp32 bundle whose files are decoded (with --bundle: the --base given to export.qat)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    a = p.parse_args()
    fp32 = Bundle(a.base)
    with tempfile.TemporaryDirectory() as tmp:
        if a.bundle:
            int8 = Bundle(a.bundle)
        else:
            int8 = quantized_bundle(calibration_inputs(fp32, a.calibration, a.calibration_images, a.qualities),
                                    Path(tmp) / "int8", a.method, a.keep_fp32)
        images = []
        for f in sorted(Path(a.kodak).glob("*.png"))[: a.limit or None]:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        print(f"{'quality':>7} {'PSNR fp32':>10} {'PSNR int8':>10} {'change dB':>10}")
        for q in a.qualities:
            p32, p8 = [], []
            for im in images:
                data = codec.compress(im, quality=q, bundle=fp32)
                p32.append(metrics.psnr(im, codec.decompress(data, bundle=fp32)))
                p8.append(metrics.psnr(im, codec.decompress(data, bundle=int8)))  # same symbols: also_decodes
            print(f"{q:>7} {np.mean(p32):>10.3f} {np.mean(p8):>10.3f} {np.mean(p8) - np.mean(p32):>+10.3f}")
        data = codec.compress(images[-1], quality=75, bundle=fp32)
        t32 = median_ms(lambda: codec.decompress(data, bundle=fp32), 5)
        t8 = median_ms(lambda: codec.decompress(data, bundle=int8), 5)
        print(f"decode of {images[-1].width}x{images[-1].height} at quality 75: fp32 {t32:.0f} ms, int8 {t8:.0f} ms "
              f"({t32 / t8:.2f}x)")


if __name__ == "__main__":
    main()
