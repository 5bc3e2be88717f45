"""The attempt log keeper: a trainer that prints without end does not fill the disk, and its last words stay."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from supervisor.daemon.process import TrainerProcess, wait_until
from supervisor.stages.training.traininglog import read_tail
from supervisor.trainer.protocol import MARKER_VAR

pytestmark = pytest.mark.process

CHATTY = """
import sys
print("first line: the launch", flush=True)
for i in range(200000):
    print(f"UserWarning: the same warning again, number {i:08d}", flush=False)
sys.stdout.flush()
print("Traceback (most recent call last):\\nRuntimeError: the last words", flush=True)
sys.exit(1)
"""


def test_the_log_keeps_its_head_its_newest_part_and_says_what_was_cut(tmp_path: Path) -> None:
    log = tmp_path / "attempt-1.log"
    log.write_text("# nnunet-supervise attempt 1: nnUNetv2_train ...\n")
    cap = 256 * 1024
    proc = TrainerProcess.spawn([sys.executable, "-c", CHATTY], {MARKER_VAR: str(tmp_path), "PATH": "/usr/bin:/bin"},
                                log, tmp_path, log_cap=cap)
    assert proc.wait(60) == 1
    proc.stop_leftovers(5)  # the tree is gone; the keeper has written the rest
    size = log.stat().st_size
    assert size <= cap * 3 // 2  # printed: about 10 MB
    text = log.read_text()
    assert text.startswith("# nnunet-supervise attempt 1:") and "first line: the launch" in text
    assert "[nnunet-supervise logcap]" in text and "bytes of the trainer's output were cut here" in text
    assert "RuntimeError: the last words" in read_tail(log)
    assert proc.logcap is not None and proc.logcap.poll() == 0


def test_without_a_cap_the_trainer_writes_straight_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "attempt-1.log"
    proc = TrainerProcess.spawn([sys.executable, "-c", "print('hello')"], {MARKER_VAR: str(tmp_path)}, log, tmp_path)
    assert proc.wait(30) == 0 and proc.logcap is None
    assert log.read_text() == "hello\n"


def test_the_keeper_outlives_a_trainer_killed_with_its_workers_holding_the_pipe(tmp_path: Path) -> None:
    log = tmp_path / "attempt-1.log"
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"  # a worker inherits stdout
              "print('Traceback (most recent call last):\\nValueError: boom', flush=True)\n"
              "time.sleep(60)\n")
    proc = TrainerProcess.spawn([sys.executable, "-c", script], {MARKER_VAR: str(tmp_path)}, log, tmp_path,
                                log_cap=1 << 20)
    assert wait_until(lambda: log.exists() and "ValueError: boom" in log.read_text(), 30)
    proc.kill()
    proc.wait(30)
    proc.stop_leftovers(5)  # stops the worker; the pipe closes; the keeper finishes
    assert "ValueError: boom" in read_tail(log)
    assert proc.logcap is not None and proc.logcap.poll() is not None
