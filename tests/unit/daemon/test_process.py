"""Real processes: the trainer's tree is stopped completely, including workers that escape the group."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from supervisor.daemon.process import TrainerProcess, marked_processes, stop_tree, wait_until
from supervisor.trainer.protocol import MARKER_VAR

pytestmark = pytest.mark.process  # real processes (seconds)

# A "trainer" that starts a worker ignoring SIGTERM and a worker that leaves the process group (setsid),
# records their pids, then either waits or crashes, leaving both behind (like nnU-Net's augmenters).
TREE = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    stubborn = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    escaped = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"])
    with open(sys.argv[1], "w") as f:
        f.write(f"{stubborn.pid} {escaped.pid}")
    print("workers started", flush=True)
    if sys.argv[2] == "crash":
        os._exit(3)
    time.sleep(600)
""")


def spawn_tree(tmp_path: Path, mode: str) -> tuple[TrainerProcess, list[int]]:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    pids_file = tmp_path / "pids"
    env = {**os.environ, MARKER_VAR: str(tmp_path)}
    proc = TrainerProcess.spawn([sys.executable, str(script), str(pids_file), mode], env, tmp_path / "log", tmp_path)
    assert wait_until(lambda: pids_file.exists() and pids_file.read_text().count(" ") == 1, 30)
    return proc, [int(p) for p in pids_file.read_text().split()]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_spawn_gives_own_session_devnull_stdin_and_log(tmp_path: Path) -> None:
    env = {**os.environ, MARKER_VAR: "m"}
    code = "import os, sys; print(os.getsid(0) == os.getpid(), sys.stdin.read() == '', os.environ['X'])"
    proc = TrainerProcess.spawn([sys.executable, "-c", code], {**env, "X": "42"}, tmp_path / "a.log", tmp_path)
    assert proc.wait() == 0
    assert (tmp_path / "a.log").read_text().strip() == "True True 42"


def test_leftovers_of_a_crashed_trainer_are_all_stopped(tmp_path: Path) -> None:
    proc, workers = spawn_tree(tmp_path, "crash")
    assert proc.wait() == 3
    assert all(alive(p) for p in workers)  # the crash left both workers running
    t0 = time.monotonic()
    stopped = proc.stop_leftovers(grace_s=1.0)
    assert set(workers) <= set(stopped)
    assert not any(alive(p) for p in workers)
    assert time.monotonic() - t0 < 10
    assert marked_processes(str(tmp_path)) == []


def test_terminate_then_kill_a_stopped_tree(tmp_path: Path) -> None:
    proc, workers = spawn_tree(tmp_path, "wait")
    os.kill(proc.pid, signal.SIGSTOP)  # a hung (SIGSTOPped) trainer ignores SIGTERM until continued
    stopped = stop_tree(proc.pid, str(tmp_path), grace_s=1.0)  # reaps it too: we are its parent
    assert {proc.pid, *workers} <= set(stopped)
    assert not any(alive(p) for p in [proc.pid, *workers])


@pytest.mark.parametrize("mode", ["wait"])
def test_kill_reaches_escaped_workers(tmp_path: Path, mode: str) -> None:
    proc, workers = spawn_tree(tmp_path, mode)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert wait_until(lambda: not any(alive(p) for p in workers), 10)
