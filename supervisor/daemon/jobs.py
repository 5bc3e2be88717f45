"""Blocking work off the main thread: each job runs in its own thread and answers on the runner's queue.

The main loop must keep turning (sd_notify WATCHDOG=1 comes from it, and a stop request must be heard at once), so
whatever can take seconds (verifying checkpoints, waiting for a GPU's memory, dumping a hung tree's stacks) runs
here. A job's exception is handed back too: the runner re-raises it on the main thread, where a bug of ours ends
the supervisor (exit 70) just as it would have without the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobDone:
    """A job's answer: its name and its result, or the exception it raised."""

    name: str
    result: Any = None
    error: BaseException | None = None


class Jobs:
    """Starts named jobs; `put` (the runner's queue) receives a JobDone for each."""

    def __init__(self, put: Callable[[JobDone], object]) -> None:
        self._put = put
        self._running: set[str] = set()  # touched by the main thread only (start, and finished on JobDone)

    def start(self, name: str, work: Callable[[], Any]) -> None:
        if name in self._running:
            raise RuntimeError(f"job {name} is already running")
        self._running.add(name)

        def run() -> None:
            try:
                self._put(JobDone(name, work()))
            except BaseException as exc:  # handed to the main thread, which decides what it means
                self._put(JobDone(name, error=exc))

        threading.Thread(target=run, name=f"job-{name}", daemon=True).start()

    def finished(self, done: JobDone) -> None:
        self._running.discard(done.name)

    def running(self, name: str) -> bool:
        return name in self._running
