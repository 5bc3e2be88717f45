"""The thin runner: gathers facts, feeds events to the Decider, carries out its actions.

Threads and signal handlers only enqueue (a SimpleQueue, whose put is safe inside a signal handler);
the main thread alone drains the queue, decides and acts.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Union

from supervisor.checkpoint import resume_point
from supervisor.command import build_argv, build_env, train_executable
from supervisor.context import RunContext
from supervisor.errors import LaunchError
from supervisor.events import EventLog
from supervisor.lock import RunLock
from supervisor.loop import (
    Action,
    Begin,
    ChildExited,
    Decider,
    Event,
    Exit,
    Kill,
    Launch,
    Launched,
    LaunchFailed,
    LoopState,
    Phase,
    Record,
    Say,
    StopRequested,
    Terminate,
    Tick,
)
from supervisor.policy import RestartPolicy
from supervisor.process import TrainerProcess, become_subreaper, marked_processes, stop_tree
from supervisor.state import StateStore
from supervisor.traininglog import LogFollower, read_tail

log = logging.getLogger("nnunet_supervise")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


@dataclass(frozen=True)
class _ChildGone:
    """From the waiter thread: the trainer's main process exited."""

    proc: TrainerProcess
    returncode: int


Spawner = Callable[[list[str], dict[str, str], Path, Path], TrainerProcess]


class Runner:
    """Supervise one run until it finishes, gives up or is stopped; returns the exit code."""

    def __init__(self, ctx: RunContext, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 spawn: Spawner = TrainerProcess.spawn, tick_s: float = 2.0, leftover_grace_s: float = 10.0) -> None:
        self.ctx = ctx
        self.layout = ctx.layout
        self.clock = clock
        self.wall = wall
        self.spawn = spawn
        self.tick_s = tick_s
        self.leftover_grace_s = leftover_grace_s
        cfg = ctx.config
        self.decider = Decider(RestartPolicy.from_config(cfg.restart), cfg.process.stop_grace_s, rand)
        self.events = EventLog(self.layout.events_file, wall)
        self.store = StateStore(self.layout.state_file)
        self.queue: queue.SimpleQueue[Union[Event, _ChildGone]] = queue.SimpleQueue()
        self.proc: TrainerProcess | None = None
        self._logs_before: set[Path] = set()
        self._followers: dict[Path, LogFollower] = {}
        self._epoch_now: int | None = None
        self._attempt = 0
        self._last_state = LoopState()
        self._started_ts = wall()

    # ---- the loop ----

    def run(self) -> int:
        self.layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.layout.lock_file)
        lock.acquire()  # LockedError -> exit 3, before anything is touched
        log.info("supervising %s (run directory %s)", self.ctx.config_path, self.layout.supervisor_dir)
        try:
            become_subreaper()
            previous = self.store.load()
            self._stop_orphans(previous)
            with self._signals():
                return self._loop(LoopState(attempt=int(previous.get("attempt", 0))))
        finally:
            self._ensure_stopped()
            lock.release()

    def _loop(self, state: LoopState) -> int:
        pending: deque[Event] = deque([self._begin()])
        while True:
            if not pending:
                pending.append(self._next_event(state))
            state, actions = self.decider.step(state, pending.popleft(), self.clock())
            self._persist(state)
            for action in actions:
                if isinstance(action, Exit):
                    return action.code
                follow_up = self._perform(action)
                if follow_up is not None:
                    pending.append(follow_up)

    def _next_event(self, state: LoopState) -> Event:
        timeout = self.tick_s
        if state.deadline is not None:
            timeout = max(0.0, min(timeout, state.deadline - self.clock()))
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            self._watch_progress()
            return Tick()
        if isinstance(item, _ChildGone):
            return self._child_exited(item)
        return item

    # ---- facts ----

    def _begin(self) -> Begin:
        finished = self.layout.is_finished()
        checkpoints = self.layout.existing_checkpoints()
        meta = resume_point(checkpoints)
        epoch = meta.current_epoch if meta and meta.current_epoch is not None else 0
        self._epoch_now = epoch
        return Begin(finished=finished, resume=bool(checkpoints), best_epoch=epoch)

    def _attempt_logs(self) -> list[LogFollower]:
        """Followers for the training logs this attempt created (nnU-Net starts a new one per start)."""
        for path in self.layout.training_logs():
            if path not in self._logs_before and path not in self._followers:
                self._followers[path] = LogFollower(path)
        return list(self._followers.values())

    def _attempt_epochs(self) -> int:
        progress = [f.poll() for f in self._attempt_logs()]
        completed = max((p.epochs_completed for p in progress), default=0)
        current = [p.current_epoch for p in progress if p.current_epoch is not None]
        if current:
            self._epoch_now = max(current)
        return completed

    def _watch_progress(self) -> None:
        if self.proc is None:
            return
        before = self._epoch_now
        self._attempt_epochs()
        if self._epoch_now != before:
            self._persist_extra()

    def _child_exited(self, gone: _ChildGone) -> ChildExited:
        stopped = gone.proc.stop_leftovers(self.leftover_grace_s)
        if stopped:
            log.info("stopped %d leftover process(es) of the trainer's tree: %s", len(stopped), stopped)
        self.proc = None
        meta = resume_point(self.layout.existing_checkpoints())
        epochs = max(self._attempt_epochs(), (meta.current_epoch or 0) if meta else 0)
        tail = read_tail(self.layout.attempt_log(self._attempt))
        return ChildExited(gone.returncode, tail, self.layout.is_finished(), epochs)

    # ---- actions ----

    def _perform(self, action: Action) -> Event | None:
        if isinstance(action, Launch):
            return self._launch(action)
        if isinstance(action, Terminate):
            if self.proc is not None:
                self.proc.terminate()
        elif isinstance(action, Kill):
            if self.proc is not None:
                self.proc.kill()
        elif isinstance(action, Record):
            self.events.record(action.event, **action.fields)
        elif isinstance(action, Say):
            log.info("%s", action.message)
        return None

    def _launch(self, action: Launch) -> Event:
        self._attempt = action.attempt
        self._logs_before = set(self.layout.training_logs())
        self._followers = {}
        log_path = self.layout.attempt_log(action.attempt)
        try:
            argv = build_argv(self.ctx, train_executable(), action.resume)
            env = build_env(self.ctx, action.attempt)
            with open(log_path, "a") as f:
                f.write(f"# nnunet-supervise attempt {action.attempt}: {' '.join(argv)}\n")
            proc = self.spawn(argv, env, log_path, self.layout.fold_dir)
        except (OSError, LaunchError) as exc:
            return LaunchFailed(str(exc))
        self.proc = proc
        threading.Thread(target=lambda: self.queue.put(_ChildGone(proc, proc.wait())),
                         name=f"wait-attempt-{action.attempt}", daemon=True).start()
        return Launched(proc.pid, tuple(argv), action.resume)

    # ---- safety ----

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.queue.put(StopRequested(signal.Signals(signum).name))

        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_orphans(self, previous: dict[str, Any]) -> None:
        """A trainer left by a supervisor that died must not run beside the one we are about to start.

        We terminate it rather than adopt it: a process we did not spawn cannot be wait()ed for, so its
        exit status (and with it the classification of its failure) would be lost.
        """
        orphans = marked_processes(str(self.layout.fold_dir))
        if not orphans:
            return
        pids = [p.pid for p in orphans]
        log.warning("a trainer of this run is still alive without a supervisor (pids %s, previous supervisor "
                    "pid %s); stopping it before resuming", pids, previous.get("supervisor_pid"))
        stopped = stop_tree(None, str(self.layout.fold_dir), self.ctx.config.process.stop_grace_s, orphans)
        self.events.record("orphan_stopped", pids=stopped, previous_pid=previous.get("pid"))

    def _ensure_stopped(self) -> None:
        """On any way out, leave nothing of the trainer's tree running."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.popen.poll() is None:
            log.warning("stopping trainer pid %d on the way out", proc.pid)
            proc.terminate()
            try:
                proc.popen.wait(timeout=self.ctx.config.process.stop_grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_tree(proc.pid if proc else None, str(self.layout.fold_dir), self.leftover_grace_s)

    # ---- state.json ----

    def _persist(self, s: LoopState) -> None:
        self._last_state = s
        self._persist_extra()

    def _persist_extra(self) -> None:
        s = self._last_state
        proc = self.proc
        self.store.save({
            "schema": 1,
            "state": s.phase.value,
            "attempt": s.attempt,
            "restarts": s.restarts,
            "max_restarts": self.decider.policy.max_restarts,
            "best_epoch": s.best_epoch,
            "epoch": self._epoch_now,
            "pid": proc.pid if proc else None,
            "pid_create_time": proc.create_time if proc else None,
            "supervisor_pid": os.getpid(),
            "last_exit": s.last_exit,
            "stop_reason": s.stop_reason,
            "exit_code": s.exit_code,
            "resumable": s.phase not in (Phase.FINISHED, Phase.FAILED),
            "next_launch_in_s": (round(s.deadline - self.clock(), 3)
                                 if s.phase is Phase.BACKOFF and s.deadline is not None else None),
            "fold_dir": str(self.layout.fold_dir),
            "config": str(self.ctx.config_path),
            "started_ts": self._started_ts,
            "updated_ts": self.wall(),
        })
