"""How many threads the runtime takes: the cores it is given, never more."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from codec.bitstream import OnicError
from codec.session import DEFAULT_BUNDLE, Bundle
from codec.threads import MAX_THREADS, _cgroup_quota, _physical_cores, cores
from tests.conftest import ROOT


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 2),  # a core and a half: both cores, part of the time
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, 0),  # no limit
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 4),
    ({"cpu.max": "garbage"}, 0),
    ({}, 0),
])
def test_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_quota(str(tmp_path), str(tmp_path / "no-such-file")) == expected


def test_cgroup_quota_of_a_systemd_slice(tmp_path):
    """Outside a container's cgroup namespace the quota is in the process's own cgroup folder, or in
    one above it: the smallest binds."""
    service = tmp_path / "system.slice" / "onic.service"
    service.mkdir(parents=True)
    (service / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "cgroup").write_text("0::/system.slice/onic.service\n")
    assert _cgroup_quota(str(tmp_path), str(tmp_path / "cgroup")) == 3
    (tmp_path / "system.slice" / "cpu.max").write_text("200000 100000\n")
    assert _cgroup_quota(str(tmp_path), str(tmp_path / "cgroup")) == 2
    (service / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(str(tmp_path), str(tmp_path / "cgroup")) == 2


def test_hyperthreads_of_one_core_count_once(tmp_path):
    """CPUs 0 and 2 are the two hyperthreads of core 0, 1 and 3 of core 1; 4 is core 0 of a second package."""
    for cpu, (package, core) in enumerate([(0, 0), (0, 1), (0, 0), (0, 1), (1, 0)]):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "core_id").write_text(f"{core}\n")
        (topology / "physical_package_id").write_text(f"{package}\n")
    assert _physical_cores({0, 1, 2, 3, 4}, str(tmp_path)) == 3
    assert _physical_cores({0, 2}, str(tmp_path)) == 1  # taskset -c 0,2: one core
    assert _physical_cores({0, 1, 7}, str(tmp_path)) == 3  # no topology for CPU 7: count the CPUs


def test_sessions_take_the_cores_given():
    """onnxruntime gets an explicit count: its own default pins a thread to every physical core and
    so escaped taskset."""
    b = Bundle(DEFAULT_BUNDLE)
    assert b.threads == cores() and b.tile_workers == min(4, cores())
    assert b.session("decoder").get_session_options().intra_op_num_threads == cores()
    assert Bundle(DEFAULT_BUNDLE, threads=3).session("decoder").get_session_options().intra_op_num_threads == 3


ONE_CPU = """
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from codec.session import default_bundle
from codec.threads import cores
b = default_bundle()
print(cores(), b.threads, b.tile_workers, b.session("decoder").get_session_options().intra_op_num_threads)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_process_pinned_to_one_cpu_runs_one_thread():
    r = subprocess.run([sys.executable, "-c", ONE_CPU], capture_output=True, cwd=ROOT, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1", "1", "1"]


@pytest.mark.parametrize("threads", [-1, MAX_THREADS + 1, 1.5, "2", True])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(OnicError, match="threads must be"):
        Bundle(DEFAULT_BUNDLE, threads=threads)
