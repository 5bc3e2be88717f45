"""Reading what this process is given: fake cgroup v1/v2 trees and SLURM variables, and this machine for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.evidence.allocation import read_allocation


def proc_with(tmp_path: Path, cgroup: str, available_kb: int = 24 << 20) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "meminfo").write_text(f"MemTotal: {available_kb + 1000} kB\nMemAvailable: {available_kb} kB\n")
    return proc


def test_cgroup_v2_cpu_max_and_memory_max(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    job = root / "kubepods" / "pod1"
    job.mkdir(parents=True)
    (job / "cpu.max").write_text("250000 100000\n")
    (job / "memory.max").write_text(str(6 << 30))
    (job / "memory.events").write_text("oom_kill 0\n")
    a = read_allocation({}, root, proc_with(tmp_path, "0::/kubepods/pod1\n"), affinity=lambda: {0, 1, 2, 3, 4, 5, 6, 7},
                        host_cpus=8)
    assert (a.cpus, a.cpu_source) == (2.5, "cgroup v2 cpu.max 2.5 CPUs")
    assert (a.memory_bytes, a.memory_source) == (6 << 30, "memory cgroup limit 6.0 GiB")


def test_cgroup_v1_quota_unlimited_is_the_host(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cpu = root / "cpu,cpuacct" / "job"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    a = read_allocation({}, root, proc_with(tmp_path, "3:cpu,cpuacct:/job\n"), affinity=lambda: {0, 1}, host_cpus=2)
    assert (a.cpus, a.cpu_source) == (2.0, "the host's 2 CPUs")
    (cpu / "cpu.cfs_quota_us").write_text("100000\n")
    a = read_allocation({}, root, proc_with(tmp_path / "b", "3:cpu,cpuacct:/job\n"), affinity=lambda: {0, 1},
                        host_cpus=2)
    assert (a.cpus, a.cpu_source) == (1.0, "cgroup v1 cpu quota 1 CPUs")


def test_slurm_cpus_and_memory_the_smallest_wins(tmp_path: Path) -> None:
    env = {"SLURM_JOB_CPUS_PER_NODE": "4(x2)", "SLURM_MEM_PER_CPU": "2000"}
    a = read_allocation(env, tmp_path / "none", proc_with(tmp_path, ""), affinity=lambda: set(range(128)),
                        host_cpus=128)
    assert (a.cpus, a.cpu_source) == (4.0, "SLURM_JOB_CPUS_PER_NODE=4(x2)")
    assert a.memory_bytes == 8000 << 20 and a.memory_source == "SLURM_MEM_PER_CPU=2000 MB x 4 CPUs"
    a = read_allocation({"SLURM_CPUS_PER_TASK": "6", "SLURM_MEM_PER_NODE": "64000"}, tmp_path / "none",
                        proc_with(tmp_path / "b", "", available_kb=1 << 20), affinity=lambda: set(range(128)),
                        host_cpus=128)
    assert a.cpus == 6.0 and a.memory_source == "1.0 GiB available on the machine"


def test_garbled_and_missing_files_are_just_not_known(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "x").mkdir(parents=True)
    (root / "x" / "cpu.max").write_text("lots of cpus\n")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_bytes(b"\xff\xfe garbage")
    a = read_allocation({"SLURM_CPUS_PER_TASK": "many"}, root, proc, affinity=lambda: {0}, host_cpus=4)
    assert (a.cpus, a.memory_bytes, a.memory_source) == (1.0, None, "not known")


@pytest.mark.process
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to give a process one of them")
def test_this_machine_under_a_real_one_cpu_affinity() -> None:
    code = ("import os, json; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from supervisor.evidence.allocation import read_allocation; "
            "print(json.dumps(read_allocation().document()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    a = json.loads(out.stdout)
    assert a["cpus"] == 1.0 and a["cpu_source"].startswith("CPU affinity (1 of")
    assert a["memory_bytes"] and a["memory_bytes"] > 0
