"""The runner's one queue: everything that happens reaches the main thread through it.

Signal handlers, the file observer, the GPU monitor, the thread waiting for the trainer, the ahead verifier and the
background jobs only put items here (uvicorn's handler, supervisord's SignalReceiver); the main thread alone takes
them out, decides and acts. No flag is shared with a lock.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Union

from supervisor.core.messages import Event, StopRequested
from supervisor.daemon.jobs import JobDone
from supervisor.daemon.process import Trainer
from supervisor.gpu.monitor import GpuFault, GpuHealth
from supervisor.stopsignals import stop_signals


@dataclass(frozen=True)
class MainExited:
    """From the waiter thread: the trainer's main process exited; its tree is being stopped."""

    proc: Trainer


@dataclass(frozen=True)
class ChildGone:
    """From the waiter thread: the trainer's main process exited and what was left of its tree is stopped."""

    proc: Trainer
    returncode: int
    stopped: list[int]


@dataclass(frozen=True)
class Wake:
    """From the file observer: something changed in the fold folder; look now rather than at the next tick."""


@dataclass(frozen=True)
class StageNews:
    """From a helper thread of the stage (e.g. the training's verification ahead): handed to the stage on the main
    thread."""

    payload: object


@dataclass(frozen=True)
class GpuReport:
    """From the GPU monitor's thread: a GpuFault or a changed GpuHealth."""

    report: GpuFault | GpuHealth


Item = Union[Event, MainExited, ChildGone, Wake, GpuReport, StageNews, JobDone]


class Inbox:
    """A SimpleQueue (its put is safe inside a signal handler) with a coalesced wake-up for file changes."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._wake_pending = threading.Event()

    def put(self, item: Item) -> None:
        self._queue.put(item)

    def get(self, timeout_s: float) -> Item | None:
        """The next item, or None after timeout_s."""
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, Wake):
            self._wake_pending.clear()  # before the look: a change from now on queues a fresh wake
        return item

    def wake(self) -> None:
        """From the watchdog thread: one wake in the queue at a time, never a change left unread (a dropped wake
        would delay seeing an epoch line to the next tick, and so inflate the stall clock)."""
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self._queue.put(Wake())

    def put_gpu_report(self, report: object) -> None:
        if isinstance(report, (GpuFault, GpuHealth)):
            self._queue.put(GpuReport(report))

    @contextmanager
    def signals(self) -> Iterator[None]:
        """While inside: SIGTERM, SIGINT, SIGUSR1 and SIGHUP become StopRequested items; the old handlers after."""
        with stop_signals(lambda name: self._queue.put(StopRequested(name))):
            yield
