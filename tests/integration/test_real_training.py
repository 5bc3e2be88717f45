"""Real nnUNetv2_train on CPU under the real supervisor daemon: kill, resume, lock, stop, leftovers.

Each test takes a minute or two; they are few and decisive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.checkpoints.meta import read_meta
from supervisor.context import RunContext
from supervisor.daemon.process import marked_processes
from supervisor.stages.training.traininglog import read_progress
from tests.conftest import events_of, state_of, supervise, wait_for

pytestmark = pytest.mark.integration






def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_mid_training_resumes_with_c_at_the_checkpoint_epoch_and_finishes(write_config: Any) -> None:
    config: Path = write_config()
    ctx = RunContext.load(config)
    sup = supervise(config)
    try:
        # Mid-run: past epoch 5, so checkpoint_latest.pth (written every 2nd epoch by the demo trainer) exists.
        wait_for(lambda: (state_of(ctx).get("epoch") or 0) >= 5, 180, "the trainer to reach epoch 5")
        trainer_pid = state_of(ctx)["pid"]
        workers = [p.pid for p in psutil.Process(trainer_pid).children(recursive=True)]
        assert workers, "nnU-Net's augmentation workers should be running"

        # A second supervisor on the same run is refused with exit 3 and names the holder.
        second = subprocess.run([sys.executable, "-m", "supervisor", "run", str(config)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr
        assert f"pid {sup.pid}" in second.stderr

        os.kill(trainer_pid, signal.SIGKILL)  # a crash: only the main process dies, its workers linger
        assert sup.wait(timeout=300) == 0
    finally:
        if sup.poll() is None:
            sup.kill()

    events = events_of(ctx)
    first_exit = next(e for e in events if e["event"] == "exit")
    assert first_exit["classification"] == "killed_by_signal" and first_exit["retryable"] is True
    launches = [e for e in events if e["event"] == "launch"]
    assert len(launches) == 2
    assert "--c" not in launches[0]["argv"] and "--c" in launches[1]["argv"] and launches[1]["resume"] is True
    assert [e["event"] for e in events][-1] == "finished"

    # The relaunch resumed exactly at the checkpoint's epoch (nnU-Net logs "Epoch N" for the first epoch it trains).
    logs = ctx.layout.training_logs()
    assert len(logs) == 2
    resumed_at = read_progress(logs[1]).first_epoch
    # The supervisor verified the newest intact checkpoint (latest every 2nd epoch, or a newer best, which it
    # stages as latest) before relaunching; nnU-Net resumed exactly there.
    second_launch = events.index(launches[1])
    verified = [e for e in events[:second_launch] if e["event"] == "checkpoint_verified"]
    assert verified and resumed_at == verified[-1]["epoch"]
    assert resumed_at is not None and 4 <= resumed_at <= 7
    assert read_meta(ctx.layout.checkpoint("checkpoint_final.pth")).current_epoch == 10
    assert ctx.layout.is_finished()

    # Nothing of either attempt's tree is left running.
    assert not any(alive(p) for p in [trainer_pid, *workers])
    assert marked_processes(str(ctx.layout.fold_dir)) == []
    assert state_of(ctx)["state"] == "finished"


def test_sigterm_stops_resumably_with_75_and_a_rerun_resumes_to_the_end(write_config: Any) -> None:
    config: Path = write_config()
    ctx = RunContext.load(config)
    sup = supervise(config)
    try:
        wait_for(lambda: (state_of(ctx).get("epoch") or 0) >= 3, 180, "the trainer to reach epoch 3")
        trainer_pid = state_of(ctx)["pid"]
        tree = [trainer_pid, *(p.pid for p in psutil.Process(trainer_pid).children(recursive=True))]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 75
    finally:
        if sup.poll() is None:
            sup.kill()
    assert not any(alive(p) for p in tree)
    assert marked_processes(str(ctx.layout.fold_dir)) == []
    state = state_of(ctx)
    assert state["state"] == "stopped" and state["resumable"] is True
    stop = next(e for e in events_of(ctx) if e["event"] == "stop_requested")
    assert stop["signal"] == "SIGTERM"

    # The same command picks the run up again with --c and finishes it.
    again = supervise(config)
    assert again.wait(timeout=300) == 0
    launches = [e for e in events_of(ctx) if e["event"] == "launch"]
    assert [e["attempt"] for e in launches] == [1, 2]
    assert launches[1]["resume"] is True
    assert ctx.layout.is_finished()


def test_check_passes_on_the_real_dataset_and_names_a_missing_trainer(write_config: Any) -> None:
    ok = subprocess.run([sys.executable, "-m", "supervisor", "check", str(write_config())],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "nnUNetTrainer_Demo found" in ok.stdout

    bad = write_config(nnunet={"trainer": "nnUNetTrainer_Missing", "fold": 7})
    out = subprocess.run([sys.executable, "-m", "supervisor", "check", str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "nnunet.trainer: nnUNetTrainer_Missing cannot be loaded" in out.stdout
    assert "nnunet.fold: 7" in out.stdout
