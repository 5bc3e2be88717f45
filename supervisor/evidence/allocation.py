"""What this process is really given: CPUs (affinity, the cgroup's CPU quota, SLURM's allocation) and memory (the
memory cgroup's limit, SLURM's, what the machine has available).

nnU-Net sizes its processes from `os.cpu_count()`, the host's CPUs: a SLURM task with 4 CPUs on a 128-core node gets
12 augmentation workers and 8 export processes. Kubernetes' limits arrive as the container's cgroup. Every source is
optional: one that cannot be read (missing, garbled, not a number) is simply not known, never an error.

A cgroup's limits are those of its whole path: SLURM (v1 and v2) puts its memory and CPU limits on the job's and the
step's cgroup, while the task runs in a leaf below them with no limit of its own; a systemd slice can limit a
service's parents. So every folder from the leaf up to the hierarchy's root is read and the smallest limit counts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.evidence.memory import CGROUP_ROOT, NO_LIMIT, cgroup_from_lines

PROC_ROOT = Path("/proc")
_READ_LIMIT = 64 << 10  # cgroup and /proc files are small; a foreign file in their place is not read whole


@dataclass(frozen=True)
class Allocation:
    """The CPUs and memory this process may use, and which source decided each (in words)."""

    host_cpus: int  # os.cpu_count(): what nnU-Net sizes itself from
    cpus: float  # the smallest of what is known (the host's CPUs where nothing limits it); a cgroup quota may be 2.5
    cpu_source: str  # e.g. "CPU affinity (1 of 2 CPUs)", "SLURM_CPUS_PER_TASK=4", "the host's 16 CPUs"
    memory_bytes: int | None  # the smallest of what is known; None: nothing could be read
    memory_source: str  # e.g. "memory cgroup limit 3.4 GiB", "SLURM_MEM_PER_NODE=8000 MB", "not known"
    memory_total: int | None = None  # MemTotal, for the words
    known: tuple[str, ...] = ()  # every source that could be read, in words (the deciding ones among them)

    @property
    def cpu_count(self) -> int:
        """Whole CPUs to run processes on: a fractional quota rounds down, never below one."""
        return max(1, int(self.cpus + 1e-9))

    def document(self) -> dict[str, object]:
        return {"host_cpus": self.host_cpus, "cpus": self.cpus, "cpu_source": self.cpu_source,
                "memory_bytes": self.memory_bytes, "memory_source": self.memory_source,
                "memory_total": self.memory_total, "known": list(self.known)}


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes "²", which int() refuses


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(_READ_LIMIT).decode("utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _chain(base: Path, rel: str) -> list[Path]:
    """The cgroup folder of `rel` under a hierarchy's mount `base`, then each parent up to `base` itself."""
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _parse_cgroup_lines(lines: list[str]) -> list[tuple[list[str], str]]:
    """/proc/self/cgroup as (controllers, path) pairs; v2's line has no controllers ("0::/a/b")."""
    out = []
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            out.append(([c for c in parts[1].split(",") if c], parts[2]))
    return out


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int((quota or "").strip()), int((period or "").strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def _v2_quota(folder: Path) -> float | None:
    bits = (_read(folder / "cpu.max") or "").split()  # "max 100000": none; "250000 100000": 2.5 CPUs
    if len(bits) == 2 and _digits(bits[0]) and _digits(bits[1]) and int(bits[0]) > 0 and int(bits[1]) > 0:
        return int(bits[0]) / int(bits[1])
    return None


def cpu_quota(cgroup_lines: list[str], root: Path = CGROUP_ROOT) -> tuple[float, str] | None:
    """The CPU quota of this process's cgroup path, in CPUs: v1's cpu.cfs_quota_us / cpu.cfs_period_us (the cpu
    controller, often mounted as `cpu,cpuacct`), else v2's cpu.max; the smallest along the path."""
    found: list[tuple[float, str]] = []
    entries = _parse_cgroup_lines(cgroup_lines)
    for controllers, rel in entries:
        if "cpu" not in controllers:
            continue
        # the mount is named after its controllers (cpu,cpuacct), with cpu and cpuacct as links to it, or cpu alone
        for mount in dict.fromkeys((",".join(controllers), "cpu", "cpu,cpuacct", "cpuacct,cpu")):
            if (root / mount).is_dir():
                found += [(q, f"cgroup v1 cpu quota {q:g} CPUs") for q in map(_v1_quota, _chain(root / mount, rel))
                          if q is not None]
                break
    if not found:
        for controllers, rel in entries:
            if controllers:
                continue
            for base in (root, root / "unified"):  # v2 alone, or the hybrid layout's unified tree
                if (base / "cgroup.controllers").exists():
                    found += [(q, f"cgroup v2 cpu.max {q:g} CPUs") for q in map(_v2_quota, _chain(base, rel))
                              if q is not None]
                    break
    return min(found, key=lambda f: f[0]) if found else None


def memory_limit(cgroup_lines: list[str], root: Path = CGROUP_ROOT) -> int | None:
    """The memory limit of this process's cgroup path (memory.max or memory.limit_in_bytes, the smallest from the
    leaf up), found as evidence/memory.py finds the cgroup whose OOM kills it counts."""
    leaf = cgroup_from_lines(cgroup_lines, root)
    if leaf is None:
        return None
    depth = len([p for p in leaf.name.split("/") if p and p not in (".", "..")])
    base = leaf.path.parents[depth - 1] if depth else leaf.path
    # read here rather than by MemoryCgroup.limit_bytes: a garbled (non-UTF-8) file must not raise
    texts = [(_read(folder / leaf.limit.name) or "").strip() for folder in _chain(base, leaf.name)]
    known = [int(t) for t in texts if _digits(t) and 0 < int(t) < NO_LIMIT]  # v2 "max", v1's huge "no limit"
    return min(known) if known else None


def _positive(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if _digits(text) and int(text) > 0 else None


_NODE_CPUS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$", re.ASCII)


def job_cpus_per_node(text: str) -> list[int] | None:
    """SLURM_JOB_CPUS_PER_NODE ("4", "4(x2)", "2,4", "8(x2),4") as one count per node; None when garbled."""
    counts: list[int] = []
    for item in text.strip().split(","):
        m = _NODE_CPUS.match(item.strip())
        if m is None:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts or None


def slurm_cpus(environ: Mapping[str, str]) -> tuple[float, str] | None:
    """SLURM's CPUs for this task: SLURM_CPUS_PER_TASK, or this node's entry of SLURM_JOB_CPUS_PER_NODE (by
    SLURM_NODEID, the first node without it); the smaller where both are set."""
    found: list[tuple[float, str]] = []
    per_task = _positive(environ.get("SLURM_CPUS_PER_TASK"))
    if per_task is not None:
        found.append((float(per_task), f"SLURM_CPUS_PER_TASK={per_task}"))
    text = environ.get("SLURM_JOB_CPUS_PER_NODE", "")
    nodes = job_cpus_per_node(text)
    if nodes:
        node = _positive(environ.get("SLURM_NODEID")) or 0
        here = nodes[node] if node < len(nodes) else nodes[0]
        if here > 0:
            found.append((float(here), f"SLURM_JOB_CPUS_PER_NODE={text.strip()}"))
    return min(found, key=lambda f: f[0]) if found else None  # a tie: SLURM_CPUS_PER_TASK, the more specific


def slurm_memory(environ: Mapping[str, str], cpus: float) -> tuple[int, str] | None:
    """SLURM_MEM_PER_NODE (MB), or SLURM_MEM_PER_CPU (MB) times the CPUs, or SLURM_MEM_PER_GPU (MB) times the GPUs
    on this node (SLURM sets one of them, from --mem, --mem-per-cpu or --mem-per-gpu)."""
    node = _positive(environ.get("SLURM_MEM_PER_NODE"))
    if node is not None:
        return node << 20, f"SLURM_MEM_PER_NODE={node} MB"
    per_cpu = _positive(environ.get("SLURM_MEM_PER_CPU"))
    if per_cpu is not None:
        n = max(1, int(cpus))
        return (per_cpu * n) << 20, f"SLURM_MEM_PER_CPU={per_cpu} MB x {n} CPUs"
    per_gpu, gpus = _positive(environ.get("SLURM_MEM_PER_GPU")), _positive(environ.get("SLURM_GPUS_ON_NODE"))
    if per_gpu is not None and gpus is not None:
        return (per_gpu * gpus) << 20, f"SLURM_MEM_PER_GPU={per_gpu} MB x {gpus} GPUs"
    return None


def meminfo(proc: Path = PROC_ROOT) -> dict[str, int]:
    """MemTotal and MemAvailable of /proc/meminfo, in bytes (what could be read of them)."""
    out = {}
    for line in (_read(proc / "meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        bits = rest.split()
        if key in ("MemTotal", "MemAvailable") and bits and _digits(bits[0]):
            out[key] = int(bits[0]) * 1024
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def read_allocation(environ: Mapping[str, str] | None = None, root: Path = CGROUP_ROOT, proc: Path = PROC_ROOT,
                    affinity: Callable[[], Collection[int]] | None = None,
                    host_cpus: int | None = None) -> Allocation:
    """The allocation of this process, from each source that can be read. `environ` (default os.environ) holds
    SLURM's variables; `root` is the cgroup mount, `proc` the /proc folder (its self/cgroup and meminfo), `affinity`
    returns this process's CPUs (default os.sched_getaffinity(0)), `host_cpus` the host's (default os.cpu_count())."""
    env = os.environ if environ is None else environ
    host = host_cpus or os.cpu_count() or 1
    # candidates in the order a tie is explained by: the most specific first, the host last
    cpus: list[tuple[float, str]] = []
    slurm = slurm_cpus(env)
    if slurm is not None:
        cpus.append(slurm)
    lines = (_read(proc / "self" / "cgroup") or "").splitlines()
    quota = cpu_quota(lines, root)
    if quota is not None:
        cpus.append(quota)
    try:
        mine = len((affinity or (lambda: os.sched_getaffinity(0)))())
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        mine = 0
    if 0 < mine < host:
        cpus.append((float(mine), f"CPU affinity ({mine} of {host} CPUs)"))
    cpus.append((float(host), f"the host's {host} CPUs"))
    n, cpu_source = min(cpus, key=lambda c: c[0])

    memory: list[tuple[int, str]] = []
    slurm_mem = slurm_memory(env, slurm[0] if slurm is not None else n)
    if slurm_mem is not None:
        memory.append(slurm_mem)
    limit = memory_limit(lines, root)
    if limit is not None:
        memory.append((limit, f"memory cgroup limit {_gib(limit)}"))
    info = meminfo(proc)
    if "MemAvailable" in info:
        memory.append((info["MemAvailable"], f"{_gib(info['MemAvailable'])} available on the machine"))
    elif "MemTotal" in info:  # kernels before 3.14 have no MemAvailable
        memory.append((info["MemTotal"], f"the machine's {_gib(info['MemTotal'])}"))
    mem, mem_source = min(memory, key=lambda m: m[0]) if memory else (None, "not known")
    known = tuple(words for _, words in cpus) + tuple(words for _, words in memory)
    return Allocation(host, n, cpu_source, mem, mem_source, info.get("MemTotal"), known)
