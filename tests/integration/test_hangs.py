"""What a crash-only loop misses, on real nnUNetv2_train (CPU): a hung trainer, a dead worker, a dead supervisor.

Processes are sampled from outside the whole time: never two trainer generations of one run at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.context import RunContext
from supervisor.daemon.process import marked_processes
from supervisor.trainer.protocol import MARKER_VAR
from tests.conftest import events_of, reach_epoch, supervise

pytestmark = pytest.mark.integration






@contextmanager
def supervising(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live supervisor for the block; killed on the way out if a check failed first."""
    sup = supervise(config)
    try:
        yield sup
    finally:
        if sup.poll() is None:
            sup.kill()


class Generations:
    """Samples, every 0.2 s, which attempts of the run have live processes (trainer or workers)."""

    def __init__(self, ctx: RunContext) -> None:
        self.marker = str(ctx.layout.fold_dir)
        self.most = 0
        self.seen: list[set[str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.2):
            attempts = set()
            for p in marked_processes(self.marker):
                try:
                    attempt = p.environ().get("NNUNET_SUPERVISE_ATTEMPT", "0")
                except psutil.Error:
                    continue
                if attempt != "0":  # attempt 0: the supervisor's own checkpoint probe
                    attempts.add(attempt)
            self.seen.append(attempts)
            self.most = max(self.most, len(attempts))

    def __enter__(self) -> Generations:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)




def test_a_sigstopped_trainer_is_declared_stalled_dumped_killed_and_resumed(write_config: Any) -> None:
    # 40 s: on this 2-core VM a training epoch of the demo trainer sometimes takes over 15 s (CPU-bound torch beside
    # its workers), and an explicit timeout below an epoch is a stall by the user's own rule
    config = write_config(heartbeat={"stall_timeout_s": 40})
    ctx = RunContext.load(config)
    with Generations(ctx) as gens, supervising(config) as sup:
        hung = reach_epoch(ctx, 5)
        os.kill(hung, signal.SIGSTOP)  # hangs without exiting: a crash-only loop waits forever
        assert sup.wait(timeout=400) == 0
    events = events_of(ctx)
    stall = next(e for e in events if e["event"] == "stall")
    assert stall["process_states"][str(hung)] == "T"  # it was stopped, and we said so
    assert stall["timeout_s"] == 40 and "no progress for" in stall["message"]
    dump = Path(stall["dump"]).read_text()
    assert f"pid {hung}" in dump and "nnunetv2" in dump  # py-spy read the stopped trainer's stack
    exits = [e for e in events if e["event"] == "exit"]
    assert exits[0]["classification"] == "stall" and exits[0]["retryable"] is True
    launches = [e for e in events if e["event"] == "launch"]
    assert len(launches) == 2 and launches[1]["resume"] is True
    assert events[-1]["event"] == "finished" and ctx.layout.is_finished()
    assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE
    assert gens.most == 1 and marked_processes(str(ctx.layout.fold_dir)) == []


def test_a_killed_augmentation_worker_does_not_leave_the_run_stuck(write_config: Any) -> None:
    config = write_config(heartbeat={"stall_timeout_s": 20})
    ctx = RunContext.load(config)
    with Generations(ctx) as gens, supervising(config) as sup:
        workers = psutil.Process(reach_epoch(ctx, 4)).children(recursive=True)
        assert workers, "nnU-Net's augmentation workers should be running"
        workers[0].kill()  # what the OOM killer does to the biggest worker
        assert sup.wait(timeout=400) == 0
    events = events_of(ctx)
    first_end = next(e for e in events if e["event"] in ("exit", "stall"))
    # nnU-Net notices ("background workers are no longer alive") or hangs on the missing batch: either way the
    # attempt ends, is classified, and the run resumes with --c to the end.
    assert first_end["event"] == "stall" or first_end["classification"] in ("workers_died", "python_exception")
    assert [e["resume"] for e in events if e["event"] == "launch"][-1] is True
    assert ctx.layout.is_finished() and gens.most == 1


def test_a_supervisor_killed_and_started_again_never_runs_two_trainers(write_config: Any) -> None:
    config = write_config()
    ctx = RunContext.load(config)
    with Generations(ctx) as gens:
        with supervising(config) as first:
            orphan = reach_epoch(ctx, 3)
            first.kill()  # SIGKILL: no cleanup at all; the trainer runs on in its own session
            first.wait(timeout=30)
        assert psutil.Process(orphan).environ().get(MARKER_VAR) == str(ctx.layout.fold_dir)
        with supervising(config) as second:
            assert second.wait(timeout=400) == 0
    events = events_of(ctx)
    stopped = next(e for e in events if e["event"] == "orphan_stopped")
    assert orphan in stopped["pids"]
    launches = [e for e in events if e["event"] == "launch"]
    assert len(launches) == 2 and launches[1]["resume"] is True
    assert ctx.layout.is_finished()
    assert gens.most == 1, [s for s in gens.seen if len(s) > 1][:3]
