"""Distributed training: torchrun with 2 processes on the CPU (gloo), a few steps, and resumes across rank counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export.train import load_images, load_model, parse_args, train  # noqa: E402
from tests.conftest import ROOT, image_folder  # noqa: E402


@pytest.fixture
def data(tmp_path) -> Path:
    return image_folder(tmp_path / "data", 5)


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "export.train", "--device", "cpu", "--threads", "1", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_each_rank_decodes_only_its_shard(data):
    shards = [load_images(str(data), 0, 64, rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [3, 2]
    everything = load_images(str(data), 0, 64)
    assert all((a == b).all() for a, b in zip(everything[0::2], shards[0], strict=True))
    assert all((a == b).all() for a, b in zip(everything[1::2], shards[1], strict=True))


def test_two_ranks_stay_identical_and_resume_with_any_rank_count(tmp_path, data):
    run = tmp_path / "run"
    common = ["--data", str(data), "--crop", "64", "--batch_size", "2", "--log_every", "1", "--out", str(run)]
    r = torchrun(2, *common, "--N", "8", "--M", "12", "--max_steps", "3", "--warmup_steps", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ranks (gloo)" in r.stdout
    assert "largest weight difference from rank 0 across 2 ranks 0\n" in r.stdout
    assert r.stdout.count("step 3: loss") == 1  # rank 0 alone logs
    assert sorted(p.name for p in run.iterdir()) == ["ckpt.pt", "weights.pt"]
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 3

    # Resume the 2-rank run on 1 process, then on 2 again.
    train(parse_args(["--data", str(data), "--resume", str(run / "ckpt.pt"), "--max_steps", "5", "--out", str(run),
                      "--threads", "1"]))
    model, ck = load_model(run / "ckpt.pt")
    assert ck["step"] == 5 and ck["config"]["crop"] == 64 and model.cfg.M == 12
    r = torchrun(2, *common, "--resume", str(run / "ckpt.pt"), "--max_steps", "7", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "across 2 ranks 0\n" in r.stdout
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 7
