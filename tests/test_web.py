"""The browser decoder (web/) in headless Chromium, against the Python decoder.

Files made by the Python encoder (RGB, L, LA, RGBA, odd sizes, ICC/EXIF, an image large
enough for tiles and bands) must give identical symbols and pixels within the float
tolerance; malformed files must fail with the Python decoder's messages. Needs node, the
packages of web/ (npm ci) and Chromium; CI sets ONIC_WEB_TESTS=1 so that missing ones fail
instead of skipping.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from codec import api, bitstream, entropy
from codec.bitstream import Header, OnicError
from codec.session import DEFAULT_BUNDLE, RELEASED_MODELS
from codec.webview import WEB_DIR, serve_in_background
from tests.conftest import SAMPLE, random_image

# Pixels come from onnxruntime-web's kernels, not the Python runtime's (docs/FORMAT.md). With the
# float synthesis (onic 0.9.x) that was one level in a few pixels: 7 of 262,144 values of the 256²
# sample, 132 of 7.7 million of the 1200×1600 image. The int8 synthesis (0.10.0) re-rounds its
# third convolution's input and output to 8-bit grids, so where the two runtimes' floats fall on
# either side of a grid boundary a whole step moves: measured once, 84 of the sample's values
# (0.03%), 45 of 23,668 of the grey 97×61 image (0.19%), 3,005 of 7.7 million of the large one,
# at most 2 levels. A step that moves is local, so small images get one patch besides the share:
# a step of the input grid reaches 8×8 half-resolution positions through the two 3×3 convolutions
# after it, 8·8·4·3 = 768 values (0.16.0's model, measured once: a random 90×70 image at quality 60, 227 of 25,200).
MAX_LEVELS, MAX_DIFFERING, ONE_STEP_PATCH = 2, 0.005, 768


def _within(r: dict, ref: np.ndarray) -> bool:
    """The browser's pixels are Python's within MAX_LEVELS, in MAX_DIFFERING of the values and one patch."""
    return r["maxDiff"] <= MAX_LEVELS and r["differing"] <= MAX_DIFFERING * ref.size + ONE_STEP_PATCH


def _chromium() -> str | None:
    return os.environ.get("ONIC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(browser: bool = True) -> str | None:
    """What the browser tests (or, with browser=False, the Node-only ones) lack, or None."""
    if not shutil.which("node"):
        return "node is not installed"
    if not (WEB_DIR / "node_modules" / "playwright-core").is_dir():
        return "web/node_modules is missing (npm ci in web/)"
    if browser and not _chromium():
        return "Chromium is not installed"
    return None


def _require(missing: str | None) -> None:
    """Skip without the prerequisites, or fail where CI says they must be there (ONIC_WEB_TESTS=1)."""
    if missing:
        if os.environ.get("ONIC_WEB_TESTS") == "1":
            pytest.fail(f"browser tests required but {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    _require(_missing())
    folder = tmp_path_factory.mktemp("web")

    def run(files: dict[str, bytes], refs: dict[str, np.ndarray] | None = None, bundle: Path = DEFAULT_BUNDLE,
            pick: Path | None = None) -> dict:
        paths, tasks = [], []
        for name, data in files.items():
            (folder / f"{name}.onic").write_bytes(data)
            paths.append(folder / f"{name}.onic")
        for name, rgba in (refs or {}).items():
            (folder / f"{name}.rgba").write_bytes(rgba.tobytes())
            paths.append(folder / f"{name}.rgba")
        urls = {p.name: f"/files/{i}/{p.name}" for i, p in enumerate(paths)}
        for name in files:
            task = {"name": name, "url": urls[f"{name}.onic"]}
            if refs and name in refs:
                task["ref"] = urls[f"{name}.rgba"]
            tasks.append(task)
        (folder / "tasks.json").write_text(json.dumps(tasks))
        server, url = serve_in_background(paths, bundle)
        try:
            out = subprocess.run(["node", str(WEB_DIR / "test" / "browser.mjs"), url, str(folder / "tasks.json"),
                                  "0", *([str(pick)] if pick else [])],
                                 capture_output=True, text=True, timeout=600, cwd=WEB_DIR,
                                 env={**os.environ, "ONIC_CHROMIUM": _chromium()})
        finally:
            server.shutdown()
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout)
        assert result["pageErrors"] == []
        return result

    return run


def _rgba(image: Image.Image) -> np.ndarray:
    """What the browser's ImageData holds: RGBA, gray replicated, A = 255 without alpha."""
    return np.asarray(image.convert("RGBA"))


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.astype("<i4").tobytes()).hexdigest()


def _exif_and_icc_image() -> Image.Image:
    im = random_image(90, 70, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    buf = io.BytesIO()
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    im.save(buf, "PNG", exif=exif.tobytes(), icc_profile=b"\0" * 128, pnginfo=xmp)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_browser_decodes_what_python_encodes(browser_run, tmp_path):
    with Image.open(SAMPLE) as im:
        sample = im.convert("RGB")
    images = {
        "rgb": (sample, 75),
        "gray_odd": (random_image(97, 61, "L", seed=1), 40),
        "rgba_odd": (random_image(130, 67, "RGBA", seed=2), 90),
        "la_tiny": (random_image(1, 1, "LA", seed=4), 0),
        "metadata": (_exif_and_icc_image(), 60),
        # tiles in the synthesis, bands in the hyper decoder and the integer path
        "large": (random_image(1200, 1600, seed=5), 20),
    }
    images["rgba_odd"][0].putalpha(Image.fromarray(np.arange(130 * 67, dtype=np.uint8).reshape(67, 130)))
    files = {name: api.compress(im, q) for name, (im, q) in images.items()}
    refs = {name: _rgba(api.decompress(data)) for name, data in files.items()}
    picked = tmp_path / "picked.onic"
    picked.write_bytes(files["rgba_odd"])
    result = browser_run(files, refs, pick=picked)
    assert result["bundle"] == api.default_bundle().model_id
    # what a person sees after choosing a file on the page
    assert "130 × 67 RGBA, quality 90" in result["picked"] and api.default_bundle().model_id in result["picked"]
    assert f"{len(files['rgba_odd'])} bytes" in result["picked"]
    for r in result["results"]:
        name = r["name"]
        assert "error" not in r, (name, r.get("error"))
        _, z, y = api.decode_latents(files[name])
        assert (r["z"], r["y"]) == (_digest(z), _digest(y)), f"{name}: symbols differ from Python's"
        h = bitstream.parse_header(files[name])
        assert (r["width"], r["height"]) == (h.width, h.height)
        assert _within(r, refs[name]), (name, r["maxDiff"], r["differing"])
    meta = next(r for r in result["results"] if r["name"] == "metadata")
    c = bitstream.unpack(files["metadata"])
    assert (meta["icc"], meta["exif"], meta["xmp"]) == tuple(len(c.chunks[k]) for k in (b"iccp", b"exif", b"xmpp"))


def test_browser_decodes_a_channel_conditional_model_with_z_gains(browser_run, tmp_path):
    """A small untrained model with slices and gain units on z (tests/test_conditional.py's)."""
    pytest.importorskip("torch")
    from tests.test_conditional import sliced_bundle

    _, b = sliced_bundle(tmp_path)
    files = {"small": api.compress(random_image(200, 136, seed=3), 60, bundle=b),
             # bands in every slice network and graph
             "tall": api.compress(random_image(100, 1400, "RGBA", seed=6), 30, bundle=b)}
    refs = {name: _rgba(api.decompress(data, bundle=b)) for name, data in files.items()}
    result = browser_run(files, refs, bundle=tmp_path / "bundle")
    for r in result["results"]:
        assert "error" not in r, (r["name"], r.get("error"))
        _, z, y = api.decode_latents(files[r["name"]], bundle=b)
        assert (r["z"], r["y"]) == (_digest(z), _digest(y)), f"{r['name']}: symbols differ from Python's"
        assert _within(r, refs[r["name"]]), r


def test_browser_decodes_a_bundle_without_slice_prior(browser_run, tmp_path):
    """A bundle exported before slice_priorK.onnx (onic 0.10): its slice graphs read μ_h themselves."""
    pytest.importorskip("torch")
    from tests.test_conditional import legacy_bundle, sliced_bundle

    model, b = sliced_bundle(tmp_path)
    legacy = legacy_bundle(model, b, tmp_path / "old")
    files = {"tall": api.compress(random_image(100, 1400, seed=7), 40, bundle=legacy)}  # bands, as above
    refs = {name: _rgba(api.decompress(data, bundle=legacy)) for name, data in files.items()}
    result = browser_run(files, refs, bundle=tmp_path / "old")
    (r,) = result["results"]
    assert "error" not in r, r.get("error")
    assert _within(r, refs["tall"]), r


def _repack(data: bytes, **fields) -> bytes:
    """A CRC-valid file with header fields, sections or chunks replaced."""
    c = bitstream.unpack(data)
    h = c.header
    z, y = fields.pop("z", c.z), fields.pop("y", c.y)
    chunks = fields.pop("chunks", c.chunks)
    header = Header(**{**h.__dict__, "z_length": len(z), "y_length": len(y), **fields})
    return bitstream.pack(header, z, y, chunks)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _malformed(good: bytes, rgba: bytes) -> dict[str, bytes]:
    body = good[:-4]
    alph = bitstream.unpack(rgba).chunks[b"ALPH"]
    return {
        "bad_magic": b"NOPE" + good[4:],
        "short_header": good[:20],
        "version": good[:4] + b"\x09" + good[5:],
        "mode": good[:5] + b"\x07" + good[6:],
        "quality": good[:6] + bytes([101]) + good[7:],
        "index_path": good[:7] + b"\x01" + good[8:],
        "wide": good[:16] + struct.pack("<I", 70000) + good[20:],
        "bomb": good[:16] + struct.pack("<II", 20000, 20000) + good[24:],
        "section_length": good[:24] + struct.pack("<I", 5) + good[28:],
        "truncated": good[:-10],
        "crc": good[:40] + bytes([good[40] ^ 1]) + good[41:],
        "stray": _with_crc(body + b"abc"),
        "critical_chunk": _with_crc(body + b"ZZZZ" + struct.pack("<I", 0)),
        "twice": _with_crc(body + (b"exif" + struct.pack("<I", 1) + b"x") * 2),
        "chunk_type": _with_crc(body + b"ab1d" + struct.pack("<I", 0)),
        "chunk_length": _with_crc(body + b"exif" + struct.pack("<I", 99)),
        **{f"model_of_{release}": _repack(good, model_id=i) for i, release in RELEASED_MODELS.items()},
        "unknown_model": _repack(good, model_id="00" * 8),
        "no_room": _repack(good, width=4096, height=4096),
        "y_ends_early": _repack(good, y=bitstream.unpack(good).y[: len(bitstream.unpack(good).y) // 2 // 4 * 4]),
        "alpha_missing": _repack(rgba, chunks={}),
        "alpha_forbidden": _repack(good, chunks={b"ALPH": alph}),
        "alpha_not_zlib": _repack(rgba, chunks={b"ALPH": b"not zlib at all"}),
        "alpha_trailing": _repack(rgba, chunks={b"ALPH": alph + b"junk"}),
        "alpha_short": _repack(rgba, chunks={b"ALPH": zlib.compress(b"\0" * 10)}),
        "alpha_cut": _repack(rgba, chunks={b"ALPH": alph[:-6]}),
    }


def test_browser_refuses_malformed_files_as_python_does(browser_run):
    good = api.compress(random_image(70, 50, seed=7), 50)
    rgba = api.compress(random_image(70, 50, "RGBA", seed=8), 50)
    files = _malformed(good, rgba)
    expected = {}
    for name, data in files.items():
        with pytest.raises(OnicError) as e:
            api.decompress(data)
        expected[name] = str(e.value)
    result = browser_run(files)
    for r in result["results"]:
        assert r.get("onic"), (r["name"], r)
        assert r["error"] == expected[r["name"]], r["name"]


def test_onic_view_serves_the_page_the_bundle_and_the_files_only(tmp_path):
    _require(_missing(browser=False))
    import sys
    import urllib.error
    import urllib.request

    f = tmp_path / "a b.onic"
    f.write_bytes(api.compress(random_image(40, 30), 50))
    p = subprocess.Popen([sys.executable, "-m", "codec.cli", "view", str(f), "--port", "0", "--no-browser"],
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        url = line.split(" at ")[1].split()[0]

        def get(path: str) -> tuple[int, bytes, dict]:
            try:
                with urllib.request.urlopen(url + path.lstrip("/")) as r:
                    return r.status, r.read(), dict(r.headers)
            except urllib.error.HTTPError as e:
                return e.code, b"", {}

        status, page, headers = get("/")
        assert status == 200 and b"demo.js" in page
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"  # threads for onnxruntime-web
        listing = json.loads(get("/files.json")[1])
        assert [x["name"] for x in listing] == ["a b.onic"]
        assert get(listing[0]["url"].replace(" ", "%20"))[1] == f.read_bytes()
        assert json.loads(get("/models/default/manifest.json")[1])["model_id"] == api.default_bundle().model_id
        for outside in ("/src/../../codec/cli.py", "/src/%2e%2e/%2e%2e/pyproject.toml", "/files/1/x", "/etc/passwd",
                        "/models/default/../../cli.py"):
            assert get(outside)[0] == 404, outside
    finally:
        p.terminate()
        p.wait(10)


def _random_tables(rng: np.random.Generator, count: int) -> entropy.TableSet:
    """Tables from flat to nearly deterministic, 2 to 300 entries, counts up to 2^16."""
    tables = []
    for _ in range(count):
        n = int(rng.integers(2, 300))
        skew = rng.uniform(0, 12)
        v = np.maximum(1, (65535 * np.exp(-skew * np.abs(np.linspace(-1, 1, n)) * rng.uniform(0.5, 2, n)))).astype(int)
        tables.append(v)
    starts = np.concatenate([[0], np.cumsum([len(v) for v in tables])])
    offsets = np.array([-int(rng.integers(0, len(v))) for v in tables])
    return entropy.TableSet(np.concatenate(tables), starts, offsets)


def test_range_decoding_gives_constrictions_symbols(tmp_path):
    """The JavaScript range decoder against constriction, on random tables, parts and escapes."""
    _require(_missing(browser=False))
    rng = np.random.default_rng(11)
    cases, expected = [], []
    for case in range(12):
        ts = [_random_tables(rng, int(rng.integers(1, 40))) for _ in range(2)]
        enc = entropy.Encoder()
        parts, symbols = [], []
        for _ in range(int(rng.integers(1, 4))):
            t = int(rng.integers(0, 2))
            n = int(rng.integers(0, 5000))
            ids = rng.integers(0, len(ts[t]), n)
            sym = (ts[t].offsets[ids] + rng.geometric(rng.uniform(0.05, 0.9), n) - 1).astype(np.int64)
            sym[rng.random(n) < 0.01] = rng.integers(-(2**23), 2**23)  # escapes of every length
            enc.add(sym, ids, ts[t])
            parts.append({"ids": ids.tolist(), "table": t})
            symbols.append(sym.tolist())
        data = enc.finish()
        if case % 4 == 3:  # a stream cut short: the same error as Python's
            data = data[: len(data) // 2 // 4 * 4]
            with pytest.raises(OnicError) as e:
                d = entropy.Decoder(data)
                for p in parts:
                    d.read(np.array(p["ids"], dtype=np.int64), ts[p["table"]])
            symbols = str(e.value)
        cases.append({"tables": [{"values": t.values.tolist(), "starts": t.starts.tolist(),
                                  "offsets": t.offsets.tolist()} for t in ts],
                      "data": base64.b64encode(data).decode(), "parts": parts})
        expected.append(symbols)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = subprocess.run(["node", str(WEB_DIR / "test" / "entropy.mjs"), str(tmp_path / "cases.json")],
                         capture_output=True, text=True, timeout=300, cwd=WEB_DIR, check=True)
    for got, want in zip(json.loads(out.stdout), expected, strict=True):
        if isinstance(want, str):
            assert got.get("error") == want
        else:
            assert got == {"parts": want}


def _fuzzed(good: bytes, rng: np.random.Generator, count: int) -> dict[str, bytes]:
    """Truncations, and bit flips behind a recomputed CRC (so that they reach the sections)."""
    out = {}
    for i, cut in enumerate(sorted(set(rng.integers(0, len(good), count // 3).tolist()))):
        out[f"cut_{i}"] = good[:cut]
    body = bytearray(good[:-4])
    for i in range(count - len(out)):
        flipped = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(8, len(flipped)))  # past magic and version fields: reach deeper checks
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        out[f"flip_{i}"] = _with_crc(bytes(flipped))
    return out


def test_browser_agrees_with_python_on_damaged_files(browser_run):
    """Whatever Python makes of a damaged file, the browser makes of it too: the same symbols,
    or the same error (constriction's own words in parentheses aside)."""
    rng = np.random.default_rng(3)
    good = api.compress(random_image(96, 80, "RGBA", seed=9), 70)
    files = _fuzzed(good, rng, 60)
    result = browser_run(files)
    outcomes = {"error": 0, "decoded": 0}
    for r in result["results"]:
        data = files[r["name"]]
        try:
            _, z, y = api.decode_latents(data)
        except OnicError as e:
            assert r.get("onic"), (r["name"], r)
            assert r["error"].split(" (")[0] == str(e).split(" (")[0], r["name"]
            outcomes["error"] += 1
            continue
        assert "error" not in r, (r["name"], r["error"])
        assert (r["z"], r["y"]) == (_digest(z), _digest(y)), r["name"]
        outcomes["decoded"] += 1
    assert outcomes["error"] > 20


def test_view_without_the_web_folder_is_one_clear_error(tmp_path, monkeypatch):
    from codec import webview

    monkeypatch.setattr(webview, "WEB_DIR", tmp_path / "web")
    with pytest.raises(OnicError, match="source checkout"):
        webview.make_server([], DEFAULT_BUNDLE)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("")
    with pytest.raises(OnicError, match="npm ci"):
        webview.make_server([], DEFAULT_BUNDLE)
