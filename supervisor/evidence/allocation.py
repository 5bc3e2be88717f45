"""What this process is really given: CPUs (affinity, the cgroup's CPU quota, SLURM's allocation) and memory (the
memory cgroup's limit, SLURM's, what the machine has available).

nnU-Net sizes its processes from `os.cpu_count()`, the host's CPUs: a SLURM task with 4 CPUs on a 128-core node gets
12 augmentation workers and 8 export processes (nnU-Net #2863, #696, #1768, #2708). Kubernetes' limits arrive as the
container's cgroup. Every source is optional: one that cannot be read is simply not known.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.evidence.memory import CGROUP_ROOT, cgroup_from_lines


@dataclass(frozen=True)
class Allocation:
    """The CPUs and memory this process may use, and which source decided each (in words)."""

    host_cpus: int
    cpus: float  # the smallest of what is known (the host's CPUs where nothing limits it)
    cpu_source: str
    memory_bytes: int | None  # None: not known
    memory_source: str

    def document(self) -> dict[str, object]:
        return {"host_cpus": self.host_cpus, "cpus": self.cpus, "cpu_source": self.cpu_source,
                "memory_bytes": self.memory_bytes, "memory_source": self.memory_source}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()[:4096]  # cgroup and /proc files are small; a foreign file is not read whole
    except (OSError, UnicodeDecodeError):
        return None


def cpu_quota(cgroup_lines: list[str], root: Path) -> tuple[float, str] | None:
    """The CPU quota of this process's cgroup, in CPUs: v2 cpu.max ("200000 100000"; "max" = none), v1
    cpu.cfs_quota_us / cpu.cfs_period_us (-1 = none)."""
    for line in cgroup_lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        names = controllers.split(",")
        if "cpu" in names:  # v1, usually mounted as cpu,cpuacct
            for mount in (",".join(names), "cpu", "cpu,cpuacct"):
                folder = root / mount / rel.lstrip("/")
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota is not None and period is not None:
                    try:
                        q, p = int(quota), int(period)
                    except ValueError:
                        return None
                    return (q / p, f"cgroup v1 cpu quota {q / p:g} CPUs") if q > 0 and p > 0 else None
        elif controllers == "":
            for base in (root, root / "unified"):
                text = _read(base / rel.lstrip("/") / "cpu.max")
                if text is None:
                    continue
                bits = text.split()
                if len(bits) == 2 and bits[0].isdigit() and bits[1].isdigit() and int(bits[1]) > 0:
                    value = int(bits[0]) / int(bits[1])
                    return value, f"cgroup v2 cpu.max {value:g} CPUs"
                return None
    return None


_SLURM_CPUS = re.compile(r"^(\d+)")


def slurm_cpus(environ: Mapping[str, str]) -> tuple[float, str] | None:
    """SLURM_CPUS_PER_TASK, else this node's share of SLURM_JOB_CPUS_PER_NODE ("4", "4(x2)", "2,4": the first)."""
    per_task = environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return float(per_task), f"SLURM_CPUS_PER_TASK={per_task}"
    m = _SLURM_CPUS.match(environ.get("SLURM_JOB_CPUS_PER_NODE", ""))
    if m and int(m.group(1)) > 0:
        return float(m.group(1)), f"SLURM_JOB_CPUS_PER_NODE={environ['SLURM_JOB_CPUS_PER_NODE']}"
    return None


def slurm_memory(environ: Mapping[str, str], cpus: float) -> tuple[int, str] | None:
    """SLURM_MEM_PER_NODE (MB), or SLURM_MEM_PER_CPU (MB) times the CPUs."""
    node = environ.get("SLURM_MEM_PER_NODE", "")
    if node.isdigit() and int(node) > 0:
        return int(node) << 20, f"SLURM_MEM_PER_NODE={node} MB"
    per_cpu = environ.get("SLURM_MEM_PER_CPU", "")
    if per_cpu.isdigit() and int(per_cpu) > 0:
        return int(int(per_cpu) * max(1.0, cpus)) << 20, f"SLURM_MEM_PER_CPU={per_cpu} MB x {cpus:g} CPUs"
    return None


def meminfo_available(proc: Path) -> int | None:
    text = _read(proc / "meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            bits = line.split()
            if len(bits) >= 2 and bits[1].isdigit():
                return int(bits[1]) * 1024
    return None


def read_allocation(environ: Mapping[str, str] | None = None, root: Path = CGROUP_ROOT, proc: Path = Path("/proc"),
                    affinity: Callable[[], set[int]] | None = None, host_cpus: int | None = None) -> Allocation:
    """The allocation of this process, from each source that can be read."""
    env = os.environ if environ is None else environ
    host = host_cpus or os.cpu_count() or 1
    cpus: list[tuple[float, str]] = [(float(host), f"the host's {host} CPUs")]
    try:
        mine = len((affinity or (lambda: os.sched_getaffinity(0)))())
        if 0 < mine < host:
            cpus.append((float(mine), f"CPU affinity ({mine} of {host} CPUs)"))
    except (AttributeError, OSError):
        pass
    lines = (_read(proc / "self" / "cgroup") or "").splitlines()
    for found in (cpu_quota(lines, root), slurm_cpus(env)):
        if found is not None:
            cpus.append(found)
    n, cpu_source = min(cpus, key=lambda c: c[0])
    memory: list[tuple[int, str]] = []
    available = meminfo_available(proc)
    if available is not None:
        memory.append((available, f"{available / 2**30:.1f} GiB available on the machine"))
    cg = cgroup_from_lines(lines, root)
    limit = cg.limit_bytes() if cg is not None else None
    if limit is not None:
        memory.append((limit, f"memory cgroup limit {limit / 2**30:.1f} GiB"))
    slurm = slurm_memory(env, n)
    if slurm is not None:
        memory.append(slurm)
    mem, mem_source = min(memory, key=lambda m: m[0]) if memory else (None, "not known")
    return Allocation(host, n, cpu_source, mem, mem_source)
