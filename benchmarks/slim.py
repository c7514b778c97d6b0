"""What a slimmer synthesis costs: the same .onic files decoded by two bundles' decoders.

    python benchmarks/slim.py ../shared/data/kodak runs/slim/bundle [--reference codec/models/default] \\
        [--against benchmarks/results/kodak.json]

The files are encoded once, by the reference bundle; the other bundle must decode
them (export/slim.py keeps every symbol, and its bundle lists the reference's
model id in ``also_decodes``). So the rates are the same file for file and only
the PSNR differs: the table gives both per quality, and the BD-rate of the other
decoder against the reference over all the images. ``--against`` adds each
decoder's BD-rate against the other codecs of an `onic bench` result on the same
folder. Last, the decode time of the folder's last image, alternating the two.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import codec
from codec import bdrate, bench, metrics
from codec.session import DEFAULT_BUNDLE, Bundle
from codec.speed import median_ms


def curves(images: list[Image.Image], qualities: list[int], reference: Bundle, other: Bundle) -> dict[str, list]:
    """Per quality: mean bpp (the reference's files) and mean RGB PSNR of each decoder."""
    rows: dict[str, list] = {"quality": [], "bpp": [], "reference": [], "other": []}
    for q in qualities:
        bpp, ref, new = [], [], []
        for im in images:
            data = codec.compress(im, quality=q, bundle=reference)
            bpp.append(8 * len(data) / (im.width * im.height))
            ref.append(metrics.psnr(im, codec.decompress(data, bundle=reference)))
            new.append(metrics.psnr(im, codec.decompress(data, bundle=other)))
        for key, values in (("quality", [q]), ("bpp", bpp), ("reference", ref), ("other", new)):
            rows[key].append(float(np.mean(values)))
    return rows


def decode_ms(image: Image.Image, reference: Bundle, other: Bundle, rounds: int = 5) -> tuple[float, float]:
    """Median decode ms of one file by each bundle, the two alternated so that drift hits both."""
    data = codec.compress(image, quality=75, bundle=reference)
    times: dict[str, list[float]] = {"reference": [], "other": []}
    for _ in range(rounds):
        for key, b in (("reference", reference), ("other", other)):
            times[key].append(median_ms(lambda b=b: codec.decompress(data, bundle=b), 3))
    return float(np.median(times["reference"])), float(np.median(times["other"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("bundle", help="the bundle whose decoder is measured")
    p.add_argument("--reference", default=str(DEFAULT_BUNDLE), help="the bundle that encodes (default: shipped)")
    p.add_argument("--qualities", type=int, nargs="+", default=bench.CODECS["onic"]().qualities)
    p.add_argument("--against", help="an `onic bench` JSON of the same folder: BD-rates against its codecs")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    a = p.parse_args()
    reference, other = Bundle(a.reference), Bundle(a.bundle)
    images = [im for _, im in bench.load_images(a.folder)][: a.limit or None]
    rows = curves(images, a.qualities, reference, other)
    print(f"{len(images)} images from {a.folder}; reference {reference.model_id}, other {other.model_id}")
    print(f"{'quality':>7} {'bpp':>7} {'reference dB':>13} {'other dB':>9} {'change':>8}")
    for q, r, x, y in zip(rows["quality"], rows["bpp"], rows["reference"], rows["other"], strict=True):
        print(f"{q:>7.0f} {r:>7.3f} {x:>13.3f} {y:>9.3f} {y - x:>+8.3f}")
    bd = bdrate.bd_rate(rows["bpp"], rows["reference"], rows["bpp"], rows["other"])
    print(f"BD-rate of the other decoder against the reference: {bd:+.2f}%")
    if a.against:
        for name, c in bench.load_curves(a.against).items():
            if name.startswith("onic"):
                continue
            pair = [bdrate.bd_rate(c["bpp"], c["psnr-rgb"], rows["bpp"], rows[k]) for k in ("reference", "other")]
            print(f"BD-rate against {name}: reference {pair[0]:+.1f}%, other {pair[1]:+.1f}%")
    t_ref, t_other = decode_ms(images[-1], reference, other)
    print(f"decode of {images[-1].width}x{images[-1].height} at quality 75 (5 alternations): reference {t_ref:.0f} ms, "
          f"other {t_other:.0f} ms ({t_ref / t_other:.2f}x)")


if __name__ == "__main__":
    main()
