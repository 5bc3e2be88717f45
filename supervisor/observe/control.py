"""`nnunet-supervise stop`: ask a run's live supervisor to stop resumably, from a UPS hook or a person's shell."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Union

import psutil

from supervisor.context import RunContext
from supervisor.errors import SupervisorError
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore

log = logging.getLogger(__name__)

# Marks in a process's argv that say it is one of ours (`python -m supervisor`, the nnunet-supervise script).
SUPERVISOR_MARKS = ("nnunet-supervise", "supervisor")


class RunFiles(Protocol):
    """A supervisor's files: a fold's run directory (RunLayout) or an experiment's folder."""

    @property
    def lock_file(self) -> Path: ...
    @property
    def state_file(self) -> Path: ...
    @property
    def events_file(self) -> Path: ...
    @property
    def place(self) -> Path: ...


class NotRunning(SupervisorError):
    """No live supervisor owns this run, so there is nothing to stop."""


class StopRefused(SupervisorError):
    """Something holds the run's lock but it cannot be identified as our supervisor here, so nothing was signalled."""


class StopTimeout(SupervisorError):
    """The supervisor was asked to stop but still held its lock when the wait ran out."""


def _looks_like_supervisor(cmdline: list[str]) -> bool:
    return any(mark in arg for arg in cmdline for mark in SUPERVISOR_MARKS)


def _pid(value: object) -> int | None:
    """A usable pid, or None: never 0 or negative (os.kill would hit a whole process group), never a bool."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _find_pid(layout: RunFiles) -> int:
    """The pid of the supervisor that holds the run's lock now; raises NotRunning when none does."""
    run = layout.place
    lock = RunLock(layout.lock_file)
    # Same flock as RunLock.acquire; taking it shared (and dropping it at once) proves nobody holds it.
    if not lock.is_held_elsewhere():
        raise NotRunning(f"run {run}: no supervisor is running (its lock {layout.lock_file} is free); "
                         "nothing to stop")
    holder = lock.holder() or {}
    state = StateStore(layout.state_file).load()
    # The lock file is written by the holder itself when it takes the lock; state.json may still be the
    # previous supervisor's until the new one first saves it, so the lock's pid wins when both are there.
    pid = _pid(holder.get("pid"))
    if pid is None:
        pid = _pid(state.get("supervisor_pid"))
    if pid is None:
        raise StopRefused(f"run {run}: its lock is held but neither {layout.lock_file} nor {layout.state_file} "
                          "names the supervisor's pid; find it with `ps` and send it SIGTERM")
    host = holder.get("host")
    if isinstance(host, str) and host != socket.gethostname():
        raise StopRefused(f"run {run}: its supervisor (pid {pid}) runs on host {host}, not here; "
                          f"run this command on {host}")
    return pid


def _open_verified(pid: int, run: object) -> int | None:
    """A pidfd for pid once its cmdline is ours (None where the OS has no pidfds)."""
    # Opened before the check, the pidfd makes the signal reach exactly the process checked, even if it
    # exits and its pid is reused in between.
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, NotImplementedError):
        pidfd = None  # not Linux >= 5.3: fall back to kill(pid)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise  # ProcessLookupError: it is gone
        pidfd = None
    try:
        cmdline = psutil.Process(pid).cmdline()
        if not _looks_like_supervisor(cmdline):
            raise StopRefused(f"run {run}: pid {pid} named by the run is not a supervisor "
                              f"({' '.join(cmdline)!r}); refusing to signal it")
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        raise
    return pidfd


def request_stop(run: Union[RunContext, RunFiles], reason: str = "stop requested", *,
                 wait_s: float | None = None, poll_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Ask the live supervisor of a run to stop resumably (SIGTERM, exit 75); return its pid.

    With wait_s, also wait until it has let go of the run's lock (it exited), or raise StopTimeout.
    """
    layout = run.layout if isinstance(run, RunContext) else run
    pid = _find_pid(layout)
    try:
        pidfd = _open_verified(pid, layout.place)
    except (ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess):
        # The lock is held, so by someone else than the pid on record: do not guess who.
        raise StopRefused(f"run {layout.place}: its lock is held but the supervisor pid {pid} on record is not "
                          "alive; find the holder with `fuser` or `lsof` on the lock file") from None
    except psutil.AccessDenied:
        raise StopRefused(f"run {layout.place}: not allowed to inspect pid {pid}; "
                          "run this as its owner or root") from None
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise NotRunning(f"run {layout.place}: its supervisor pid {pid} exited just now; nothing to stop") from None
    except PermissionError:
        raise StopRefused(f"run {layout.place}: not allowed to signal supervisor pid {pid}; "
                          "run this as its owner or root") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    log.info("sent SIGTERM to supervisor pid %d of %s (%s)", pid, layout.place, reason)
    # SIGTERM carries no reason, so leave it in the run's record; never create the file (as root, say),
    # which would lock the supervisor out of its own log.
    if layout.events_file.exists():
        try:
            EventLog(layout.events_file).record("stop_sent", pid=pid, signal="SIGTERM", reason=reason,
                                                by_pid=os.getpid())
        except OSError as e:
            log.warning("could not record the stop in %s: %s", layout.events_file, e)
    if wait_s is not None:
        deadline = clock() + wait_s
        lock = RunLock(layout.lock_file)
        while lock.is_held_elsewhere():
            if clock() >= deadline:
                raise StopTimeout(f"run {layout.place}: supervisor pid {pid} was sent SIGTERM but is still "
                                  f"running after {wait_s:g} s (stopping the trainer takes up to stop_grace_s); "
                                  "wait longer or check `nnunet-supervise status`")
            sleep(poll_s)
    return pid
