"""Every failure a user or a hostile file can cause: one line, a defined exit code, nothing lost.

Each test builds its case in a temporary folder; the command runs as a
subprocess where the behaviour involves the process itself (signals, pipes,
umask, races), else through click's runner.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

import codec
from codec.cli import main
from tests.conftest import DEFAULT_BUNDLE, SAMPLE, random_image, run_onic


def invoke(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def one_line(result, code: int = 2) -> str:
    """The single 'onic: error:' line of a failed command (a runner result or a CompletedProcess)."""
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    rc = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onic: error: "), err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture()
def small_onic(tmp_path) -> Path:
    path = tmp_path / "small.onic"
    path.write_bytes(codec.compress(random_image(48, 32), 40))
    return path


# 2. Pillow's errors when reading and writing images


def test_pillow_read_errors_are_one_line(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)  # zTXt past Pillow's limit
    big_text = tmp_path / "ztxt.png"
    random_image(16, 16).save(big_text, pnginfo=info)
    ppm = tmp_path / "bad.ppm"
    ppm.write_bytes(b"P6\n16 16\n255\n" + b"\0" * 10)  # far too few pixels
    ppm2 = tmp_path / "bad2.ppm"
    ppm2.write_bytes(b"P6\n-3 x\n255\n")
    for path in (big_text, ppm, ppm2):
        line = one_line(invoke("compress", str(path), "-o", str(tmp_path / "out.onic")))
        assert "cannot read image" in line and str(path) in line
    assert not (tmp_path / "out.onic").exists()


def test_pillow_write_errors_name_the_output_not_a_temporary(tmp_path):
    wide = tmp_path / "wide.onic"
    wide.write_bytes(codec.compress(random_image(16400, 2), 0))
    image = random_image(8, 8)
    bad_exif = tmp_path / "badexif.onic"
    bad_exif.write_bytes(codec.compress(_with_exif(image, b"not a TIFF block"), 0))
    # (EXIF too long for JPEG is no longer one: it is left out with a warning, tests/test_ecosystem.py)
    cases = [(wide, "wide.webp"), (bad_exif, "badexif.avif"), (bad_exif, "badexif.tif"), (wide, "wide.blp")]
    for src, name in cases:
        line = one_line(invoke("decompress", str(src), "-o", str(tmp_path / name)))
        assert f"cannot write {tmp_path / name}" in line and ".tmp" not in line, line
        assert not (tmp_path / name).exists()
    assert leftovers(tmp_path) == []


def _with_exif(image: Image.Image, exif: bytes) -> Image.Image:
    image = image.copy()
    image.info["exif"] = exif
    return image


# 2. Usage errors, internal errors, interruptions, pipes


@pytest.mark.parametrize("args", [
    ["--format", "png/x"], ["--format", ""], ["--format", "xyz"], ["--format", "."],
])
def test_bad_format_is_one_line(small_onic, args):
    line = one_line(invoke("decompress", str(small_onic), *args))
    assert "--format" in line


def test_out_dir_under_a_regular_file(small_onic, tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        line = one_line(invoke("decompress", str(small_onic), "--out-dir", str(out)))
        assert str(tmp_path / "file") in line


def test_overlong_file_name(small_onic, tmp_path):
    out = tmp_path / ("x" * 300 + ".png")
    line = one_line(invoke("decompress", str(small_onic), "-o", str(out)))
    assert "too long" in line.lower()
    assert leftovers(tmp_path) == []
    line = one_line(invoke("compress", str(tmp_path / ("y" * 300 + ".png"))))
    assert "too long" in line.lower()


def test_usage_errors_are_one_line():
    for args in (["compress", str(SAMPLE), "-q", "101"], ["compress"], ["frobnicate"],
                 ["compress", str(SAMPLE), "--no-such-option"]):
        one_line(invoke(*args))


def test_internal_error_is_one_line_and_debug_shows_the_traceback(small_onic, monkeypatch):
    from codec import bitstream

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(bitstream, "unpack", broken)
    line = one_line(invoke("info", str(small_onic)))
    assert "internal error: ZeroDivisionError: a bug" in line and "--debug" in line
    r = invoke("--debug", "info", str(small_onic))
    assert r.exit_code == 2 and "Traceback" in r.stderr


def test_stdin_is_named_stdin(tmp_path):
    line = one_line(invoke("compress", "-", "-o", str(tmp_path / "x.onic"), input=b"not an image"))
    assert line.endswith("cannot read image <stdin>: no format Pillow reads")  # no <_io.BytesIO object at 0x…>
    line = one_line(invoke("compress", "-", "-o", str(tmp_path / "x.onic"), input=b""))
    assert line.endswith("cannot read image <stdin>: empty input")
    (tmp_path / "empty.png").write_bytes(b"")
    assert one_line(invoke("compress", str(tmp_path / "empty.png"))).endswith("empty.png: empty input")
    line = one_line(invoke("decompress", "-", "-o", str(tmp_path / "x.png"), input=b"ONIC"))
    assert "truncated file" in line


def _crash_worker(job):
    os._exit(3)  # what the OOM killer does to a worker


def test_dead_worker_is_one_line(capsys):
    from codec.batch import Job
    from codec.cli import _run_pool

    jobs = [Job("a.png", "a.onic"), Job("b.png", "b.onic")]
    with pytest.raises(SystemExit) as e:
        _run_pool(_crash_worker, jobs, 2, lambda r: None)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "worker process died" in err[0] and "a.png" in err[0]


def _big_inputs(folder: Path, n: int = 6) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (1024, 1536, 3), dtype=np.uint8)).save(folder / f"{i}.bmp")
    return sorted(str(p) for p in folder.iterdir())


def _as_a_foreground_job():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM),
                                       (signal.SIGHUP, 128 + signal.SIGHUP)])
def test_signals_exit_with_their_code_and_leave_no_temporary(tmp_path, sig, code, jobs):
    inputs = _big_inputs(tmp_path / "in")
    out = tmp_path / "out"
    # Its own process group, as a shell job: the signal reaches the workers too, as Ctrl-C would.
    # A foreground job's SIGINT is at its default even where pytest's is ignored (started with `&`).
    p = subprocess.Popen([sys.executable, "-m", "codec.cli", "compress", *inputs, "--out-dir", str(out), "-j", jobs],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=_as_a_foreground_job)
    deadline = time.monotonic() + 120
    while not (out.exists() and any(out.iterdir())) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)  # wait until the first output is in place: the command is past its start-up
    os.killpg(p.pid, sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert b"Traceback" not in err and len(err.decode().strip().splitlines()) <= 1, err
    time.sleep(0.5)  # workers finishing their file after the main process left
    assert leftovers(out) == []
    for f in out.iterdir():
        assert codec.read_header(f.read_bytes()).width == 1536  # whole files only


def test_a_worker_killed_mid_write_leaves_no_temporary(tmp_path, monkeypatch):
    """SIGKILL (the OOM killer's) gives a worker no chance to remove its temporary file; the main
    process removes it, and only its own run's: another run's temporary in the folder stays."""
    main_pid = os.getpid()
    write_bytes = Path.write_bytes

    def dying_write(self, data):
        if os.getpid() != main_pid and self.name.startswith(".onic-"):  # in a worker, mid-write
            write_bytes(self, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return write_bytes(self, data)

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        random_image(40, 32, seed=i).save(src / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".onic-1-other.tmp").write_bytes(b"another run's")
    monkeypatch.setattr(Path, "write_bytes", dying_write)
    line = one_line(invoke("compress", *sorted(map(str, src.iterdir())), "--out-dir", str(out), "-j", "2"))
    assert "worker process died" in line
    assert leftovers(out) == [".onic-1-other.tmp"]
    assert not any(p.suffix == ".onic" for p in out.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_temporary_files_steps_waits_for_their_end(sig, tmp_path):
    """The steps that create, place and remove a temporary file hold signals: the block runs to
    its end, then the signal acts (here Python's KeyboardInterrupt, and SIGTERM's own handler)."""
    from codec.batch import _uninterrupted

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop

    # Python's own SIGINT handler, even where pytest started with SIGINT ignored (a job started with `&`)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous, interrupt = signal.signal(signal.SIGTERM, stop), signal.getsignal(signal.SIGINT)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Stop):
            with _uninterrupted():
                os.kill(os.getpid(), sig)
                time.sleep(0.05)  # the handler would run here, between the steps
                steps.append("after")
        assert steps == ["after"] and signal.getsignal(signal.SIGINT) is interrupt  # handlers restored
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, inherited)


def test_closed_stdout_ends_quietly(small_onic):
    p = subprocess.Popen([sys.executable, "-m", "codec.cli", "info", *[str(small_onic)] * 400],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # like `| head -1`
    err = p.stderr.read()
    p.wait(timeout=60)
    assert err == b"" and p.returncode == 141


# 3. Nothing lost, nothing overwritten


def test_two_writers_of_one_output_one_wins(tmp_path):
    src = tmp_path / "a.png"
    random_image(64, 64).save(src)
    out = tmp_path / "a.onic"
    procs = [subprocess.Popen([sys.executable, "-m", "codec.cli", "compress", str(src), "-o", str(out)],
                              stderr=subprocess.PIPE) for _ in range(3)]
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) == [0, 2, 2], codes
    assert codec.read_header(out.read_bytes()).width == 64
    assert leftovers(tmp_path) == []


def test_name_collisions_are_refused_before_any_work(tmp_path):
    random_image(32, 32).save(tmp_path / "a.png")
    random_image(32, 32).save(tmp_path / "a.jpg")
    for args in ([], ["--force"], ["-j", "2"]):
        line = one_line(invoke("compress", str(tmp_path / "a.png"), str(tmp_path / "a.jpg"), *args))
        assert "would both write" in line
    line = one_line(invoke("compress", str(tmp_path), "--out-dir", str(tmp_path / "out"), "--force"))
    assert "would both write" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png"]


def test_dangling_symlink_counts_as_existing(small_onic, tmp_path):
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "nowhere.png")
    assert "exists" in one_line(invoke("decompress", str(small_onic), "-o", str(link)))
    assert link.is_symlink() and not (tmp_path / "nowhere.png").exists()


def _umask_077():
    os.umask(0o077)


def test_umask_is_respected_and_force_keeps_the_mode(small_onic, tmp_path):
    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "codec.cli", "decompress", str(small_onic), "-o", str(out)],
                       preexec_fn=_umask_077, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    out.chmod(0o640)
    assert run_onic("decompress", str(small_onic), "-o", str(out), "--force").returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_refuses_to_overwrite_the_input(tmp_path):
    src = tmp_path / "same.png"
    random_image(32, 32).save(src)
    before = src.read_bytes()
    line = one_line(invoke("compress", str(src), "-o", str(src), "--force"))
    assert "also the input" in line and src.read_bytes() == before
    (tmp_path / "link.png").symlink_to(src)
    one_line(invoke("compress", str(src), "-o", str(tmp_path / "link.png"), "--force"))
    assert src.read_bytes() == before


def test_onic_data_under_an_image_extension_warns(tmp_path):
    r = invoke("compress", str(SAMPLE), "-o", str(tmp_path / "out.png"))
    assert r.exit_code == 0 and "warning" in r.stderr and "PNG" in r.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"ONIC")


def test_output_into_a_missing_folder_is_created(small_onic, tmp_path):
    out = tmp_path / "new" / "deeper" / "x.png"
    assert invoke("decompress", str(small_onic), "-o", str(out)).exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG")


# 5. What a new user tripped over


def test_psnr_of_16_bit_input_is_right(tmp_path):
    ramp = np.linspace(0, 65535, 128 * 96).reshape(96, 128).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    r = invoke("compress", str(path), "--psnr", "-q", "90")
    assert r.exit_code == 0
    psnr = float(r.stderr.split("PSNR ")[1].split(" dB")[0])
    assert psnr > 25  # the clipped comparison said about 2.5 dB
    data, quality = codec.api.compress_to_target(str(path), psnr=psnr - 1)
    assert codec.api.psnr_of(str(path), data) >= psnr - 1


def test_animated_input_warns(tmp_path):
    frames = [random_image(32, 32, seed=i).convert("P") for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(codec.OnicWarning, match="first of its 3 frames"):
        codec.compress(str(tmp_path / "anim.gif"))


def test_png_raw_profile_exif_is_kept(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "onic camera"  # Make
    block = exif.tobytes()
    tiff = block[6:] if block.startswith(b"Exif\0\0") else block
    text = f"\nexif\n{len(tiff):8d}\n" + tiff.hex()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text, zip=True)
    path = tmp_path / "raw.png"
    random_image(32, 32).save(path, pnginfo=info)
    out = codec.decompress(codec.compress(str(path)))
    assert out.getexif()[0x010F] == "onic camera"


def test_info_takes_several_files(small_onic, tmp_path):
    (tmp_path / "bad.onic").write_bytes(b"nope")
    r = invoke("info", str(small_onic), str(small_onic))
    assert r.exit_code == 0 and r.stdout.count("model id:") == 2
    r = invoke("info", str(small_onic), str(tmp_path / "bad.onic"))
    assert r.exit_code == 1 and r.stdout.count("model id:") == 1 and "bad.onic" in r.stderr


def test_output_quality_of_lossy_formats(small_onic, tmp_path):
    sizes = {}
    for q in (20, 95):
        out = tmp_path / f"q{q}.jpg"
        assert invoke("decompress", str(small_onic), "-o", str(out), "--output-quality", str(q)).exit_code == 0
        sizes[q] = out.stat().st_size
    assert sizes[20] < sizes[95]


def test_model_option(tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_BUNDLE, model)
    onic = tmp_path / "s.onic"
    assert invoke("compress", str(SAMPLE), "-o", str(onic), "--model", str(model)).exit_code == 0
    assert invoke("decompress", str(onic), "-o", str(tmp_path / "s.png"), "--model", str(model)).exit_code == 0
    line = one_line(invoke("compress", str(SAMPLE), "-o", str(tmp_path / "t.onic"), "--model", str(tmp_path)))
    assert "no model bundle" in line


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("command", ["decompress", "info"])
def test_an_endless_device_fails_after_its_header(tmp_path, command):
    out = ["-o", str(tmp_path / "x.png")] if command == "decompress" else []
    assert "bad magic" in one_line(invoke(command, "/dev/zero", *out))
    with pytest.raises(codec.bitstream.OnicError, match="bad magic"):
        codec.decompress("/dev/zero")  # the API reads paths the same way


def endless(args: list[str], head: bytes, bound: int) -> tuple[str, int]:
    """Run onic with ``head`` then zeros on stdin, up to 4 · ``bound`` bytes (the test's own bound:
    a reader without one reads on); its one error line and the bytes sent after the head."""
    import threading

    p = subprocess.Popen([sys.executable, "-m", "codec.cli", *args], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    sent = 0

    def feed() -> None:
        nonlocal sent
        try:
            p.stdin.write(head)
            while sent < 4 * bound:
                p.stdin.write(bytes(2**20))
                sent += 2**20
            p.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    err = p.stderr.read()  # until the process ends (communicate would close stdin under the writer)
    p.wait(timeout=120)
    writer.join()
    return one_line(subprocess.CompletedProcess(p.args, p.returncode, b"", err)), sent


def test_an_endless_stream_stops_where_its_header_ends(tmp_path, small_onic):
    """A stream with an honest header and no end is read no further than the header allows
    (sections, the alpha bound, bitstream.STREAM_CHUNKS), then fails in one line."""
    from codec.bitstream import STREAM_CHUNKS

    line, sent = endless(["decompress", "-", "-o", str(tmp_path / "x.png")], small_onic.read_bytes(), STREAM_CHUNKS)
    assert sent < 2 * STREAM_CHUNKS and "goes on past" in line
    assert not (tmp_path / "x.png").exists()


def test_bench_speed_takes_the_model_option(tmp_path):
    """--speed times --model's bundle (it once timed the shipped one whatever was given): a folder
    that is not a bundle fails in one line, before any timing."""
    line = one_line(invoke("bench", str(SAMPLE.parent), "--speed", "--model", str(tmp_path)))
    assert "no model bundle" in line


def test_bench_without_its_extra_fails_first(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    line = one_line(invoke("bench", str(SAMPLE.parent), "--out", str(tmp_path / "r")))
    assert "onic[bench]" in line and "matplotlib" in line
    assert not (tmp_path / "r").exists()


def test_alpha_plane_trailing_bytes_fail_cleanly(tmp_path):
    """Chunks are checked first: a damaged RGBA file is one line, whatever the image size."""
    good = codec.compress(random_image(16, 16, "RGBA"), 10)
    h = codec.read_header(good)
    start = 32 + h.z_length + h.y_length
    body = good[:start] + b"ALPH" + (len(zlib.compress(bytes(256))) + 3).to_bytes(4, "little")
    body += zlib.compress(bytes(256)) + b"xyz"
    data = body + zlib.crc32(body).to_bytes(4, "little")
    line = one_line(invoke("decompress", "-", "-o", str(tmp_path / "x.png"), input=data))
    assert "after its zlib stream" in line


def test_pillow_plugin_errors_are_oserrors(small_onic):
    data = bytearray(small_onic.read_bytes())
    data[-8] ^= 1
    with Image.open(io.BytesIO(bytes(data))) as im, pytest.raises(OSError):
        im.load()


@pytest.mark.parametrize("signal_exception", ["KeyboardInterrupt", "Terminated"])
def test_an_interrupted_write_leaves_nothing(tmp_path, signal_exception):
    from codec.batch import write_atomic
    from codec.cli import Terminated

    kind = KeyboardInterrupt if signal_exception == "KeyboardInterrupt" else Terminated

    def write(p: Path) -> None:
        p.write_bytes(b"half")
        raise kind(15) if kind is Terminated else kind()

    with pytest.raises(kind):
        write_atomic(tmp_path / "out.png", write, force=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_an_endless_stream_of_no_image_fails_at_once(tmp_path):
    """`cat /dev/zero | onic compress -` read until memory ran out: now its first MiB is no image."""
    with open("/dev/zero", "rb") as zeros:
        r = subprocess.run([sys.executable, "-m", "codec.cli", "compress", "-", "-o", str(tmp_path / "x.onic")],
                           stdin=zeros, capture_output=True, timeout=120)
    assert "cannot identify an image in <stdin>" in one_line(r)
    assert not (tmp_path / "x.onic").exists()


def test_an_endless_image_stream_stops_at_the_pixel_bound(tmp_path):
    """A stream that starts as an image and never ends is read no further than --max-pixels allows
    (8 bytes a pixel and batch.IMAGE_SLACK), then fails in one line."""
    from codec.batch import IMAGE_BYTES_PER_PIXEL, IMAGE_SLACK

    limit = 1000 * IMAGE_BYTES_PER_PIXEL + IMAGE_SLACK
    buf = io.BytesIO()
    random_image(32, 32, seed=1).save(buf, "PNG")
    line, sent = endless(["compress", "-", "-o", str(tmp_path / "x.onic"), "--max-pixels", "1000"], buf.getvalue(),
                         limit)
    assert sent < 2 * limit and "goes on past" in line
    assert not (tmp_path / "x.onic").exists()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_streamed_images_longer_than_the_prefix_still_compress(tmp_path, fmt):
    """Past the first MiB a streamed image reads on: a PNG, whose prefix opens, and a lossless
    WebP, whose prefix does not (Pillow decodes WebP whole) but whose magic number says WebP."""
    from codec.batch import IMAGE_PREFIX

    buf = io.BytesIO()
    random_image(1000, 800, seed=2).save(buf, fmt, lossless=True)
    assert len(buf.getvalue()) > IMAGE_PREFIX
    r = invoke("compress", "-", "-o", str(tmp_path / "x.onic"), input=buf.getvalue())
    assert r.exit_code == 0, r.output
    assert codec.decompress(tmp_path / "x.onic").size == (1000, 800)


@pytest.mark.parametrize("field, value, says", [
    ("files", 5, "manifest has no files"),
    ("files", {"decoder.onnx": "00"}, "files does not list analysis.onnx"),
    ("encoder_files", ["synthesis_grad.onnx"], "encoder_files must map file names"),
    ("tile_files", {"../decoder_tiles.onnx": "00"}, "not a file of the bundle's folder"),
    ("model_id", 7, "model_id must be a string"),
    ("also_decodes", "abc", "also_decodes must be a list"),
    ("stride", "a", "stride must be a positive multiple of 16"),
    ("stride", 0, "stride must be a positive multiple of 16"),
    ("config", [], "config must give N and M"),
    ("config", {"N": 128, "M": 10**9}, "config must give N and M"),
])
def test_a_damaged_manifest_is_one_clear_line(tmp_path, field, value, says):
    """A bundle's manifest is checked field by field before any is used, verified or not."""
    import json
    import shutil

    from codec.bitstream import OnicError
    from codec.session import Bundle

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_BUNDLE, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest[field] = value
    (model / "manifest.json").write_text(json.dumps(manifest))
    line = one_line(invoke("compress", str(SAMPLE), "-o", str(tmp_path / "t.onic"), "--model", str(model)))
    assert f"model bundle {model} is damaged: manifest" in line and says in line
    assert not (tmp_path / "t.onic").exists()
    with pytest.raises(OnicError, match=says):
        Bundle(model, verify=False)


@pytest.mark.parametrize(("signal_error", "code"), [(KeyboardInterrupt(), 130), ("terminated", 128 + signal.SIGTERM)])
def test_an_error_raised_while_a_signal_unwinds_is_the_signal(capsys, signal_error, code):
    """Ctrl-C that lands inside a library's lock code can make it fail its own cleanup (seen once in CI:
    a --jobs 2 batch exited 2 with "internal error: RuntimeError: cannot release un-acquired lock"):
    the command still exits as interrupted."""
    from codec.cli import OnicGroup, Terminated

    raised = Terminated(signal.SIGTERM) if signal_error == "terminated" else signal_error
    group = OnicGroup()

    @group.command()
    def wait() -> None:
        try:
            raise raised
        except (KeyboardInterrupt, Terminated):
            raise RuntimeError("cannot release un-acquired lock") from None  # from None: __context__ still set

    with pytest.raises(SystemExit) as e:
        group.main(["wait"], prog_name="onic")
    assert e.value.code == code
    assert "internal error" not in capsys.readouterr().err
