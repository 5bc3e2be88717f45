"""The trainer's process tree behind a small seam: spawn it in its own session, stop all of it.

nnU-Net's augmentation workers outlive a killed main process for minutes, so every stop covers three
sets: the process group (start_new_session makes pgid == pid), the live descendants, and any process
carrying this run's marker in its environment (workers that called setsid, orphans re-parented away).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from supervisor.daemon.stacks import dump_stacks, process_state
from supervisor.evidence.collect import Probes
from supervisor.oomscore import protect_self, unprotect
from supervisor.trainer.protocol import MARKER_VAR

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to us (Linux), so they stay findable and reapable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def marked_processes(marker: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Live processes whose environment carries MARKER_VAR=marker (the trainer tree of one run)."""
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_tree(pgid: int | None, marker: str, grace_s: float, extra: Sequence[psutil.Process] = ()) -> list[int]:
    """SIGTERM the group and every marked process, wait up to grace_s, SIGKILL what is left.

    SIGKILL also wakes a SIGSTOPped process, which ignores SIGTERM until continued. Returns the pids that
    had to be signalled.
    """
    procs = {p.pid: p for p in (*extra, *marked_processes(marker))}
    if pgid is not None:
        _killpg(pgid, signal.SIGTERM)
        _killpg(pgid, signal.SIGCONT)  # a stopped process only sees SIGTERM once continued
    _signal_all(procs.values(), signal.SIGTERM)
    _signal_all(procs.values(), signal.SIGCONT)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    if pgid is not None:
        _killpg(pgid, signal.SIGKILL)
    late = {p.pid: p for p in (*alive, *marked_processes(marker))}
    _signal_all(late.values(), signal.SIGKILL)
    psutil.wait_procs(list(late.values()), timeout=5)
    _reap_zombie_children()
    return sorted(set(procs) | set(late))


def _reap_zombie_children() -> None:
    """As a subreaper we inherit orphans; collect the exit status of any that died so none stay zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class TrainerProcess:
    """One launched trainer: its Popen and the identity (pid + create time) recorded in state.json."""

    def __init__(self, popen: subprocess.Popen[bytes], marker: str,
                 logcap: subprocess.Popen[bytes] | None = None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.marker = marker
        self.logcap = logcap  # the process between the trainer's output and its attempt log, if capped
        try:
            self.create_time: float | None = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            self.create_time = None

    @classmethod
    def spawn(cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path,
              log_cap: int | None = None) -> TrainerProcess:
        """Start argv in a new session, stdin from /dev/null, stdout and stderr appended to log_path; with log_cap,
        through supervisor.trainer.logcap, which keeps the log under about that many bytes."""
        marker = env[MARKER_VAR]
        if log_cap is None:
            with open(log_path, "ab", buffering=0) as log:
                popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(env), cwd=cwd, start_new_session=True, close_fds=True)
            unprotect(popen.pid)
            return cls(popen, marker)
        # The log keeper has no run marker: stopping the trainer's tree must not stop it before it has written
        # the trainer's last words (it ends by itself once every writer is gone).
        keeper_env = {k: v for k, v in env.items() if k != MARKER_VAR}
        logcap = subprocess.Popen([sys.executable, "-m", "supervisor.trainer.logcap", str(log_path), str(log_cap)],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=keeper_env, cwd=cwd, start_new_session=True, close_fds=True)
        assert logcap.stdin is not None
        try:
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=logcap.stdin,
                                     stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True,
                                     close_fds=True)
        except BaseException:
            logcap.stdin.close()
            logcap.wait()
            raise
        finally:
            logcap.stdin.close()  # the trainer holds the pipe now; when its tree is gone, the keeper sees the end
        # The trainer is the OOM killer's first choice again (its workers, forked later, inherit that); the log keeper
        # keeps the supervisor's protection: it must outlive the trainer to write its last words.
        unprotect(popen.pid)
        return cls(popen, marker, logcap)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit status; with a timeout, None if it is still running then."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def drain(self, timeout_s: float = 10.0) -> None:
        """After the tree is gone: let the log keeper write what is left (it exits at the pipe's end)."""
        if self.logcap is None:
            return
        try:
            self.logcap.wait(timeout_s)
        except subprocess.TimeoutExpired:  # a writer escaped the tree stop: the log is as complete as it gets
            self.logcap.kill()
            self.logcap.wait()

    def terminate(self) -> None:
        """Polite stop: SIGTERM to the whole group (the trainer and its workers)."""
        _killpg(self.pid, signal.SIGTERM)
        _killpg(self.pid, signal.SIGCONT)

    def request_save(self) -> None:
        """Cooperative mode: SIGUSR1 to the trainer's main process only (its workers must not see it)."""
        try:
            os.kill(self.pid, signal.SIGUSR1)
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the group and every marked process."""
        _killpg(self.pid, signal.SIGKILL)
        _signal_all(marked_processes(self.marker), signal.SIGKILL)

    def stop_leftovers(self, grace_s: float) -> list[int]:
        """After the main process is gone: stop whatever of its tree is still alive, then let its log be written."""
        stopped = stop_tree(self.pid, self.marker, grace_s)
        self.drain()
        return stopped


class Trainer(Protocol):
    """A launched trainer, as the runner uses it (TrainerProcess, or a fake in the runner's unit tests)."""

    pid: int
    create_time: float | None

    def wait(self, timeout_s: float | None = None) -> int | None: ...
    def terminate(self) -> None: ...
    def request_save(self) -> None: ...
    def kill(self) -> None: ...
    def stop_leftovers(self, grace_s: float) -> list[int]: ...


Spawner = Callable[[list[str], dict[str, str], Path, Path], Trainer]


class ProcessOps:
    """The OS behind the runner (supervisord's `options`): start the trainer, find and stop its tree, read where it
    is stuck. The runner makes no process system call of its own, so a fake of this class drives it in unit tests."""

    def __init__(self, spawn: Spawner | None = None, log_cap: int | None = None) -> None:
        self._spawn: Spawner = spawn or functools.partial(TrainerProcess.spawn, log_cap=log_cap)
        self.probes = Probes()  # the readings behind a failure's evidence (memory cgroup, kernel log, /dev/shm)

    def spawn(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> Trainer:
        return self._spawn(argv, env, log_path, cwd)

    def tree(self, marker: str) -> list[int]:
        """The pids of the live processes of one run's trainer tree."""
        return [p.pid for p in marked_processes(marker)]

    def stop_tree(self, marker: str, grace_s: float, pgid: int | None = None) -> list[int]:
        """Stop every process of a run's tree (and of the process group pgid): a dead supervisor's orphans, or
        whatever is left on the way out."""
        return stop_tree(pgid, marker, grace_s)

    def become_subreaper(self) -> bool:
        return become_subreaper()

    def protect_from_oom(self) -> str:
        """Lower our own oom_score_adj (the trainers we start are set back): the OOM killer picks the trainer."""
        return protect_self()

    def state(self, pid: int) -> str:
        return process_state(pid)

    def dump_stacks(self, pids: list[int], out: Path) -> str:
        return dump_stacks(pids, out)


def wait_until(predicate: object, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll predicate() until true or timeout (for real-process tests and shutdown paths)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(interval_s)
    return bool(callable(predicate) and predicate())
