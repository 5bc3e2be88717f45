"""The trainer tree's memory: the memory cgroup it runs in (its OOM-kill count and limit) and its sampled size.

cgroup v2 counts OOM kills in `memory.events` (`oom_kill N`), v1 in `memory.oom_control` (`oom_kill N`, kernel 4.13+);
both are cumulative, so an attempt's kills are the difference between its end and its launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # v1 writes "no limit" as a huge number (9223372036854771712)


@dataclass(frozen=True)
class MemoryCgroup:
    """One memory cgroup's folder and the files that count its OOM kills and hold its limit."""

    path: Path
    events: Path  # memory.events (v2) or memory.oom_control (v1)
    limit: Path  # memory.max (v2) or memory.limit_in_bytes (v1)
    name: str = "/"  # as /proc/PID/cgroup and the kernel log name it: the path within its hierarchy

    def oom_kills(self) -> int | None:
        try:
            text = self.events.read_text()
        except (OSError, UnicodeDecodeError):  # a garbled file is not known, never a crash
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    def usage_bytes(self) -> int | None:
        name = "memory.usage_in_bytes" if self.events.name == "memory.oom_control" else "memory.current"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def limit_bytes(self) -> int | None:
        try:
            text = self.limit.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not text.isdigit():  # v2 "max"
            return None
        value = int(text)
        return None if value >= NO_LIMIT else value


def memory_cgroup(pid: int, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup of a process (v1's memory controller, else v2's unified tree), None where there is none."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return cgroup_from_lines(lines, root)


def cgroup_from_lines(lines: list[str], root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """From /proc/PID/cgroup's lines ("4:memory:/a/b" in v1, "0::/a/b" in v2)."""
    v2: str | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if "memory" in controllers.split(","):
            folder = root / "memory" / rel.lstrip("/")
            if (folder / "memory.oom_control").exists():
                return MemoryCgroup(folder, folder / "memory.oom_control", folder / "memory.limit_in_bytes", rel)
        elif controllers == "":
            v2 = rel
    if v2 is not None:
        for base in (root, root / "unified"):
            folder = base / v2.lstrip("/")
            if (folder / "memory.events").exists():
                return MemoryCgroup(folder, folder / "memory.events", folder / "memory.max", v2)
    return None


def tree_memory(pid: int) -> tuple[int, set[int]]:
    """The resident memory of a process and its descendants (bytes; pages shared after fork counted in each) and
    their pids; (0, set()) once it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, set()
    total, pids = 0, set()
    for p in procs:
        try:
            total += p.memory_info().rss
            pids.add(p.pid)
        except psutil.Error:
            continue
    return total, pids
