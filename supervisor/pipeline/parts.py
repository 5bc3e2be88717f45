"""A prediction cut into parts on one machine: each part (stages.prediction.parts) is a child
`nnunet-supervise predict CONFIG --part K/N`, a supervisor of its own with its own run directory and lock, on its
own GPU (CUDA_VISIBLE_DEVICES) or, on the CPU, beside the others; they run at once and this waits for them all.

The children share this process's group, so a stop sent to the group (the experiment supervisor's, a terminal's
Ctrl-C) reaches each part's supervisor too, which stops resumably; a stop sent to this process alone is passed on.
A part found running already (exit 3: a supervisor of an earlier run of this, still alive) is followed until its
lock is free, then run again, which verifies what it did and predicts what it left.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from supervisor.errors import ExitCode
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.lock import RunLock
from supervisor.stages.prediction.parts import Part

log = logging.getLogger("nnunet_supervise")

POLL_S = 0.5
FOLLOW_MAX_S = 24 * 3600.0  # an earlier part's supervisor is followed at most this long


class Child(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


def spawn_child(argv: list[str], env: dict[str, str], log_file: Path) -> Child:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = open(log_file, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        out.close()


@dataclass
class PartsRun:
    """The parts of one prediction, run at once; `run` returns each part's exit code."""

    command: Sequence[str]  # `predict CONFIG [-i IN -o OUT] [...]`, without the interpreter and --part
    devices: Sequence[str | None]  # one per part: what its CUDA_VISIBLE_DEVICES is (None: left as it is)
    folder: Path  # the whole prediction's run directory: the parts' own are inside it, their logs beside them
    lock_name: str  # the name of a part's lock file in its run directory
    events: EventLog
    stopping: Callable[[], str | None]  # why this is asked to stop, if it is
    spawn: Callable[[list[str], dict[str, str], Path], Child] = spawn_child
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def parts(self) -> list[Part]:
        return [Part(k, len(self.devices)) for k in range(len(self.devices))]

    def _start(self, part: Part) -> Child:
        env = dict(self.environ)
        device = self.devices[part.index]
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        argv = [sys.executable, "-m", "supervisor", *self.command, "--part", str(part)]
        return self.spawn(argv, env, self.folder / f"{part.name}.log")

    def run(self) -> dict[Part, int]:
        parts = self.parts
        log.info("predicting in %d parts at once%s; each part's log: %s", len(parts),
                 "" if all(d is None for d in self.devices) else
                 " (GPUs " + ", ".join(str(d) for d in self.devices) + ")", self.folder / "part-K-of-N.log")
        self.events.record("parts_started", parts=len(parts), devices=list(self.devices))
        running = {p: self._start(p) for p in parts}
        codes: dict[Part, int] = {}
        followed: set[Part] = set()
        passed_on = False
        while running:
            why = self.stopping()
            if why is not None and not passed_on:
                passed_on = True  # a group signal reached them already; one sent to us alone must be passed on
                for child in running.values():
                    _signal(child, signal.SIGTERM)
            for part, child in list(running.items()):
                rc = child.poll()
                if rc is None:
                    continue
                del running[part]
                if rc == ExitCode.LOCKED and part not in followed and why is None:
                    followed.add(part)
                    if self._follow(part):
                        running[part] = self._start(part)
                        continue
                codes[part] = rc
                log.info("part %s: exit %d", part, rc)
            if running:
                self.sleep(POLL_S)
        self.events.record("parts_ended", codes={str(p): c for p, c in sorted(codes.items())})
        return codes

    def _follow(self, part: Part) -> bool:
        """A live supervisor of an earlier run holds the part: wait for it to end (True), or give up on it."""
        lock = RunLock(self.folder / part.name / self.lock_name)
        log.info("part %s is run by a live supervisor of an earlier start (%s); following it until it ends", part,
                 lock.holder() or "unknown")
        deadline = self.clock() + FOLLOW_MAX_S
        while lock.is_held_elsewhere():
            if self.stopping() is not None or self.clock() > deadline:
                return False
            self.sleep(POLL_S)
        return True


def _signal(child: Child, sig: int) -> None:
    try:
        child.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass  # gone already


def verdict(codes: dict[Part, int]) -> int | None:
    """What the parts' exits mean for the whole prediction: None to go on (it verifies every output and predicts
    what a part left: after 0, 1 (cases set aside) or a crash), else the code to end with."""
    values = set(codes.values())
    for code in (ExitCode.USAGE, ExitCode.STOPPED, ExitCode.LOCKED):
        if code in values:
            return int(code)
    return None
