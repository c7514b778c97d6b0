"""Ray Data batch coding on a local 2-CPU Ray: the same bytes as the CLI, failures in the manifest, resumable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from codec import raydata  # noqa: E402
from codec.cli import main  # noqa: E402
from tests.conftest import random_image  # noqa: E402

BROKEN = {"broken/text.png": b"not a png", "broken/empty.jpg": b"", "broken/truncated.png": None}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """40 images in three folders, 3 of them broken."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(37):
        folder = root / ("" if i < 20 else "a" if i < 30 else "a/b")
        folder.mkdir(parents=True, exist_ok=True)
        random_image(48 + i, 40 + (i % 7), "RGBA" if i % 9 == 0 else "RGB", seed=i).save(
            folder / f"img{i}.{'png' if i % 3 else 'webp'}")
    (root / "broken").mkdir()
    for name, data in BROKEN.items():
        if data is None:
            data = (root / "img1.png").read_bytes()[:100]
        (root / name).write_bytes(data)
    return root


def cli_outputs(photos: Path, out: Path, command: str, suffix: str, *options: str) -> dict[str, bytes]:
    """What the single-process CLI writes for every folder of ``photos``, by relative name."""
    result = {}
    for folder in sorted({p.parent for p in photos.rglob("*") if p.is_file()}):
        rel = folder.relative_to(photos)
        CliRunner().invoke(main, [command, str(folder), "--out-dir", str(out / rel), "--quiet", *options])
        for f in (out / rel).glob(f"*{suffix}"):
            result[str(rel / f.name)] = f.read_bytes()
    return result


def tree(root: Path, suffix: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob(f"*{suffix}")}


def test_compress_and_decompress_match_the_cli_and_record_failures(local_ray, photos, tmp_path):
    out = tmp_path / "onic"
    s = raydata.code_dataset(str(photos), str(out), "compress", quality=60)
    assert (s.files, s.coded, s.skipped, s.failed) == (40, 37, 0, 3)
    rows = {r["src"]: r for r in raydata.read_manifest(s.manifest)}
    assert len(rows) == 40
    for name in BROKEN:
        assert rows[name]["status"] == "failed" and "cannot read image" in rows[name]["error"]
    good = [r for r in rows.values() if r["status"] == "coded"]
    assert all(r["bytes"] == (out / r["dst"]).stat().st_size and r["bpp"] > 0 for r in good)
    assert all(r["warnings"] == "" for r in good)

    expected = cli_outputs(photos, tmp_path / "cli", "compress", ".onic", "-q", "60")
    assert tree(out, ".onic") == expected and len(expected) == 37

    decoded = tmp_path / "png"
    s = raydata.code_dataset(str(out), str(decoded), "decompress")
    assert (s.coded, s.failed) == (37, 0)
    assert tree(decoded, ".png") == cli_outputs(out, tmp_path / "cli-png", "decompress", ".png")


def test_rerun_skips_what_is_done_and_redoes_what_is_not(local_ray, photos, tmp_path):
    out = tmp_path / "onic"
    raydata.code_dataset(str(photos), str(out), "compress")
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*.onic")}
    s = raydata.code_dataset(str(photos), str(out), "compress")
    assert (s.coded, s.skipped, s.failed) == (0, 37, 3)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.onic")} == times

    damaged = out / "a" / "img22.onic"
    damaged.write_bytes(damaged.read_bytes()[:-5])  # an interrupted or damaged output
    (out / "a" / "b" / "img31.onic").unlink()
    s = raydata.code_dataset(str(photos), str(out), "compress")
    assert (s.coded, s.skipped) == (2, 35)
    rows = {r["src"]: r["status"] for r in raydata.read_manifest(s.manifest)}
    assert rows["a/img22.png"] == rows["a/b/img31.png"] == "coded"
    s = raydata.code_dataset(str(photos), str(out), "compress", quality=10)  # another quality: all redone
    assert s.coded == 37


def test_colliding_names_are_failures_not_a_lost_file(local_ray, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    random_image(32, 32, seed=1).save(src / "x.png")
    random_image(32, 32, seed=2).save(src / "x.jpg")
    random_image(32, 32, seed=3).save(src / "y.png")
    s = raydata.code_dataset(str(src), str(tmp_path / "out"), "compress")
    assert (s.coded, s.failed) == (1, 2)
    assert sorted(os.listdir(tmp_path / "out")) == [raydata.MANIFEST, "y.onic"]


def test_cli_ray_option(local_ray, photos, tmp_path):
    src = tmp_path / "few"
    shutil.copytree(photos / "a" / "b", src)
    r = CliRunner().invoke(main, ["compress", str(src), "--out-dir", str(tmp_path / "out"), "--ray"])
    assert r.exit_code == 0, r.output
    assert "7 coded" in r.stderr and (tmp_path / "out" / raydata.MANIFEST).exists()
    r = CliRunner().invoke(main, ["compress", str(photos), "--out-dir", str(tmp_path / "all"), "--ray", "-q", "5"])
    assert r.exit_code == 1 and "3 failed" in r.stderr  # some files failed: exit 1, as a batch
    r = CliRunner().invoke(main, ["compress", str(src), "-o", str(tmp_path / "x.onic"), "--ray"])
    assert r.exit_code == 2 and "--out-dir" in r.stderr


def test_a_model_folder_reaches_every_actor(local_ray, photos, tmp_path):
    from tests.conftest import DEFAULT_BUNDLE

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_BUNDLE, model)
    src = tmp_path / "few"
    shutil.copytree(photos / "a" / "b", src)
    s = raydata.code_dataset(str(src), str(tmp_path / "out"), "compress", model=str(model))
    assert s.coded == 7
    s = raydata.code_dataset(str(src), str(tmp_path / "out2"), "compress", model=None)
    assert tree(tmp_path / "out", ".onic") == tree(tmp_path / "out2", ".onic")
