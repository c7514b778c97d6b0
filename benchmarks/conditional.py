"""Channel-conditional entropy model against the plain hyperprior: rate-distortion, speed, integer-path cost.

    python benchmarks/conditional.py ../shared/data/kodak OLD.pt NEW.pt [--qualities 0 20 40 60 80 100]

Both checkpoints are exported to bundles here (the integer scale path
calibrated on training images, never the test set), every image is coded at
every quality with real file sizes, and the table gives, per checkpoint:
- mean bpp and RGB PSNR per quality, and the BD-rate of each against the first;
- the median encode and decode time at 768×512 (the first image) and at 12 MP
  (that image upscaled), on this machine, in this run;
- the integer path's rate cost: the y bytes coded with its indexes against
  indexes from the float σ of the PyTorch model (the same symbols either way);
- with ``--big-megapixels N``, the peak memory of an N-megapixel round trip in a
  fresh process (codec.speed.peak_rss_round_trip).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codec import api, bench, entropy, intscale, tiling
from codec.bdrate import bd_rate
from codec.session import Bundle
from codec.speed import large_image, median_ms, peak_rss_round_trip
from export import bundle as export_bundle
from export import tables
from export.train import load_model


def float_sigma_bytes(model, bundle: Bundle, im: Image.Image, quality: int) -> tuple[int, int]:
    """(y bytes with the integer path's indexes, y bytes with the float σ's) for the same symbols."""
    b = bundle
    gain, _ = b.gains(quality)
    y, z = tiling.analyse(b, np.asarray(im), gain)
    z_sym = tiling.z_symbols(b, z, quality)
    zi = b.hyper_input(z_sym, quality)
    with torch.no_grad():
        y_t = torch.from_numpy(y)[None]
        _, mu, sigma = model.entropy_parameters(y_t, torch.from_numpy(zi)[None])
    sym = torch.round(y_t - mu)[0].numpy().astype(np.int32)
    float_ids = intscale.float_indexes(sigma[0].numpy(), tables.SCALE_TABLE)
    if b.slices:
        state = b.scale_state(z_sym, quality)
        int_ids = np.concatenate([b.slice_indexes(k, state, sym) for k in range(len(b.slices))])
    else:
        int_ids = b.scale_indexes(z_sym, quality)
    return len(entropy.encode(sym, int_ids, b.y_tables)), len(entropy.encode(sym, float_ids, b.y_tables))


def measure(ckpt: str, images: list, qualities: list[int], calibration: list[np.ndarray], repeat: int,
            tmp: Path, megapixels: float, big_megapixels: float = 0.0) -> dict:
    out = tmp / Path(ckpt).stem
    manifest = export_bundle.export_bundle(ckpt, out, calibration=calibration)
    b = Bundle(out)
    c = bench.Codec(Path(ckpt).name, manifest["architecture"], qualities,
                    lambda im, q: api.compress(im, q, b), lambda d: api.decompress(d, b))
    r = bench.run_codec(c, images, qualities)["results"]
    model, _ = load_model(ckpt)
    model.eval()
    mid = qualities[len(qualities) // 2]
    ints, floats = zip(*(float_sigma_bytes(model, b, im, mid) for _, im in images), strict=True)
    small = images[0][1]
    big = large_image(small, megapixels)
    times = {}
    for name, im in (("small", small), ("big", big)):
        data = api.compress(im, mid, b)
        times[name] = (median_ms(lambda im=im: api.compress(im, mid, b), repeat),
                       median_ms(lambda data=data: api.decompress(data, b), repeat))
    memory = None
    if big_megapixels:
        side = (big_megapixels * 1e6 / 1.5) ** 0.5
        memory = peak_rss_round_trip(round(side * 1.5), round(side), mid, str(out))
    return {"name": Path(ckpt).name, "memory": memory, "architecture": manifest["architecture"], "bpp": r["bpp"],
            "psnr": r["psnr-rgb"], "times": times, "int_cost": sum(ints) / sum(floats) - 1, "mid": mid}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("checkpoints", nargs="+", help="the first is the reference of the BD-rates")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 20, 40, 60, 80, 100])
    p.add_argument("--calibration", default="../shared/data/train")
    p.add_argument("--calibration_images", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="only the first N images (tests)")
    p.add_argument("--megapixels", type=float, default=12.0, help="size of the large image timed")
    p.add_argument("--big-megapixels", type=float, default=0.0, help="also a round trip of this size for peak RSS")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    images = bench.load_images(a.folder, a.limit)
    calibration = export_bundle.calibration_images(a.calibration, a.calibration_images)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(c, images, a.qualities, calibration, a.repeat, Path(tmp), a.megapixels,
                        a.big_megapixels) for c in a.checkpoints]
    ref = rows[0]
    print(f"{len(images)} images from {a.folder}, real file sizes; {bench.machine()}")
    print(f"{'checkpoint':<24} {'quality':>7} {'bpp':>7} {'PSNR':>6}")
    for r in rows:
        for q, bpp, psnr in zip(a.qualities, r["bpp"], r["psnr"], strict=True):
            print(f"{r['name']:<24} {q:>7} {bpp:>7.4f} {psnr:>6.2f}")
    small, big = images[0][1], large_image(images[0][1], a.megapixels)
    print(f"\n{'checkpoint':<24} {'BD-rate':>8} {'encode':>8} {'decode':>8} {'encode':>8} {'decode':>8} "
          f"{'int. path':>9}  architecture")
    print(f"{'':<24} {'':>8} {small.width}x{small.height:<8} {big.width}x{big.height:<10}")
    for r in rows:
        bd = bd_rate(ref["bpp"], ref["psnr"], r["bpp"], r["psnr"])
        (e1, d1), (e2, d2) = r["times"]["small"], r["times"]["big"]
        print(f"{r['name']:<24} {bd:>+7.1f}% {e1:>6.0f}ms {d1:>6.0f}ms {e2 / 1000:>7.2f}s {d2 / 1000:>7.2f}s "
              f"{100 * r['int_cost']:>+8.2f}%  {r['architecture']}")
    for r in rows:
        if r["memory"]:
            m = r["memory"]
            print(f"{r['name']:<24} {m['megapixels']:.1f} MP round trip ({m['size']}): peak RSS "
                  f"{m['peak_rss_mb']:.0f} MB, encode {m['encode_s']:.1f} s, decode {m['decode_s']:.1f} s")
    print(f"\nBD-rate: RGB PSNR against {ref['name']}; times: median of {a.repeat} at quality {ref['mid']}; "
          f"int. path: y bytes with integer against float-σ indexes at quality {ref['mid']}")


if __name__ == "__main__":
    main()
