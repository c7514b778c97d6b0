"""onic bench end to end on a tiny folder: real codecs, real files."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from codec import bench  # noqa: E402
from tests.conftest import ROOT, random_image, run_onic  # noqa: E402

ANCHORS = ROOT.parent / "shared" / "anchors" / "compressai-kodak"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs") / "tiny"
    d.mkdir()
    for i in range(2):
        random_image(170, 180, seed=i).save(d / f"{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_bench_writes_json_csv_plot(folder, tmp_path):
    report = bench.run(folder, ["onic", "jpeg", "webp"], [20, 80], tmp_path)
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert set(data["codecs"]) == {"onic", "jpeg", "webp"}
    for entry in data["codecs"].values():
        r = entry["results"]
        assert r["quality"] == [20, 80] and len(r["bpp"]) == 2 and r["bpp"][0] < r["bpp"][1]
        assert len(entry["per_image"]) == 4 and all(0 < x["ms_ssim"] <= 1 for x in entry["per_image"])
    onic_rows = data["codecs"]["onic"]["per_image"]
    assert onic_rows[0]["bytes"] * 8 / (170 * 180) == pytest.approx(onic_rows[0]["bpp"])
    assert set(data["bd_rate"]) == {"jpeg", "webp"}
    assert bench.load_curves(tmp_path / "tiny.json")["webp"] == data["codecs"]["webp"]["results"]
    with (tmp_path / "tiny.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (2 + 4)
    assert (tmp_path / "tiny_rd.png").read_bytes().startswith(b"\x89PNG")
    assert "BD-rate" in bench.format_table(report)


def test_heif_is_a_codec_of_the_bench(folder, tmp_path):
    """HEIF (x265, 4:2:0), what phones write, beside the others where pillow-heif is installed."""
    pytest.importorskip("pillow_heif")
    data = bench.run(folder, ["heif", "jpeg"], [20, 60], tmp_path)["codecs"]["heif"]
    assert "4:2:0" in data["description"]
    r = data["results"]
    assert r["bpp"][0] < r["bpp"][1] and 15 < r["psnr-rgb"][0] < r["psnr-rgb"][1]


def test_update_reruns_only_the_named_codecs(folder, tmp_path):
    bench.run(folder, ["onic", "jpeg"], [30, 70], tmp_path)
    before = json.loads((tmp_path / "tiny.json").read_text())
    report = bench.run(folder, ["webp"], [30, 70], tmp_path, update=True)
    assert list(report["codecs"]) == ["onic", "jpeg", "webp"]
    assert report["codecs"]["jpeg"] == before["codecs"]["jpeg"]
    assert set(report["bd_rate"]) == {"jpeg", "webp"}
    again = bench.run(folder, ["jpeg"], [30, 70], tmp_path, update=True)  # a rerun keeps its place
    assert list(again["codecs"]) == ["onic", "jpeg", "webp"]


@pytest.mark.skipif(not ANCHORS.exists(), reason="CompressAI anchors not present")
def test_compressai_files_load_with_the_same_code():
    curves = bench.load_curves(ANCHORS / "webp.json")
    assert set(curves["WebP"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb"}
    rates = bench.bd_rates({"onic": curves["WebP"], "WebP": curves["WebP"]})
    assert rates["WebP"]["psnr"] == pytest.approx(0.0, abs=1e-9)


def test_missing_plugin_is_skipped_with_a_warning(folder, tmp_path):
    import subprocess

    code = ("import sys; sys.modules['pillow_jxl'] = None\n"
            "from codec.cli import main\n"
            f"main(['bench', {str(folder)!r}, '--codecs', 'jpeg,jxl', '--qualities', '50',"
            f" '--out', {str(tmp_path)!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    assert b"skipping jxl" in r.stderr and b"jpeg" in r.stdout
    assert set(json.loads((tmp_path / "tiny.json").read_text())["codecs"]) == {"jpeg"}


def test_unknown_codec_is_a_usage_error(folder, tmp_path):

    r = run_onic("bench", str(folder), "--codecs", "gif", "--out", str(tmp_path))
    assert r.returncode == 2 and b"unknown codec 'gif'" in r.stderr and b"Traceback" not in r.stderr


def test_bd_rates_skip_non_overlapping():
    a = {"bpp": [0.1, 0.2], "psnr-rgb": [20, 22], "ms-ssim-rgb": [0.8, 0.85]}
    b = {"bpp": [0.5, 1.0], "psnr-rgb": [30, 33], "ms-ssim-rgb": [0.95, 0.97]}
    assert math.isnan(bench.bd_rates({"onic": a, "x": b})["x"]["psnr"])


def test_bench_compares_the_refined_encoder(folder, tmp_path):
    """onic-refine is onic's encoder with --refine: its own curve and BD-rates, onic's among them."""
    report = bench.run(folder, ["onic", "onic-refine", "jpeg"], [20, 80], tmp_path, refine=2)
    assert list(report["codecs"]) == ["onic", "onic-refine", "jpeg"]
    assert "--refine 2" in report["codecs"]["onic-refine"]["description"]
    assert set(report["bd_rate_refine"]) == {"onic", "jpeg"}
    assert "onic-refine" in report["bd_rate"]
    assert "BD-rate of onic-refine" in bench.format_table(report)


def test_unreadable_images_are_skipped_in_onic_s_own_words(tmp_path):
    """A decompression bomb's header raised DecompressionBombError, not OSError: an internal error."""
    import struct
    import zlib


    d = tmp_path / "mixed"
    d.mkdir()
    random_image(64, 64).save(d / "a.png")
    (d / "b.png").write_bytes(b"not a png")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    (d / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    seen: list[str] = []
    images = bench.load_images(d, warn=seen.append)
    assert [name for name, _ in images] == ["a.png"]
    assert [m.split(":")[0] for m in seen] == ["skipping b.png", "skipping c.png"]
    r = run_onic("bench", str(d), "--codecs", "jpeg", "--qualities", "50", "--out", str(tmp_path / "r"))
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "onic: warning: skipping b.png" in err and "onic: warning: skipping c.png" in err and "Traceback" not in err
    (d / "a.png").unlink()
    r = run_onic("bench", str(d), "--speed")  # the first image it can read is timed: here none
    err = r.stderr.decode()
    assert r.returncode == 2 and "onic: warning: skipping c.png" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"onic: error: no image in {d} that Pillow reads"


@pytest.mark.parametrize("qualities", ["101", "-5", "abc", ","])
def test_qualities_out_of_range_are_usage_errors(folder, tmp_path, qualities):
    """libwebp said only 'invalid configuration' for -5, after the other codecs had run."""
    r = run_onic("bench", str(folder), "--codecs", "jpeg,webp", f"--qualities={qualities}", "--out", str(tmp_path))
    assert r.returncode == 2 and b"--qualities" in r.stderr and b"Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())


def test_images_are_measured_as_onic_codes_them(tmp_path):
    """Pillow's RGB conversion clips 16-bit samples: a 16-bit PNG was benchmarked as a white image.
    The folder takes what `onic compress FOLDER` takes (.jfif, .gif were left out)."""
    import numpy as np
    from PIL import Image

    d = tmp_path / "kinds"
    d.mkdir()
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(d / "deep.png")
    random_image(40, 30, seed=1).save(d / "browser.jfif", format="JPEG")
    random_image(40, 30, seed=2).convert("P").save(d / "palette.gif")
    names = [name for name, _ in bench.load_images(d)]
    assert names == ["browser.jfif", "deep.png", "palette.gif"]
    deep = np.asarray(dict(bench.load_images(d))["deep.png"])
    assert deep.shape == (48, 64, 3) and np.array_equal(deep[..., 0], (ramp >> 8).astype(np.uint8))
    assert bench.first_image([d / "deep.png"], warn=print) == str(d / "deep.png")
