"""One attempt's evidence, gathered around it: counters at its launch, its tree's size while it runs, what changed by
its end. Every reading is cheap (a few small files) and none may fail the supervisor: what cannot be read stays None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.core.causes import Evidence, KernelKill
from supervisor.evidence import kmsg
from supervisor.evidence.memory import MemoryCgroup, memory_cgroup, tree_memory
from supervisor.evidence.shm import shm_space


@dataclass
class Probes:
    """The readings, as functions: the real machine by default, scripted ones in unit tests."""

    cgroup: Callable[[int], MemoryCgroup | None] = memory_cgroup
    tree: Callable[[int], tuple[int, set[int]]] = tree_memory
    shm: Callable[[], tuple[int, int] | None] = shm_space
    kills: Callable[[set[int], int, int, str | None], tuple[bool, tuple[KernelKill, ...]]] = kmsg.oom_kills
    clock_usec: Callable[[], int] = kmsg.now_usec


@dataclass
class AttemptEvidence:
    """Started at a launch, sampled while the attempt runs, finished at its end."""

    pid: int
    probes: Probes = field(default_factory=Probes)
    cgroup: MemoryCgroup | None = None
    kills_before: int | None = None
    since_usec: int = 0
    shm_at_launch: tuple[int, int] | None = None
    peak_rss: int = 0
    most_processes: int = 0
    pids: set[int] = field(default_factory=set)  # every pid seen in the tree: a killed worker is gone by the end

    @classmethod
    def start(cls, pid: int, probes: Probes | None = None) -> AttemptEvidence:
        p = probes or Probes()
        ev = cls(pid, p, since_usec=p.clock_usec() - 1_000_000, shm_at_launch=p.shm())
        ev.cgroup = p.cgroup(pid)
        ev.kills_before = ev.cgroup.oom_kills() if ev.cgroup else None
        ev.sample()
        return ev

    def sample(self) -> None:
        rss, pids = self.probes.tree(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.most_processes = max(self.most_processes, len(pids))
        self.pids |= pids

    def finish(self, phase: str | None, epoch: int | None) -> Evidence:
        cg = self.cgroup
        after = cg.oom_kills() if cg else None
        kills = after - self.kills_before if after is not None and self.kills_before is not None else None
        readable, killed = self.probes.kills(self.pids | {self.pid}, self.pid, self.since_usec, cg.name if cg else None)
        shm_now = self.probes.shm()
        return Evidence(
            oom_kills=kills, memory_cgroup=str(cg.path) if cg else None,
            memory_limit_bytes=cg.limit_bytes() if cg else None,
            kernel_log=readable, killed=killed, peak_rss_bytes=self.peak_rss or None,
            processes=self.most_processes or None,
            shm_size_bytes=(shm_now or self.shm_at_launch or (None, None))[0],
            shm_free_at_launch=self.shm_at_launch[1] if self.shm_at_launch else None,
            shm_free_at_exit=shm_now[1] if shm_now else None, phase=phase, epoch=epoch)
