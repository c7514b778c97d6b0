"""Mean bpp (real file sizes), RGB PSNR and MS-SSIM of the shipped model on a folder of images.

    python benchmarks/kodak.py ../shared/data/kodak [--qualities 0 50 100]

The same measurement as `onic bench FOLDER --codecs onic`, without the other codecs,
the files or the plot.
"""

from __future__ import annotations

import argparse

from codec import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 25, 50, 75, 100])
    a = p.parse_args()
    images = bench.load_images(a.folder)
    onic = bench.CODECS["onic"]()
    report = {"codecs": {"onic": bench.run_codec(onic, images, a.qualities)}}
    print(f"{onic.description}; {len(images)} images from {a.folder}; {bench.machine()}")
    print(bench.format_table(report))


if __name__ == "__main__":
    main()
