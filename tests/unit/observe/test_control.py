"""`stop`: signalling a run's live supervisor, against real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.daemon.process import wait_until
from supervisor.errors import SupervisorError
from supervisor.layout import RunLayout
from supervisor.observe.control import NotRunning, StopRefused, StopTimeout, request_stop
from tests.conftest import REPO

pytestmark = pytest.mark.process  # real processes (seconds)

# Stands in for a live supervisor: takes the run's lock like runner.py does, names itself in state.json,
# then either exits 75 on SIGTERM ("stop") or never sees one ("deaf", SIGTERM stays blocked).
SUPERVISOR = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from supervisor.rundir.lock import RunLock
    lock_file, state_file, ready, mode = sys.argv[1:5]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    RunLock(Path(lock_file)).acquire()
    Path(state_file).write_text(json.dumps({"supervisor_pid": os.getpid(), "state": "running"}))
    Path(ready).write_text("ready")
    if mode == "stop":
        sys.exit(75 if signal.sigtimedwait({signal.SIGTERM}, 60) else 1)
    signal.sigtimedwait({signal.SIGUSR2}, 60)
""")


# Holds the lock but is not a supervisor: no "supervisor" anywhere in its argv (paths and even the state key
# come by environment, since the check is a substring match on the command line).
BYSTANDER = textwrap.dedent("""
    import fcntl, json, os, time
    fd = os.open(os.environ["T_LOCK"], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.environ.get("T_HOST"):
        os.write(fd, json.dumps({"pid": os.getpid(), "host": os.environ["T_HOST"]}).encode())
    pid = os.getpid() if os.environ["T_STATE_PID"] == "self" else int(os.environ["T_STATE_PID"])
    open(os.environ["T_STATE"], "w").write(json.dumps({os.environ["T_KEY"]: pid}))
    open(os.environ["T_READY"], "w").write("ready")
    time.sleep(60)
""")


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    lay = RunLayout(tmp_path / "results", "Dataset001_Power", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", 0)
    lay.supervisor_dir.mkdir(parents=True)
    return lay


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a helper process and wait (bounded) until it holds the lock; kill whatever is left at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        ready = tmp_path / f"ready-{len(procs)}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "T_READY": str(ready), **env}
        argv = [str(ready) if a == "READY" else a for a in argv]
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path)
        procs.append(proc)
        assert wait_until(lambda: ready.exists() or proc.poll() is not None, 30)
        assert proc.poll() is None, "helper process died before it was ready"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def supervisor_argv(layout: RunLayout, mode: str) -> list[str]:
    return [sys.executable, "-c", SUPERVISOR, str(layout.lock_file), str(layout.state_file), "READY", mode,
            "nnunet-supervise"]


def test_stops_a_live_supervisor_and_waits_for_it(layout: RunLayout, spawn: Callable[..., subprocess.Popen[bytes]]
                                                  ) -> None:
    layout.events_file.touch()
    proc = spawn(supervisor_argv(layout, "stop"))
    assert request_stop(layout, reason="ups: ONBATT", wait_s=30) == proc.pid
    assert proc.wait(timeout=30) == 75
    (event,) = [json.loads(line) for line in layout.events_file.read_text().splitlines()]
    assert event["event"] == "stop_sent" and event["pid"] == proc.pid and event["reason"] == "ups: ONBATT"


def test_without_wait_returns_at_once(layout: RunLayout, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn(supervisor_argv(layout, "stop"))
    assert request_stop(layout) == proc.pid
    assert proc.wait(timeout=30) == 75
    assert not layout.events_file.exists()  # never created from outside: the supervisor owns it


def test_lock_holder_pid_wins_over_a_stale_state(layout: RunLayout, spawn: Callable[..., subprocess.Popen[bytes]]
                                                 ) -> None:
    proc = spawn(supervisor_argv(layout, "stop"))
    layout.state_file.write_text(json.dumps({"supervisor_pid": dead_pid()}))  # as if the new one had not saved yet
    assert request_stop(layout, wait_s=30) == proc.pid
    assert proc.wait(timeout=30) == 75


def test_wait_runs_out_on_a_supervisor_that_does_not_stop(layout: RunLayout,
                                                          spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn(supervisor_argv(layout, "deaf"))
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:  # a fake clock: the wait is decided without sleeping
        slept.append(s)
        now[0] += s

    with pytest.raises(StopTimeout, match=f"pid {proc.pid} was sent SIGTERM but is still running after 1 s"):
        request_stop(layout, wait_s=1.0, poll_s=0.25, clock=lambda: now[0], sleep=sleep)
    assert slept == [0.25] * 4
    assert proc.poll() is None


def test_nothing_running(layout: RunLayout) -> None:
    with pytest.raises(NotRunning, match="no supervisor is running"):
        request_stop(layout)  # no lock file at all
    layout.lock_file.write_text(json.dumps({"pid": os.getpid(), "host": "x"}))
    layout.state_file.write_text(json.dumps({"supervisor_pid": os.getpid()}))
    with pytest.raises(NotRunning, match=f"{layout.fold_dir}: no supervisor is running"):
        request_stop(layout)  # a lock file left behind, free: the pids in it mean nothing (we are still alive)
    assert issubclass(NotRunning, SupervisorError) and not issubclass(NotRunning, StopRefused)


def bystander(layout: RunLayout, state_pid: str, host: str = "") -> dict[str, str]:
    return {"T_LOCK": str(layout.lock_file), "T_STATE": str(layout.state_file), "T_STATE_PID": state_pid,
            "T_KEY": "supervisor_pid", "T_HOST": host}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_refuses_a_pid_that_is_not_a_supervisor(layout: RunLayout,
                                                spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn([sys.executable, "-c", BYSTANDER], **bystander(layout, "self"))
    with pytest.raises(StopRefused, match=f"pid {proc.pid} named by the run is not a supervisor"):
        request_stop(layout)
    assert proc.poll() is None  # not signalled


def test_refuses_a_dead_pid_while_the_lock_is_held(layout: RunLayout,
                                                   spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    pid = dead_pid()
    spawn([sys.executable, "-c", BYSTANDER], **bystander(layout, str(pid)))
    with pytest.raises(StopRefused, match=f"supervisor pid {pid} on record is not alive"):
        request_stop(layout)


def test_refuses_a_supervisor_on_another_host(layout: RunLayout,
                                              spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn([sys.executable, "-c", BYSTANDER], **bystander(layout, "self", host="gpu-node-7"))
    with pytest.raises(StopRefused, match="runs on host gpu-node-7, not here"):
        request_stop(layout)
    assert proc.poll() is None


def test_refuses_pid_zero(layout: RunLayout, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    spawn([sys.executable, "-c", BYSTANDER], **bystander(layout, "0"))  # 0 would signal our own process group
    with pytest.raises(StopRefused, match="names the supervisor's pid"):
        request_stop(layout)
