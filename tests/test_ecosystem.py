"""Pillow plugin, Python API habits, CLI batches, stdin/stdout, targets, metadata and modes."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import codec
from codec import metrics
from codec.api import compress_to_target
from tests.conftest import ROOT, SAMPLE, random_image, run_onic


def test_pillow_open_is_lazy_and_save_takes_quality(tmp_path, sample):
    path = tmp_path / "x.onic"
    sample.save(path, quality=60)
    assert codec.read_header(path.read_bytes()).quality == 60
    assert Image.registered_extensions()[".onic"] == "ONIC" and Image.MIME["ONIC"] == "image/x-onic"
    script = f"""
import sys
from PIL import Image
import codec
im = Image.open({str(path)!r})
assert (im.format, im.size, im.mode) == ("ONIC", (256, 256), "RGB"), (im.format, im.size, im.mode)
assert "onnxruntime" not in sys.modules, "opening must read the header only"
im.load()
assert "onnxruntime" in sys.modules
print(im.getpixel((10, 10)))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(path) as im:
        assert metrics.psnr(sample, im.convert("RGB")) > 20


def test_api_is_thread_safe(sample):
    crops = [sample.crop((i * 16, 0, i * 16 + 128, 128)) for i in range(4)]
    expected = [codec.compress(c, quality=50) for c in crops]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: codec.compress(c, quality=50), crops))
        decoded = list(pool.map(codec.decompress, got))
    assert got == expected
    assert all(d.size == (128, 128) for d in decoded)


def test_api_takes_bytes_and_streams_and_names_what_it_cannot_read(tmp_path, sample):
    """compress(bytes) read the bytes as a file name (an error quoting the whole file); decompress of a
    missing path raised FileNotFoundError where the README promises OnicError, and of an int opened
    that file descriptor."""
    buf = io.BytesIO()
    sample.save(buf, "PNG")
    data = codec.compress(buf.getvalue(), 40)
    assert data == codec.compress(sample, 40) == codec.compress(io.BytesIO(buf.getvalue()), 40)
    (tmp_path / "x.onic").write_bytes(data)
    for source in (data, tmp_path / "x.onic", str(tmp_path / "x.onic"), io.BytesIO(data)):
        assert codec.decompress(source).size == sample.size
    cases = [(lambda: codec.compress(b"\0" * 5000), "cannot read image <bytes>: no format Pillow reads"),
             (lambda: codec.compress(b""), "cannot read image <bytes>: empty input"),
             (lambda: codec.compress(5), "compress takes a PIL image"),
             (lambda: codec.decompress(tmp_path / "nope.onic"), "cannot read"),
             (lambda: codec.decompress(5), "decompress takes .onic bytes, a path or a binary stream, not int"),
             (lambda: codec.decompress(io.StringIO("ONIC")), "text stream: open it in binary mode")]
    for call, words in cases:
        with pytest.raises(codec.OnicError, match=words) as e:
            call()
        assert len(str(e.value)) < 200


def test_alpha_is_lossless(tmp_path):
    rgba = random_image(50, 37, "RGBA", seed=3)
    a = np.asarray(rgba).copy()
    a[..., 3] = np.arange(50)[None, :] * 5
    rgba = Image.fromarray(a, "RGBA")
    out = codec.decompress(codec.compress(rgba))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], a[..., 3])
    la = rgba.convert("LA")
    out = codec.decompress(codec.compress(la))
    assert out.mode == "LA" and np.array_equal(np.asarray(out)[..., 1], np.asarray(la)[..., 1])


def test_icc_and_exif_survive_the_cli(tmp_path, sample):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° when displayed
    exif[0x010F] = "onic test camera"
    src = tmp_path / "meta.png"
    sample.save(src, icc_profile=icc, exif=exif.tobytes())
    assert run_onic("compress", str(src), "-o", str(tmp_path / "m.onic")).returncode == 0
    assert run_onic("decompress", str(tmp_path / "m.onic"), "-o", str(tmp_path / "m.png")).returncode == 0
    with Image.open(tmp_path / "m.png") as out:
        assert out.info.get("icc_profile") == icc
        assert out.getexif()[0x0112] == 6 and out.getexif()[0x010F] == "onic test camera"
        assert out.size == sample.size  # orientation kept as metadata, not applied


XMP = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:rights>© onic test</dc:rights></x:xmpmeta>'.encode()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_xmp_survives_from_every_format_that_carries_it(tmp_path, fmt):
    """An XMP packet (rights, captions, edits) goes into the file's xmpp chunk from each way Pillow
    reads one (a PNG's iTXt, a TIFF's tag 700, JPEG's and WebP's own) and comes back as bytes."""
    im = random_image(40, 30, seed=5)
    buf = io.BytesIO()
    if fmt == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        im.save(buf, fmt, pnginfo=info)
    elif fmt == "TIFF":
        im.save(buf, fmt, tiffinfo={700: XMP})
    else:
        im.save(buf, fmt, xmp=XMP)
    data = codec.compress(Image.open(io.BytesIO(buf.getvalue())))
    assert codec.bitstream.unpack(data).chunks[b"xmpp"] == XMP
    assert codec.decompress(data).info["xmp"] == XMP
    assert b"xmpp" not in codec.bitstream.unpack(codec.compress(im)).chunks  # none without one


def test_xmp_and_exif_are_written_back_by_the_cli(tmp_path, sample):
    exif = Image.Exif()
    exif[0x010F] = "onic test camera"
    src = tmp_path / "meta.jpg"
    sample.save(src, exif=exif.tobytes(), xmp=XMP)
    assert run_onic("compress", str(src), "-o", str(tmp_path / "m.onic")).returncode == 0
    assert b"xmpp" in run_onic("info", str(tmp_path / "m.onic")).stdout
    for ext in ("png", "jpg", "webp", "tiff"):  # TIFF: EXIF's tags and XMP's tag 700 in one directory
        out = tmp_path / f"m.{ext}"
        r = run_onic("decompress", str(tmp_path / "m.onic"), "-o", str(out))
        assert r.returncode == 0, r.stderr
        with Image.open(out) as im:
            assert codec.api.xmp_packet(im) == XMP, ext
            assert im.getexif()[0x010F] == "onic test camera", ext
    r = run_onic("decompress", str(tmp_path / "m.onic"), "-o", str(tmp_path / "m.gif"))  # no place for it
    assert r.returncode == 0 and r.stderr.decode().splitlines() == [
        f"onic: warning: {tmp_path / 'm.onic'}: GIF holds 256 colours: the image is reduced to them "
        "(PNG keeps every colour)"]


def test_metadata_too_long_for_jpeg_is_dropped_with_a_warning(tmp_path):
    """A JPEG segment holds 64 kB: Pillow refuses longer EXIF or XMP, and the decode failed whole."""
    exif = Image.Exif()
    exif[0x010E] = "d" * 70_000
    xmp = b"<x:xmpmeta>" + b"a" * 70_000 + b"</x:xmpmeta>"
    src = tmp_path / "big.webp"
    random_image(40, 30).save(src, exif=exif.tobytes(), xmp=xmp)
    assert run_onic("compress", str(src), "-o", str(tmp_path / "big.onic")).returncode == 0
    r = run_onic("decompress", str(tmp_path / "big.onic"), "-o", str(tmp_path / "big.jpg"))
    err = r.stderr.decode()
    assert r.returncode == 0 and "EXIF of" in err and "XMP of" in err and "Traceback" not in err
    with Image.open(tmp_path / "big.jpg") as im:
        assert im.size == (40, 30)
    r = run_onic("decompress", str(tmp_path / "big.onic"), "-o", str(tmp_path / "big.png"))
    assert r.returncode == 0 and r.stderr == b""
    with Image.open(tmp_path / "big.png") as im:
        assert codec.api.xmp_packet(im) == xmp and im.getexif()[0x010E] == "d" * 70_000


def test_xmp_that_is_not_utf8_is_kept_where_it_can_be(tmp_path):
    """PNG's iTXt holds UTF-8 only: such an XMP goes to WebP and TIFF, and a PNG output says it left it out."""
    xmp = b"<x:xmpmeta>\xff\xfe</x:xmpmeta>"
    src = tmp_path / "x.webp"
    random_image(24, 16).save(src, xmp=xmp, lossless=True)
    assert run_onic("compress", str(src), "-o", str(tmp_path / "x.onic")).returncode == 0
    r = run_onic("decompress", str(tmp_path / "x.onic"), "-o", str(tmp_path / "x.png"))
    assert r.returncode == 0 and b"XMP not written: it is not UTF-8" in r.stderr
    for ext in ("webp", "tiff"):
        assert run_onic("decompress", str(tmp_path / "x.onic"), "-o", str(tmp_path / f"y.{ext}")).stderr == b""
        with Image.open(tmp_path / f"y.{ext}") as im:
            assert codec.api.xmp_packet(im) == xmp


def test_metadata_keeps_what_it_is_told(tmp_path):
    """EXIF may hold where a photo was taken: --metadata (metadata= in the API) keeps all, none or some."""
    exif = Image.Exif()
    exif[0x010F] = "onic test camera"
    src = tmp_path / "m.jpg"
    random_image(32, 24).save(src, exif=exif.tobytes(), xmp=XMP, icc_profile=b"\0" * 64)
    kept = {"all": {b"iccp", b"exif", b"xmpp"}, "none": set(), "icc,xmp": {b"iccp", b"xmpp"}, "EXIF": {b"exif"}}
    for value, chunks in kept.items():
        out = tmp_path / f"{value.replace(',', '_')}.onic"
        r = run_onic("compress", str(src), "-o", str(out), "--metadata", value)
        assert r.returncode == 0, r.stderr
        assert set(codec.bitstream.unpack(out.read_bytes()).chunks) == chunks, value
    for bad in ("gps", "", "exif,,gps"):
        r = run_onic("compress", str(src), "-o", str(tmp_path / "bad.onic"), "--metadata", bad)
        assert r.returncode == 2 and b"--metadata" in r.stderr and not (tmp_path / "bad.onic").exists()
    with Image.open(src) as im:
        assert set(codec.bitstream.unpack(codec.compress(im, metadata=())).chunks) == set()
        rotated = im.copy()
        exif = Image.Exif()
        exif[0x0112], exif[0x8825] = 6, {1: "N"}  # orientation, and a GPS directory
        rotated.info["exif"] = exif.tobytes()
        kept = codec.decompress(codec.compress(rotated, metadata=())).getexif()
        assert dict(kept) == {0x0112: 6}  # upright still, and nothing else
        kinds = (k for k in ["exif"])  # a generator is read once, not once to check and once to use
        assert set(codec.bitstream.unpack(codec.compress(im, metadata=kinds)).chunks) == {b"exif"}
        assert set(codec.bitstream.unpack(compress_to_target(im, bpp=64, metadata=["exif"])[0]).chunks) == {b"exif"}
        for bad in ("exif", ["gps"], 5):
            with pytest.raises(codec.OnicError, match="metadata"):
                codec.compress(im, metadata=bad)
        buf = io.BytesIO()
        im.save(buf, "ONIC", metadata=("xmp",))
        assert set(codec.bitstream.unpack(buf.getvalue()).chunks) == {b"xmpp"}


def test_pillow_save_takes_metadata_arguments(tmp_path):
    """save(…, icc_profile=, exif=, xmp=) as for Pillow's other writers (the plugin read them from a
    copy of the image, which has no save() arguments, and raised AttributeError)."""
    exif = Image.Exif()
    exif[0x010F] = "onic test camera"
    path = tmp_path / "x.onic"
    random_image(32, 32).save(path, icc_profile=b"\0" * 64, exif=exif, xmp=XMP)  # exif: Exif or bytes
    with Image.open(path) as im:
        im.load()
        assert (im.info["xmp"], im.info["icc_profile"]) == (XMP, b"\0" * 64)
        assert im.getexif()[0x010F] == "onic test camera"


def test_a_cmyk_profile_is_not_attached_to_rgb(tmp_path):
    """A CMYK JPEG is coded as RGB: its CMYK profile went with it, so viewers read the RGB as CMYK."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]  # the header's colour space is what is checked
    src = tmp_path / "c.jpg"
    random_image(32, 24).convert("CMYK").save(src, icc_profile=cmyk)
    r = run_onic("compress", str(src), "-o", str(tmp_path / "c.onic"))
    assert r.returncode == 0 and b"CMYK ICC profile left out" in r.stderr
    assert b"iccp" not in codec.bitstream.unpack((tmp_path / "c.onic").read_bytes()).chunks
    rgb = io.BytesIO()
    random_image(32, 24).save(rgb, "PNG", icc_profile=srgb)
    assert codec.bitstream.unpack(codec.compress(rgb.getvalue())).chunks[b"iccp"] == srgb


def test_conversions_warn(tmp_path):
    sixteen = tmp_path / "16.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(sixteen)
    cmyk = tmp_path / "c.jpg"
    random_image(40, 40).convert("CMYK").save(cmyk)
    for src, words in ((sixteen, b"reduced to 8 bits"), (cmyk, b"CMYK image converted to RGB")):
        r = run_onic("compress", str(src), "-o", str(tmp_path / (src.stem + ".onic")))
        assert r.returncode == 0 and words in r.stderr and r.stderr.startswith(b"onic: warning: ")
        r = run_onic("compress", str(src), "-o", str(tmp_path / (src.stem + "2.onic")), "--quiet")
        assert r.returncode == 0 and r.stderr == b""
    with pytest.warns(codec.OnicWarning, match="palette"):
        codec.compress(random_image(20, 20).convert("P"))


def test_batch_with_a_bad_file_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        random_image(40 + i, 30, seed=i).save(src / f"{i}.png")
    (src / "broken.png").write_bytes(b"not a png")
    (src / "readme.txt").write_text("ignored")
    r = run_onic("compress", str(src), "--out-dir", str(tmp_path / "out"), "--jobs", "2")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "broken.png" in err and "1 of 4 files failed" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.onic", "1.onic", "2.onic"]
    r = run_onic("decompress", str(tmp_path / "out"), "--out-dir", str(tmp_path / "dec"), "--format", "webp")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["0.webp", "1.webp", "2.webp"]


def test_usage_errors(tmp_path):
    assert run_onic("compress", str(SAMPLE), str(SAMPLE), "-o", str(tmp_path / "x.onic")).returncode == 2
    assert run_onic("compress", str(SAMPLE), "--target-bpp", "1", "--target-psnr", "30").returncode == 2
    # A quality and a target: the target searches the quality, and says that -q is ignored.
    r = run_onic("compress", str(SAMPLE), "-q", "50", "--target-bpp", "1", "-o", str(tmp_path / "y.onic"))
    assert r.returncode == 0 and r.stderr.decode().startswith("onic: warning: --quality is ignored")
    assert codec.read_header((tmp_path / "y.onic").read_bytes()).width == 256
    assert run_onic("compress", "-", str(SAMPLE)).returncode == 2


def test_stdin_stdout(tmp_path):
    r = run_onic("compress", "-", "-o", "-", input=SAMPLE.read_bytes())
    assert r.returncode == 0 and r.stdout.startswith(b"ONIC")
    r2 = run_onic("decompress", "-", "-o", "-", input=r.stdout)
    assert r2.returncode == 0
    with Image.open(io.BytesIO(r2.stdout)) as im:
        assert im.format == "PNG" and im.size == (256, 256)
    r3 = run_onic("info", "-", input=r.stdout)
    assert r3.returncode == 0 and b"256" in r3.stdout
    # --format chooses stdout's format too (it wrote PNG whatever it said)
    r4 = run_onic("decompress", "-", "-o", "-", "--format", "webp", input=r.stdout)
    with Image.open(io.BytesIO(r4.stdout)) as im:
        assert r4.returncode == 0 and im.format == "WEBP" and im.size == (256, 256)


def test_targets(sample):
    def bpp(data: bytes) -> float:
        return 8 * len(data) / 256**2

    def quality_psnr(data: bytes) -> float:
        return metrics.psnr(sample, codec.decompress(data))

    # 60 and 95: where the shipped model's sizes grow with quality on the sample (see test_roundtrip)
    low, high = codec.compress(sample, quality=60), codec.compress(sample, quality=95)
    target = (bpp(low) + bpp(high)) / 2  # reachable by some quality in between, whatever the model
    data, q = compress_to_target(sample, bpp=target)
    assert 60 <= q < 95 and bpp(data) <= target < bpp(codec.compress(sample, quality=q + 1))
    target = (quality_psnr(low) + quality_psnr(high)) / 2
    data, q = compress_to_target(sample, psnr=target)
    assert 60 < q <= 95 and quality_psnr(data) >= target > quality_psnr(codec.compress(sample, quality=q - 1))
    with pytest.warns(codec.OnicWarning, match="no quality reaches"):
        assert compress_to_target(sample, psnr=99.0)[1] == 100
    for bad in ({"psnr": float("nan")}, {"bpp": 0}, {"bpp": -1.0}, {"bpp": "1"}, {"psnr": True}):
        with pytest.raises(codec.OnicError, match="must be a number above 0"):
            compress_to_target(sample, **bad)
