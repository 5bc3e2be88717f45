"""Reading what this process is given: fake cgroup v1/v2 trees and SLURM variables, and this machine for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.evidence.allocation import job_cpus_per_node, read_allocation, slurm_cpus, slurm_memory

GIB = 1 << 30
REPO = Path(__file__).resolve().parents[3]


def proc_with(tmp_path: Path, cgroup: str | bytes, available_kb: int | None = 24 << 20,
              total_kb: int = 32 << 20) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_bytes(cgroup.encode() if isinstance(cgroup, str) else cgroup)
    avail = f"MemAvailable: {available_kb} kB\n" if available_kb is not None else ""
    (proc / "meminfo").write_text(f"MemTotal: {total_kb} kB\nMemFree: 1000 kB\n{avail}")
    return proc


def v2_tree(tmp_path: Path, rel: str) -> tuple[Path, Path]:
    """A cgroup v2 mount with the folder `rel`, each level with the files of a memory-enabled cgroup."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    folder = root
    for part in rel.strip("/").split("/"):
        folder = folder / part
        folder.mkdir()
        (folder / "cpu.max").write_text("max 100000\n")
        (folder / "memory.max").write_text("max\n")
        (folder / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    return root, folder


def many(n: int) -> set[int]:
    return set(range(n))


def test_cgroup_v2_cpu_max_and_memory_max_of_a_kubernetes_container(tmp_path: Path) -> None:
    root, pod = v2_tree(tmp_path, "kubepods/pod1/ctr")
    (pod / "cpu.max").write_text("250000 100000\n")
    (pod / "memory.max").write_text(f"{int(3.4 * GIB)}\n")
    a = read_allocation({}, root, proc_with(tmp_path, "0::/kubepods/pod1/ctr\n"), affinity=lambda: many(8),
                        host_cpus=8)
    assert (a.cpus, a.cpu_source, a.cpu_count) == (2.5, "cgroup v2 cpu.max 2.5 CPUs", 2)
    assert (a.memory_bytes, a.memory_source) == (int(3.4 * GIB), "memory cgroup limit 3.4 GiB")
    assert a.memory_total == 32 << 30
    assert "the host's 8 CPUs" in a.known and "24.0 GiB available on the machine" in a.known


def test_cgroup_v2_limits_on_a_parent_count_like_slurms_job_level(tmp_path: Path) -> None:
    # SLURM's cgroup/v2 plugin limits job_7 and step_0; the task's own leaf says "max"
    root, task = v2_tree(tmp_path, "system.slice/slurmstepd.scope/job_7/step_0/user/task_0")
    job = task.parents[2]
    (job / "cpu.max").write_text("400000 100000\n")
    (job / "memory.max").write_text(f"{8 * GIB}\n")
    (job / "step_0" / "memory.max").write_text(f"{6 * GIB}\n")
    proc = proc_with(tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n")
    a = read_allocation({}, root, proc, affinity=lambda: many(128), host_cpus=128)
    assert (a.cpus, a.cpu_source) == (4.0, "cgroup v2 cpu.max 4 CPUs")
    assert (a.memory_bytes, a.memory_source) == (6 * GIB, "memory cgroup limit 6.0 GiB")


def test_cgroup_v1_cpu_cpuacct_quota_and_the_memory_controller(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cpu = root / "cpu,cpuacct" / "slurm" / "job_3"
    cpu.mkdir(parents=True)
    for folder, quota in ((root / "cpu,cpuacct", "-1"), (cpu.parent, "-1"), (cpu, "-1")):
        (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    mem = root / "memory" / "slurm" / "job_3"
    mem.mkdir(parents=True)
    for folder in (root / "memory", mem.parent, mem):
        (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
        (folder / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    lines = "11:memory:/slurm/job_3\n4:cpu,cpuacct:/slurm/job_3\n0::/\n"
    a = read_allocation({}, root, proc_with(tmp_path, lines), affinity=lambda: many(2), host_cpus=2)
    assert (a.cpus, a.cpu_source) == (2.0, "the host's 2 CPUs")
    assert a.memory_source == "24.0 GiB available on the machine"

    (cpu / "cpu.cfs_quota_us").write_text("150000\n")
    (mem.parent / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    a = read_allocation({}, root, proc_with(tmp_path / "b", lines), affinity=lambda: many(2), host_cpus=2)
    assert (a.cpus, a.cpu_source, a.cpu_count) == (1.5, "cgroup v1 cpu quota 1.5 CPUs", 1)
    assert (a.memory_bytes, a.memory_source) == (2 * GIB, "memory cgroup limit 2.0 GiB")


def test_cgroup_v1_cpu_mounted_alone_as_on_this_vm(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    a = read_allocation({}, root, proc_with(tmp_path, "2:cpuacct:/\n1:cpu:/\n0::/\n"), affinity=lambda: many(2),
                        host_cpus=2)
    assert (a.cpus, a.cpu_source) == (1.0, "cgroup v1 cpu quota 1 CPUs")


def test_slurm_cpus_and_memory_the_smallest_wins(tmp_path: Path) -> None:
    env = {"SLURM_JOB_CPUS_PER_NODE": "4(x2)", "SLURM_MEM_PER_CPU": "2000"}
    a = read_allocation(env, tmp_path / "none", proc_with(tmp_path, ""), affinity=lambda: many(128), host_cpus=128)
    assert (a.cpus, a.cpu_source) == (4.0, "SLURM_JOB_CPUS_PER_NODE=4(x2)")
    assert (a.memory_bytes, a.memory_source) == (8000 << 20, "SLURM_MEM_PER_CPU=2000 MB x 4 CPUs")
    env = {"SLURM_CPUS_PER_TASK": "6", "SLURM_JOB_CPUS_PER_NODE": "12", "SLURM_MEM_PER_NODE": "64000"}
    a = read_allocation(env, tmp_path / "none", proc_with(tmp_path / "b", "", available_kb=1 << 20),
                        affinity=lambda: many(128), host_cpus=128)
    assert (a.cpus, a.cpu_source) == (6.0, "SLURM_CPUS_PER_TASK=6")
    assert a.memory_source == "1.0 GiB available on the machine"  # the node is fuller than the job's share


def test_a_tie_is_explained_by_slurm_rather_than_the_affinity_it_caused(tmp_path: Path) -> None:
    a = read_allocation({"SLURM_CPUS_PER_TASK": "4", "SLURM_MEM_PER_NODE": "8000"}, tmp_path / "none",
                        proc_with(tmp_path, ""), affinity=lambda: many(4), host_cpus=128)
    assert (a.cpus, a.cpu_source) == (4.0, "SLURM_CPUS_PER_TASK=4")
    assert (a.memory_bytes, a.memory_source) == (8000 << 20, "SLURM_MEM_PER_NODE=8000 MB")
    assert "CPU affinity (4 of 128 CPUs)" in a.known


def test_slurm_formats() -> None:
    assert job_cpus_per_node("4") == [4]
    assert job_cpus_per_node("4(x2)") == [4, 4]
    assert job_cpus_per_node("2,4") == [2, 4]
    assert job_cpus_per_node("8(x2),4") == [8, 8, 4]
    assert job_cpus_per_node("") is None and job_cpus_per_node("4(x)") is None and job_cpus_per_node("a,4") is None
    assert slurm_cpus({"SLURM_JOB_CPUS_PER_NODE": "8(x2),4", "SLURM_NODEID": "2"}) == \
        (4.0, "SLURM_JOB_CPUS_PER_NODE=8(x2),4")
    assert slurm_cpus({"SLURM_JOB_CPUS_PER_NODE": "2,4", "SLURM_NODEID": "9"}) == (2.0, "SLURM_JOB_CPUS_PER_NODE=2,4")
    assert slurm_cpus({"SLURM_CPUS_PER_TASK": "0"}) is None
    assert slurm_memory({"SLURM_MEM_PER_GPU": "16000", "SLURM_GPUS_ON_NODE": "2"}, 8) == \
        (32000 << 20, "SLURM_MEM_PER_GPU=16000 MB x 2 GPUs")
    assert slurm_memory({"SLURM_MEM_PER_NODE": "-5"}, 1) is None


def test_garbled_and_missing_files_are_just_not_known(tmp_path: Path) -> None:
    root, folder = v2_tree(tmp_path, "x")
    (folder / "cpu.max").write_text("lots of cpus\n")
    (folder / "memory.max").write_bytes(b"\xff\xfe")
    proc = proc_with(tmp_path, b"\xff\xfe garbage")
    (proc / "meminfo").write_text("MemTotal: many kB\nMemAvailable:\n")
    env = {"SLURM_CPUS_PER_TASK": "many", "SLURM_JOB_CPUS_PER_NODE": "(x2)", "SLURM_MEM_PER_NODE": "8G"}
    a = read_allocation(env, root, proc, affinity=lambda: {0}, host_cpus=4)
    assert (a.cpus, a.cpu_source) == (1.0, "CPU affinity (1 of 4 CPUs)")
    assert (a.memory_bytes, a.memory_source, a.memory_total) == (None, "not known", None)
    # the cgroup file readable, its values not: the same
    a = read_allocation({}, root, proc_with(tmp_path / "b", "0::/x\n", available_kb=None), affinity=lambda: {0},
                        host_cpus=1)
    assert (a.cpus, a.cpu_source) == (1.0, "the host's 1 CPUs")
    assert (a.memory_bytes, a.memory_source) == (32 << 30, "the machine's 32.0 GiB")  # no MemAvailable: MemTotal


def test_nothing_readable_at_all(tmp_path: Path) -> None:
    def broken() -> set[int]:
        raise OSError("no affinity")

    a = read_allocation({}, tmp_path / "no-cgroup", tmp_path / "no-proc", affinity=broken, host_cpus=3)
    assert (a.host_cpus, a.cpus, a.cpu_source, a.memory_bytes) == (3, 3.0, "the host's 3 CPUs", None)
    assert json.loads(json.dumps(a.document()))["cpu_source"] == "the host's 3 CPUs"


@pytest.mark.process
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 CPUs to give a process one of them")
def test_this_machine_under_a_real_one_cpu_affinity() -> None:
    code = ("import os, json; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from supervisor.evidence.allocation import read_allocation; "
            "print(json.dumps(read_allocation({}).document()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=REPO)
    a = json.loads(out.stdout)
    host = os.cpu_count()
    assert a["host_cpus"] == host and f"CPU affinity (1 of {host} CPUs)" in a["known"]
    # the affinity decides, unless this machine's cgroup gives even less (a tie is explained by the cgroup)
    assert (a["cpus"] == 1.0 and a["cpu_source"] == f"CPU affinity (1 of {host} CPUs)") or \
        (a["cpus"] <= 1.0 and a["cpu_source"].startswith("cgroup"))
    assert a["memory_bytes"] and 0 < a["memory_bytes"] <= a["memory_total"]
