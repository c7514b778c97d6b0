"""The onic command as a user runs it: a subprocess, real files, exit codes and stderr."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

import codec
from codec import metrics
from tests.conftest import ROOT, SAMPLE, run_onic


def one_error_line(result) -> str:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("onic: error: ")
    return lines[0]


def test_compress_decompress_info(tmp_path):
    onic, png = tmp_path / "s.onic", tmp_path / "s.png"
    r = run_onic("compress", str(SAMPLE), "-o", str(onic), "-q", "60")
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    r = run_onic("decompress", str(onic), "-o", str(png))
    assert r.returncode == 0, r.stderr
    with Image.open(png) as out, Image.open(SAMPLE) as ref:
        assert out.size == ref.size and metrics.psnr(ref.convert("RGB"), out) > 20
    r = run_onic("info", str(onic))
    assert r.returncode == 0
    fields = dict(line.split(":", 1) for line in r.stdout.decode().splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert int(fields["file bytes"]) == onic.stat().st_size
    assert (fields["width"], fields["height"], fields["quality"], fields["format version"]) == ("256", "256", "60", "2")
    assert fields["model id"] == codec.read_header(onic.read_bytes()).model_id
    assert float(fields["bpp"]) == pytest.approx(8 * onic.stat().st_size / 256**2, abs=1e-4)
    # --json: a line per file, the same fields; a bad file's line has its error, and the exit is 1
    (tmp_path / "bad.onic").write_bytes(b"ONIC")
    r = run_onic("info", "--json", str(onic), str(tmp_path / "bad.onic"))
    good, bad = (json.loads(line) for line in r.stdout.decode().splitlines())
    assert r.returncode == 1 and b"bad.onic" in r.stderr
    assert (good["width"], good["quality"], good["file_bytes"], good["chunks"]) == (256, 60, onic.stat().st_size, {})
    assert good["model_id"] == fields["model id"] and good["bpp"] == pytest.approx(float(fields["bpp"]))
    assert bad["file"].endswith("bad.onic") and "truncated" in bad["error"]


def test_verbose_and_default_output_name(tmp_path):
    src = tmp_path / "photo.png"
    src.write_bytes(SAMPLE.read_bytes())
    r = run_onic("compress", str(src), "-v")
    assert r.returncode == 0 and (tmp_path / "photo.onic").exists()
    assert b"bpp" in r.stderr and b"PSNR" not in r.stderr and r.stdout == b""  # -v does not decode
    r = run_onic("compress", str(src), "--psnr", "--force")
    assert r.returncode == 0 and b"bpp" in r.stderr and b"PSNR" in r.stderr
    r = run_onic("decompress", str(tmp_path / "photo.onic"), "-o", str(tmp_path / "photo.webp"))
    assert r.returncode == 0
    with Image.open(tmp_path / "photo.webp") as im:
        assert im.format == "WEBP"


def test_version_and_help():
    r = run_onic("--version")
    assert r.returncode == 0 and codec.__version__ in r.stdout.decode()
    for cmd in ([], ["compress"], ["decompress"], ["info"], ["demo"]):
        r = run_onic(*cmd, "--help")
        assert r.returncode == 0 and b"Usage:" in r.stdout


def test_demo():
    r = run_onic("demo", "-q", "50")
    assert r.returncode == 0, r.stderr
    assert b"bpp" in r.stdout and b"PSNR" in r.stdout


def with_header(data: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(data)
    b[offset : offset + len(value)] = value
    body = bytes(b[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def bad_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    return {
        "not onic": (SAMPLE.read_bytes(), "not an .onic file"),
        "empty": (b"", "not an .onic file"),
        "truncated": (good[: len(good) - 10], "truncated file"),
        "header only": (good[:20], "truncated file"),
        "flipped byte": (bytes(flipped), "CRC32"),
        "future version": (with_header(good, 4, b"\x07"), "unsupported format version 7"),
        "other model": (with_header(good, 8, b"\xaa" * 8), "model id mismatch"),
        "absurd size": (with_header(good, 16, struct.pack("<II", 100_000, 100_000)), "exceeds the limit"),
    }


@pytest.mark.parametrize("case", list(bad_files(b"ONIC" + bytes(40))))
def test_bad_files_exit_2_without_output(case, tmp_path, sample_onic):
    data, message = bad_files(sample_onic)[case]
    src, out = tmp_path / "bad.onic", tmp_path / "out.png"
    src.write_bytes(data)
    line = one_error_line(run_onic("decompress", str(src), "-o", str(out)))
    assert message in line
    assert os.listdir(tmp_path) == ["bad.onic"]  # no output, no temporary left behind
    assert src.read_bytes() == data


def test_bad_image_input(tmp_path):
    src = tmp_path / "x.png"
    src.write_bytes(b"this is not a png")
    assert "cannot read image" in one_error_line(run_onic("compress", str(src), "-o", str(tmp_path / "x.onic")))
    assert "No such file" in one_error_line(run_onic("compress", str(tmp_path / "missing.png")))
    tif = tmp_path / "f.tif"
    Image.new("F", (4, 4)).save(tif)
    assert "floating-point" in one_error_line(run_onic("compress", str(tif), "-o", str(tmp_path / "x.onic")))
    assert sorted(os.listdir(tmp_path)) == ["f.tif", "x.png"]


def test_existing_output_needs_force(tmp_path, sample_onic):
    src, out = tmp_path / "s.onic", tmp_path / "s.png"
    src.write_bytes(sample_onic)
    out.write_bytes(b"precious")
    assert "exists" in one_error_line(run_onic("decompress", str(src), "-o", str(out)))
    assert out.read_bytes() == b"precious"
    assert run_onic("decompress", str(src), "-o", str(out), "--force").returncode == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_unknown_output_extension(tmp_path, sample_onic):
    src = tmp_path / "s.onic"
    src.write_bytes(sample_onic)
    assert "unknown image extension" in one_error_line(run_onic("decompress", str(src), "-o", str(tmp_path / "s.xyz")))
    assert "no extension to choose" in one_error_line(run_onic("decompress", str(src), "-o", str(tmp_path / "s")))
    assert "not .onic" in one_error_line(run_onic("decompress", str(src), "-o", str(tmp_path / "t.onic")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onic"]


def test_threads(tmp_path, sample_onic):
    """--threads 1 codes the same bytes; --jobs divides the cores among its workers unless told (--jobs 0:
    a worker per core)."""
    from codec.batch import Job
    from codec.cli import _share_cores
    from codec.threads import cores

    r = run_onic("compress", str(SAMPLE), "-o", str(tmp_path / "s.onic"), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.onic").read_bytes() == sample_onic
    r = run_onic("decompress", str(tmp_path / "s.onic"), "-o", str(tmp_path / "s.png"), "--threads", "1")
    assert r.returncode == 0 and Image.open(tmp_path / "s.png").size == (256, 256)
    jobs = [Job("a", "b"), Job("c", "d", threads=3), Job("e", "f")]
    _share_cores(jobs, 2)
    assert [j.threads for j in jobs] == [max(1, cores() // 2), 3, max(1, cores() // 2)]
    alone = [Job("a", "b")]
    _share_cores(alone, 4)  # one file: one process, every core
    assert alone[0].threads == 0
    assert "no --threads" in one_error_line(run_onic("compress", str(SAMPLE.parent), "--ray", "--threads", "2",
                                                     "--out-dir", str(tmp_path / "r")))
    folder = tmp_path / "two"
    folder.mkdir()
    for i in range(2):
        Image.open(SAMPLE).crop((0, 0, 64 + i, 48)).save(folder / f"{i}.png")
    r = run_onic("compress", str(folder), "--out-dir", str(tmp_path / "two-out"), "--jobs", "0")  # one per core
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "two-out").iterdir()) == ["0.onic", "1.onic"]
    assert run_onic("compress", str(SAMPLE), "--threads", "-1").returncode == 2
    assert run_onic("decompress", str(tmp_path / "s.onic"), "--threads", "65").returncode == 2


def test_usage_errors_exit_2():
    r = run_onic("compress", str(SAMPLE), "-q", "101")
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert "nan is not a number" in one_error_line(run_onic("compress", str(SAMPLE), "--target-psnr", "nan"))


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import codec
from codec.cli import main
sys.argv = ["onic", "decompress", sys.argv[1], "-o", sys.argv[2]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print("decoded without torch")
"""


def test_decoder_runs_where_torch_cannot_be_imported(tmp_path, sample_onic):
    import subprocess

    src, out = tmp_path / "s.onic", tmp_path / "s.png"
    src.write_bytes(sample_onic)
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(src), str(out)], capture_output=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    assert b"decoded without torch" in r.stdout and out.exists()


def test_no_module_of_the_runtime_imports_torch():
    """Every import in codec/, nested ones included (raydata's actors, bench, speed), is checked."""
    import ast

    for path in (ROOT / "codec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "torch" or n.startswith("torch.") for n in names), (path, ast.dump(node))


WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # the base install: no Ray
from codec.cli import main
sys.argv = ["onic", "compress", sys.argv[1], "--out-dir", sys.argv[2], "--ray"]
main()
"""


def test_ray_option_without_ray_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(SAMPLE.parent), str(tmp_path / "out")],
                       capture_output=True, cwd=ROOT)
    assert "onic[ray]" in one_error_line(r)


@pytest.mark.parametrize(("module", "suffix"), [("pillow_jxl", ".jxl"), ("pillow_heif", ".heic")])
def test_jpeg_xl_and_heif_with_their_plugins(tmp_path, module, suffix):
    """A fresh process reads and writes them once Pillow meets them; HEIF with the image's XMP (the JPEG XL
    plugin writes XMP but does not read it)."""
    plugin = pytest.importorskip(module)
    if module == "pillow_heif":
        plugin.register_heif_opener()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    Image.open(SAMPLE).convert("RGB").save(tmp_path / f"in{suffix}", xmp=xmp, quality=95)
    r = run_onic("compress", str(tmp_path / f"in{suffix}"), "-o", str(tmp_path / "x.onic"))
    assert r.returncode == 0, r.stderr
    r = run_onic("decompress", str(tmp_path / "x.onic"), "-o", str(tmp_path / f"out{suffix}"))
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / f"out{suffix}") as im:
        assert im.size == (256, 256) and (suffix == ".jxl" or b"xmpmeta" in im.info["xmp"])
        assert metrics.psnr(Image.open(SAMPLE).convert("RGB"), im.convert("RGB")) > 28


WITHOUT_PLUGINS = """
import sys
sys.modules["pillow_jxl"] = sys.modules["pillow_heif"] = None
from codec.cli import main
main(sys.argv[1:])
"""


def test_without_the_plugins_one_line_names_the_package(tmp_path, sample_onic):
    (tmp_path / "x.onic").write_bytes(sample_onic)
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")

    def onic(*args: str):
        return subprocess.run([sys.executable, "-c", WITHOUT_PLUGINS, *args], capture_output=True, cwd=ROOT)

    assert "HEIF needs the Pillow plugin pillow-heif" in one_error_line(onic("compress", str(tmp_path / "photo.heic")))
    err = one_error_line(onic("decompress", str(tmp_path / "x.onic"), "-o", str(tmp_path / "x.jxl")))
    assert "JPEG XL needs the Pillow plugin pillow-jxl-plugin (pip install pillow-jxl-plugin)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.heic", "x.onic"]


def test_outputs_that_would_lose_the_image_silently(tmp_path, sample_onic):
    """ICO at the image's own size (Pillow's list of icon sizes made a 256² image 256² but a 53×37 one
    32×22), none over 256 pixels; no ICNS (stretched to 1024²); no alpha into GIF or PPM (written
    opaque); a warning for GIF's 256 colours."""
    small = tmp_path / "small.onic"
    small.write_bytes(codec.compress(Image.open(SAMPLE).convert("RGB").crop((0, 0, 53, 37))))
    assert run_onic("decompress", str(small), "-o", str(tmp_path / "s.ico")).returncode == 0
    assert Image.open(tmp_path / "s.ico").size == (53, 37)
    big = tmp_path / "big.onic"
    big.write_bytes(codec.compress(Image.new("RGB", (300, 20), (90, 20, 200))))
    assert "at most 256×256" in one_error_line(run_onic("decompress", str(big), "-o", str(tmp_path / "b.ico")))
    assert "ICNS" in one_error_line(run_onic("decompress", str(small), "-o", str(tmp_path / "s.icns")))
    rgba = tmp_path / "rgba.onic"
    rgba.write_bytes(codec.compress(Image.open(SAMPLE).convert("RGBA")))
    for name in ("a.gif", "a.ppm"):  # Pillow writes both opaque
        assert "no alpha" in one_error_line(run_onic("decompress", str(rgba), "-o", str(tmp_path / name)))
    r = run_onic("decompress", str(small), "-o", str(tmp_path / "s.gif"))
    assert r.returncode == 0 and b"GIF holds 256 colours" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onic", "rgba.onic", "s.gif", "s.ico", "small.onic"]


def test_a_folder_gives_what_browsers_and_cameras_save(tmp_path):
    """.jfif (a browser's "save image"), .jpe, .apng, .tga, .qoi, .pnm were left out of a folder, silently."""
    src = tmp_path / "in"
    src.mkdir()
    image = Image.open(SAMPLE).convert("RGB").crop((0, 0, 40, 30))
    for name, fmt in [("a.JFIF", "JPEG"), ("b.jpe", "JPEG"), ("c.apng", "PNG"), ("d.tga", "TGA"), ("e.qoi", "QOI"),
                      ("f.pnm", "PPM")]:
        image.save(src / name, fmt)
    (src / "notes.txt").write_text("not an image")
    r = run_onic("compress", str(src), "--out-dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{c}.onic" for c in "abcdef"]
