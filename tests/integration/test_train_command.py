"""`nnunet-supervise train DATASET CONFIGURATION FOLD [nnUNetv2_train's options]` on real nnU-Net (CPU, the tiny
dataset): the command a user types, supervised; its trainer SIGKILLed mid-training is resumed with --c, the
run.yaml it wrote into the fold's folder is what `status` reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor.demo.runyaml import QUIET_ENV
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

TRAINERS = Path(__file__).resolve().parents[1] / "trainers"
SHORT = "nnUNetTrainer_Short"  # 4 epochs of 3 steps, a checkpoint every epoch


def test_the_users_own_command_is_supervised_and_a_killed_trainer_resumed(tiny_dataset: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    raw, pre = tiny_dataset
    results = tmp_path / "results"
    results.mkdir()
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results),
           "nnUNet_extTrainer": str(TRAINERS), **QUIET_ENV}
    log = tmp_path / "train.log"
    with open(log, "ab") as out:
        sup = subprocess.Popen([sys.executable, "-m", "supervisor", "train", "901", "2d", "0", "-tr",
                                SHORT, "-device", "cpu", "--npz", "--c", "--max-restarts", "3"],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    fold = results / "Dataset901_Tiny" / f"{SHORT}__nnUNetPlans__2d" / "fold_0"
    state_file = fold / "supervisor" / "state.json"
    try:
        pid = wait_for(lambda: (StateStore(state_file).load().get("epoch") or 0) >= 2
                       and StateStore(state_file).load().get("pid"), 400, "the trainer at epoch 2")
        os.kill(pid, signal.SIGKILL)
        assert sup.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    run_yaml = fold / "supervisor" / "run.yaml"
    doc = yaml.safe_load(run_yaml.read_text())
    assert doc["nnunet"]["trainer"] == SHORT and doc["nnunet"]["extra_args"] == ["--npz"]
    assert str(run_yaml) in log.read_text()
    launches = [e for e in read_events(fold / "supervisor" / "events.jsonl") if e["event"] == "launch"]
    assert len(launches) == 2 and "--c" in launches[1]["argv"] and "--npz" in launches[1]["argv"]
    assert (fold / "checkpoint_final.pth").is_file() and list((fold / "validation").glob("*.npz"))
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(run_yaml), "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "finished", status.stdout
