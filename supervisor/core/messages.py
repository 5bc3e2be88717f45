"""The vocabulary of the lifecycle: events (facts the runner gathers) and actions (what the runner carries out).

Plain frozen dataclasses: the Decider turns an event into actions, the runner turns actions into system calls and
system calls back into events. Nothing here does anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from supervisor.core.causes import Evidence

# ---- actions (carried out by the runner) ----


@dataclass(frozen=True)
class Launch:
    """Prepare the next attempt (verify checkpoints, make the folder say where to resume, wait for the GPU's memory),
    off the main thread; answered by Prepared or LaunchFailed."""

    attempt: int
    resume: bool  # checkpoints may exist: verify them and resume from the newest valid one
    env: tuple[tuple[str, str], ...] = ()  # the remedies in effect (a smaller batch is not a changed setting)


@dataclass(frozen=True)
class Spawn:
    """Start the prepared attempt's trainer (fast); answered by Launched or LaunchFailed."""

    attempt: int
    resume: bool  # --c
    pretrained: Union[str, None] = None  # -pretrained_weights (a warm start)
    env: tuple[tuple[str, str], ...] = ()  # the remedies in effect: variables set for this attempt
    validate: bool = False  # --val: training finished (checkpoint_final.pth), only the final validation is left


@dataclass(frozen=True)
class Prepare:
    """Start verifying checkpoints for the next launch now, while the backoff runs."""


@dataclass(frozen=True)
class Terminate:
    """SIGTERM the trainer's process group."""

    grace_s: float


@dataclass(frozen=True)
class DumpStacks:
    """Record where the hung tree is stuck (py-spy) before it is stopped; the `stall` event is already out.

    Off the main thread; the runner holds back signals to the tree until the dump is taken (StacksDumped)."""


@dataclass(frozen=True)
class RequestSave:
    """Cooperative mode: ask the trainer (SIGUSR1) to save (after its step in flight, or at its epoch end) and exit
    75."""


@dataclass(frozen=True)
class CheckDisk:
    """Measure the free space in the fold folder; answered by a DiskChecked event."""


@dataclass(frozen=True)
class Kill:
    """SIGKILL the trainer's whole tree."""


@dataclass(frozen=True)
class Record:
    """Append one event to events.jsonl (the runner's one writer)."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Say:
    """One human-readable log line."""

    message: str


@dataclass(frozen=True)
class Exit:
    code: int


Action = Union[Launch, Spawn, Prepare, Terminate, RequestSave, DumpStacks, CheckDisk, Kill, Record, Say, Exit]


# ---- events (facts, gathered by the runner) ----

@dataclass(frozen=True)
class Begin:
    finished: bool  # checkpoint_final.pth + validation/summary.json already there
    resume: bool  # a checkpoint exists, so the first launch uses --c
    best_epoch: int = 0


@dataclass(frozen=True)
class Prepared:
    """The attempt's preparation is done: its trainer may start."""

    resume: bool
    pretrained: Union[str, None] = None
    validate: bool = False  # checkpoint_final.pth is there (and verified): --val, never --c


@dataclass(frozen=True)
class Launched:
    pid: int
    argv: tuple[str, ...]
    resume: bool
    validate: bool = False
    sized: tuple[tuple[str, str], ...] = ()  # the worker counts fitted to this allocation (variables set)


@dataclass(frozen=True)
class LaunchFailed:
    """The launch did not happen: the trainer could not start, or no checkpoint may be resumed."""

    reason: str
    kind: str = "launch_failed"
    event: Union[Record, None] = None  # e.g. incompatible_checkpoint with its three lists


@dataclass(frozen=True)
class Abort:
    """The running attempt must be stopped and the supervisor give up (e.g. --c started from scratch)."""

    kind: str
    message: str


@dataclass(frozen=True)
class Recycle:
    """The running attempt must be stopped and its end counted as `kind` (a stall, a lingering finish)."""

    kind: str  # the exit classification, e.g. "stall" (retryable) or "lingering" (finished, did not exit)
    message: str
    fields: dict[str, Any] = field(default_factory=dict)  # recorded with the `kind` event


@dataclass(frozen=True)
class ChildExited:
    returncode: int
    log_tail: str
    finished: bool
    epochs_completed: int  # furthest epoch this attempt reached (log), or the checkpoint's
    evidence: Evidence = field(default_factory=Evidence)  # what the machine knew (OOM kills, /dev/shm, memory, phase)
    phase: str = "training"  # startup (no epoch began), training, validation (after checkpoint_final.pth)
    # units of work the stage set aside for good (a prediction's cases that fail the predictor on their own): with
    # `finished`, everything else is done and the run ends incomplete (exit 1), naming them
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class StopRequested:
    reason: str  # signal name (SIGTERM, ...) or a reason in words
    save_timeout_s: Union[float, None] = None  # cooperative trainer: how long it may take to save and exit


@dataclass(frozen=True)
class DiskChecked:
    free_bytes: int
    needed_bytes: int


@dataclass(frozen=True)
class StacksDumped:
    """The stack dump of a stalled attempt was taken (or failed: the note says)."""

    attempt: int
    path: str
    note: str


@dataclass(frozen=True)
class Tick:
    """Time passed; lets deadlines fire."""


Event = Union[Begin, Prepared, Launched, LaunchFailed, ChildExited, StopRequested, Tick, Abort, Recycle, DiskChecked,
              StacksDumped]
