"""What a stage gives the engine. The engine (supervisor.daemon.runner) spawns, watches, classifies, remedies, backs
off, locks, keeps state and events and stops; everything that depends on *what* runs is asked of the stage here.

The order in which the engine calls a stage, for one supervisor run:

    remember(previous state.json) -> begin() -> start()
    per attempt:   prepare(resume, ...) in a job thread -> applied(outcome) -> command(spawn) -> launched(...)
                   look(now) on every tick and file change, until main_exited(), settle(returncode) (in the
                   waiting thread, the tree gone), exited(returncode) and drain()
                   preparing() when a relaunch is decided (verification may start during the backoff)
    stop()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from supervisor.core.lifecycle import Words
from supervisor.core.messages import Begin, ChildExited, DiskChecked, Event, Record, Spawn, StopRequested
from supervisor.core.remedies import Ladder
from supervisor.layout import RunFiles

if TYPE_CHECKING:
    from supervisor.config import Config


@dataclass
class Look:
    """One look at the running attempt: what the lifecycle must hear, and what to record."""

    events: list[Event] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    changed: bool = False  # progress worth a state.json write (an epoch began, a case was written)


# The job the engine runs off its main thread before each launch: (what to hand back to `applied`, Prepared or
# LaunchFailed).
PrepareJob = Callable[[], tuple[Any, Event]]


class Stage(Protocol):
    """One kind of supervised work. Implementations: stages.training.TrainingStage, stages.preprocessing."""

    name: str  # "training", "preprocessing": in logs and state.json
    config: Config  # restart, process, power, heartbeat, notify, metrics: the engine's settings
    files: RunFiles  # the run directory: lock, state.json, events.jsonl, attempt logs
    words: Words  # how the lifecycle's lines name this stage's process and progress
    sized: dict[str, str]  # variables fitted to this allocation, set before every launch
    ladder: Ladder | None  # the remedies for its causes; None: every relaunch as it was
    config_path: Path

    @property
    def work_dir(self) -> Path:
        """Where it works: watched for changes, the cwd of its process, the mark of its process tree."""

    @property
    def attempt(self) -> int:
        """The attempt being watched (stall dumps are named after it)."""

    def remember(self, previous: dict[str, Any]) -> None:
        """What the previous supervisor of this run knew (state.json)."""

    def begin(self) -> Begin:
        """Is it done already, does the first launch resume, how far did it get?"""

    def start(self) -> None:
        """Start the stage's own background helpers (e.g. verification ahead)."""

    def stop(self) -> None: ...

    def news(self, item: object) -> None:
        """An item a helper of this stage posted to the engine's queue (through `post`), on the main thread."""

    def preparing(self) -> None:
        """A relaunch was decided: start what `prepare` will need (verification during the backoff)."""

    def prepare(self, resume: bool, gpu_wait: Callable[[], object],
                remedies: tuple[tuple[str, str], ...]) -> PrepareJob:
        """The work before a launch (verify, quarantine, stage), returned as a job for a thread."""

    def applied(self, outcome: Any) -> list[Record]:
        """On the main thread, the prepare job's outcome; the records to write."""

    def command(self, spawn: Spawn) -> tuple[list[str], dict[str, str]]:
        """argv and environment of the attempt (the sized counts and the remedies are the engine's to add);
        raises LaunchError where it cannot be built."""

    def launched(self, spawn: Spawn, pid: int, now: float) -> None:
        """Its process started: watch what it does from now on."""

    def look(self, now: float) -> Look: ...

    def stall_deadline(self) -> float | None:
        """When the running attempt would count as stalled (None: nothing to wait for)."""

    def stall_dump_path(self) -> Path: ...

    def main_exited(self) -> None:
        """Its main process is gone (the tree is being stopped): no more alarms."""

    def settle(self, returncode: int) -> None:
        """In the thread that waited for it, once its tree is gone: the slow look at what it left (a verification
        that reads every new output), so that `exited`, on the main thread, only decides."""

    def exited(self, returncode: int) -> ChildExited:
        """Its tree is gone: how the attempt ended (progress, "done", the evidence, the phase)."""

    def drain(self) -> list[Record]:
        """Records the stage has to write now (e.g. what it concluded about the attempt that ended)."""

    def stop_request(self, ev: StopRequested) -> StopRequested:
        """A stop arrived while its process runs: the stage may ask for a save first (cooperative training)."""

    def disk(self) -> tuple[list[Record], DiskChecked]: ...

    def facts(self, now: float, running: bool) -> dict[str, Any]:
        """Its part of state.json."""

    def status(self, state: str, attempt: int, facts: dict[str, Any], wall_now: float) -> tuple[str, dict[str, Any]]:
        """The status line (systemd's STATUS=) and the fields for the terminal's line and the metrics, from
        `facts`."""

    def gpu_request(self) -> tuple[str, str | None, int] | None:
        """(device, CUDA_VISIBLE_DEVICES, GPU count) to watch, or None: it does not use a GPU."""
