"""Heartbeat and hang detection: when a silent trainer counts as stalled, and what it was doing.

nnU-Net writes its training log once per epoch and prints to stdout during the final validation; a crash-only
loop never notices a trainer that stopped making progress (a dataloader deadlock, a SIGSTOPped or D-state
process, a stuck DDP step). `StallWatch` is pure (fed progress and the monotonic time); `FileActivity` wakes
the supervisor when the fold folder or the attempt log changes, so progress is seen at once rather than at
the next poll; `dump_stacks` records where a hung tree is stuck (py-spy) before it is killed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Phase = Literal["startup", "training", "validation"]
RECENT_EPOCHS = 20  # epoch times remembered (state.json) for the auto timeout


@dataclass(frozen=True)
class StallRules:
    """Allowances, in seconds; stall_timeout_s None means auto (learned from this run's epoch times)."""

    startup_grace_s: float = 900.0  # launch -> first epoch (imports, unpacking, torch.compile)
    stall_timeout_s: float | None = None
    floor_s: float = 120.0  # auto never goes below this
    # auto = factor x the longest recent epoch: room for an epoch twice as slow as any of the last 20, while a
    # hang is still noticed within about 3x the typical epoch (bench/hang_detect.py)
    auto_factor: float = 2.0
    validation_grace_s: float = 3600.0  # silence allowed during the final validation (one big case)


@dataclass
class StallWatch:
    """When the current attempt counts as stalled: a deadline that every sign of progress pushes out."""

    rules: StallRules
    launched_at: float
    epoch_times: list[float] = field(default_factory=list)  # recent epochs, this run (carried across attempts)
    phase: Phase = "startup"
    last_progress: float = 0.0
    last_what: str = "launch"
    # cooperative mode: the longest silence between two heartbeats of the trainer (iterations, epoch ends with
    # their saves), once an epoch end is included; the auto timeout then scales with it instead of whole epochs
    beat_gap_s: float | None = None

    def __post_init__(self) -> None:
        self.last_progress = self.launched_at

    def timeout_s(self) -> float:
        """The allowed silence in the current phase."""
        if self.phase == "startup":
            return self.rules.startup_grace_s
        if self.phase == "validation":
            return max(self.rules.validation_grace_s, self.training_timeout_s())
        return self.training_timeout_s()

    def training_timeout_s(self) -> float:
        if self.rules.stall_timeout_s is not None:
            return self.rules.stall_timeout_s
        if self.beat_gap_s is not None:
            return max(self.rules.floor_s, self.rules.auto_factor * self.beat_gap_s)
        if not self.epoch_times:
            return max(self.rules.floor_s, self.rules.startup_grace_s)  # nothing learned yet: be patient
        return max(self.rules.floor_s, self.rules.auto_factor * max(self.epoch_times[-RECENT_EPOCHS:]))

    def deadline(self) -> float:
        return self.last_progress + self.timeout_s()

    def progress(self, now: float, what: str, phase: Phase | None = None) -> None:
        """A sign of life: an epoch started or ended, a checkpoint or validation output was written."""
        self.last_progress, self.last_what = now, what
        if phase is not None:
            self.phase = phase

    def epoch_ended(self, now: float, seconds: float, first_of_attempt: bool) -> None:
        # The first epoch of an attempt carries warm-up (compile, workers, cache): not a measure of the pace,
        # unless it is all we have.
        if not first_of_attempt or not self.epoch_times:
            self.epoch_times = [*self.epoch_times, seconds][-RECENT_EPOCHS:]
        self.progress(now, "epoch end", "training")

    def stalled(self, now: float) -> str | None:
        """None, or why this attempt counts as hung."""
        silent = now - self.last_progress
        if silent < self.timeout_s():
            return None
        unit = "epoch" if self.beat_gap_s is None else "gap between heartbeats"
        learned = ("" if self.phase != "training" or self.rules.stall_timeout_s is not None
                   else f" (auto: {self.rules.auto_factor:g} x the longest recent {unit}, at least "
                        f"{self.rules.floor_s:g} s)")
        return (f"no progress for {silent:.0f} s in the {self.phase} phase (allowed {self.timeout_s():.0f} s"
                f"{learned}); last sign of life: {self.last_what}")


class FileActivity:
    """A watchdog observer that calls `notify` (which enqueues a wake-up) when files change under the folders.

    Coalesced: at most one wake per `min_interval_s`, so a chatty validation phase does not flood the queue.
    The supervisor still polls on its tick, so a file system without inotify (some NFS) only delays things.
    """

    def __init__(self, folders: list[Path], notify: Callable[[], None],
                 ignore: Callable[[str], bool] = lambda path: False, min_interval_s: float = 0.5) -> None:
        self._folders, self._notify, self._min = folders, notify, min_interval_s
        self._ignore = ignore
        self._last = 0.0
        self._observer: object | None = None

    def start(self) -> None:
        from watchdog.events import (
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if outer._ignore(str(event.src_path)):
                    return
                now = time.monotonic()
                if now - outer._last >= outer._min:  # only this observer thread touches _last
                    outer._last = now
                    outer._notify()

        observer = Observer()
        for folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            # Closes, not every write: nnU-Net opens, appends and closes its log per line, and torch.save's
            # thousands of writes per checkpoint would each wake the observer thread (the kernel filters them).
            observer.schedule(Handler(), str(folder), recursive=True,
                              event_filter=[FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent])
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=5)  # type: ignore[attr-defined]


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")  # installed with this package, even without PATH
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def dump_stacks(pids: list[int], out: Path, timeout_s: float = 20.0) -> str:
    """Write py-spy stack dumps of `pids` to `out` (even of SIGSTOPped processes: --nonblocking reads memory
    without pausing them); returns one line for the log."""
    exe = _py_spy()
    lines = [f"# stacks of the trainer's tree when it was declared stalled, {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    if exe is None:
        lines.append("py-spy is not installed: no stack dump (pip install py-spy)")
        out.write_text("\n".join(lines) + "\n")
        return "py-spy unavailable: no stack dump taken"
    dumped = 0
    for pid in pids:
        try:
            r = subprocess.run([exe, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                               timeout=timeout_s, stdin=subprocess.DEVNULL)
            text = r.stdout if r.returncode == 0 else f"py-spy failed (exit {r.returncode}): {r.stderr.strip()}"
            dumped += r.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"py-spy failed: {exc}"
        lines += [f"\n## pid {pid}", text.rstrip()]
    out.write_text("\n".join(lines) + "\n")
    return f"stack dump of {dumped}/{len(pids)} process(es) in {out}"


def process_state(pid: int) -> str:
    """The kernel's one-letter state (T = stopped, D = uninterruptible I/O, Z = zombie), '?' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"

