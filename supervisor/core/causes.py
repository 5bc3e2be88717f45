"""Why an attempt failed, from what the machine knew: the classification of its exit (its status and log) joined with
the evidence the daemon gathered (the memory cgroup's OOM count, the kernel's "Killed process" lines, /dev/shm, the
tree's peak memory, where in the training it was).

A cause is what a remedy can act on; a classification without one (a plain Python exception, a NCCL error) is
relaunched as it is. Pure: the evidence arrives as data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Union

HOST_OOM = "host_oom"
SHM_EXHAUSTED = "shm_exhausted"
COMPILE_ERROR = "compile_error"
CUDA_OOM = "cuda_oom"
WORKERS_DIED = "workers_died"
WEIGHTS_ONLY = "weights_only_load"

SIGBUS = 7  # a write into a full /dev/shm mapping ends the writer with it

# Below this much free space at the failure, /dev/shm counts as full (a torch batch is megabytes).
SHM_FULL_BYTES = 1 << 20


@dataclass(frozen=True)
class KernelKill:
    """One "Killed process PID (NAME)" line of the kernel log, about a process of the trainer's tree."""

    pid: int
    name: str
    main: bool  # the trainer's main process (else an augmentation worker or another descendant)
    cgroup: bool  # "Memory cgroup out of memory": the limit of a cgroup, not the whole machine


@dataclass(frozen=True)
class Evidence:
    """What the daemon saw of one attempt; None where it could not look (a file not readable here)."""

    oom_kills: Union[int, None] = None  # OOM kills in the tree's memory cgroup during the attempt
    memory_cgroup: Union[str, None] = None
    memory_limit_bytes: Union[int, None] = None  # the cgroup's limit (None: none, or not readable)
    kernel_log: bool = False  # /dev/kmsg could be read
    killed: tuple[KernelKill, ...] = ()
    peak_rss_bytes: Union[int, None] = None  # sum over the tree, sampled (shared pages counted in each process)
    processes: Union[int, None] = None  # most processes seen in the tree at once, the main one included
    shm_size_bytes: Union[int, None] = None
    shm_free_at_launch: Union[int, None] = None
    shm_free_at_exit: Union[int, None] = None
    phase: Union[str, None] = None  # training, validation or export (CUDA OOM: where it happened)
    epoch: Union[int, None] = None
    resumed_verified: Union[str, None] = None  # the checkpoint this attempt resumed from, verified by us first

    def fields(self) -> dict[str, Any]:
        """For the `exit` event: what was seen, leaving out what could not be looked at."""
        out = {k: v for k, v in asdict(self).items() if v not in (None, (), [])}
        if self.killed:
            out["killed"] = [asdict(k) for k in self.killed]
        return out


@dataclass(frozen=True)
class Cause:
    """The cause of one failed attempt and the evidence that names it."""

    name: str
    summary: str  # the evidence, in words
    evidence: dict[str, Any] = field(default_factory=dict)


def _mb(n: Union[int, None]) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def _oom_story(ev: Evidence) -> str:
    parts = []
    if ev.killed:
        who = ", ".join(f"{'the main process' if k.main else 'a worker'} {k.name} (pid {k.pid})" for k in ev.killed)
        scope = "its memory cgroup's limit" if any(k.cgroup for k in ev.killed) else "the machine's memory"
        parts.append(f"the kernel's OOM killer ended {who} ({scope})")
    if ev.oom_kills:
        limit = f", limit {_mb(ev.memory_limit_bytes)}" if ev.memory_limit_bytes else ""
        parts.append(f"{ev.oom_kills} OOM kill(s) in memory cgroup {ev.memory_cgroup}{limit}")
    if ev.peak_rss_bytes:
        parts.append(f"the tree's peak memory {_mb(ev.peak_rss_bytes)} over {ev.processes or '?'} processes")
    return "; ".join(parts)


def _shm_story(ev: Evidence) -> str:
    if ev.shm_size_bytes is None:
        return ""
    free = f", {_mb(ev.shm_free_at_exit)} free at the failure" if ev.shm_free_at_exit is not None else ""
    return f"/dev/shm is {_mb(ev.shm_size_bytes)}{free}"


def find_cause(kind: str, returncode: int, ev: Evidence) -> Cause | None:
    """The cause a remedy can act on, or None. `kind` is the exit's classification (core.classify): the log's own
    words come first, the machine's evidence names an OOM kill the log cannot show (a SIGKILLed process prints
    nothing)."""
    seen = ev.fields()
    if kind == "weights_only_refused" and ev.resumed_verified:
        # only where our own safe load of that very file passed: then the file is intact and the refusal is the
        # trainer's torch.load call, which the environment variable answers
        return Cause(WEIGHTS_ONLY, f"torch.load(weights_only=True) in the trainer refused {ev.resumed_verified}, "
                     "which our verification had loaded safely (weights_only with nnU-Net's known numpy globals) and "
                     "found intact", seen)
    if kind == COMPILE_ERROR:
        return Cause(COMPILE_ERROR, "torch.compile failed (inductor/dynamo/triton)", seen)
    if kind == CUDA_OOM:
        where = f" in {ev.phase}" if ev.phase else ""
        at = f" at epoch {ev.epoch}" if ev.epoch is not None else ""
        return Cause(CUDA_OOM, f"CUDA out of memory{where}{at}", seen)
    if kind == SHM_EXHAUSTED or (kind == "killed_by_signal" and returncode == -SIGBUS):
        story = _shm_story(ev)
        return Cause(SHM_EXHAUSTED, "shared memory (/dev/shm) ran out" + (f": {story}" if story else ""), seen)
    oom = bool(ev.killed) or bool(ev.oom_kills)
    if oom and kind not in ("finished", "stopped", "disk_full", "incompatible_checkpoint"):
        return Cause(HOST_OOM, "out of host memory: " + _oom_story(ev), seen)
    if kind == WORKERS_DIED:
        if (ev.shm_free_at_exit is not None and ev.shm_free_at_exit < SHM_FULL_BYTES
                and ev.shm_size_bytes is not None):
            return Cause(SHM_EXHAUSTED, "augmentation workers died with /dev/shm full: " + _shm_story(ev), seen)
        looked = "no OOM kill seen" if ev.kernel_log or ev.oom_kills is not None else "the kernel log was not readable"
        who = "preprocessing workers" if ev.phase in ("fingerprint", "planning", "preprocessing") else \
            "augmentation workers"
        return Cause(WORKERS_DIED, f"nnU-Net's {who} died ({looked})", seen)
    return None
