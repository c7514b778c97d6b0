"""Every example in the README runs: python blocks are executed, `onic` lines are run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SAMPLE

README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "photo.png")
    (tmp_path / "photos").mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(SAMPLE, tmp_path / "photos" / name)
    return tmp_path


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples(index, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    exec(compile(blocks("python")[index], f"README python block {index}", "exec"), {})


def test_command_line_examples(workdir):
    (block,) = re.findall(r"```sh\n(.*?)```", section("Command line"), flags=re.S)
    bindir = workdir / "bin"
    bindir.mkdir()
    (bindir / "onic").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m codec.cli \"$@\"\n")
    (bindir / "onic").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for line in block.strip().splitlines():
        r = subprocess.run(line, shell=True, cwd=workdir, env=env, capture_output=True)
        assert r.returncode == 0, (line, r.stderr.decode())
    assert (workdir / "decoded" / "a.webp").exists() and (workdir / "piped.png").read_bytes()[:4] == b"\x89PNG"
