"""Where a real nnU-Net training fails decides how it is resumed: after checkpoint_final.pth only the final validation
is run again (--val), never the training; a resume is checked against the setup its checkpoint was trained with; the
worker counts fit the CPUs this process is really given.

Real nnUNetv2_train on CPU, with nnU-Net's own nnUNetTrainer_warmup (its own load_checkpoint) made short.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.context import RunContext
from tests.conftest import copy_run, events_of, state_of, supervise, wait_for

pytestmark = pytest.mark.integration

TRAINERS = Path(__file__).resolve().parents[1] / "trainers"
DEMO_TRAINERS = Path(__file__).resolve().parents[2] / "supervisor" / "demo" / "trainers"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to give the run only one of them")
def test_killed_in_its_final_validation_a_one_cpu_run_is_sized_resumed_with_val_and_never_retrained(
        write_config: Any, tmp_path: Path) -> None:
    # no worker counts of our own: the supervisor sizes them to the one CPU taskset gives it
    config: Path = write_config(nnunet={"trainer": "nnUNetTrainer_WarmupShort", "trainer_paths": [str(TRAINERS)],
                                        "env": {"SLOW_VALIDATION_S": "8"}})
    ctx = RunContext.load(config)
    final = ctx.layout.checkpoint("checkpoint_final.pth")
    with open(tmp_path / "supervisor.log", "ab") as out:
        sup = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "supervisor", "run", str(config)],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(final.exists, 300, "the training to write checkpoint_final.pth")
        pid = wait_for(lambda: state_of(ctx).get("pid"), 30, "the trainer's pid")
        written = sha(final)
        os.kill(pid, signal.SIGKILL)  # in the final validation: training done, summary.json not yet written
        assert sup.wait(timeout=400) == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    events = events_of(ctx)
    exits = [e for e in events if e["event"] == "exit"]
    launches = [e for e in events if e["event"] == "launch"]
    assert exits[0]["phase"] == "validation" and exits[0]["classification"] == "killed_by_signal"
    # the workers fit the one CPU: nnU-Net would have used both of this machine's CPUs and 8 export processes
    assert launches[0]["sized"] == {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
    # every relaunch runs only the validation: --val, never --c
    for launch in launches[1:]:
        assert launch["validate"] is True and "--val" in launch["argv"] and "--c" not in launch["argv"]
    # nnU-Net's warm-up trainer loads with torch.load's default: torch >= 2.6 refuses the intact checkpoint_final;
    # our verification had loaded it safely, so one remedy lets the trainer load it (not "damaged", not moved away)
    refused = [e for e in exits if e["classification"] == "weights_only_refused"]
    assert refused and refused[0]["cause"] == "weights_only_load" and refused[0]["phase"] == "validation"
    remedy = next(e for e in events if e["event"] == "remedy")
    assert (remedy["variable"], remedy["to"]) == ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert "load_checkpoint()" in refused[0]["summary"] and "nnUNetTrainer_warmup.py" in refused[0]["summary"]
    assert not (ctx.layout.supervisor_dir / "quarantine").exists() or \
        not any((ctx.layout.supervisor_dir / "quarantine").iterdir())
    # nothing trained again: checkpoint_final.pth is the bytes the training wrote, and the validation-only attempts
    # logged no epoch
    assert sha(final) == written and ctx.layout.is_finished()
    later_logs = sorted(ctx.layout.training_logs())[1:]
    assert later_logs and not any(": Epoch " in p.read_text() for p in later_logs)


def test_num_epochs_changed_under_c_stops_before_launching_unless_the_user_means_it(
        interrupted_training: Path, tiny_dataset: tuple[Path, Path], write_config: Any, tmp_path: Path) -> None:
    fold = copy_run(interrupted_training, tmp_path / "results")
    edited = tmp_path / "edited_trainers"
    edited.mkdir()
    source = (DEMO_TRAINERS / "nnUNetTrainer_Demo.py").read_text()
    assert "self.num_epochs = 10" in source
    (edited / "nnUNetTrainer_Demo.py").write_text(source.replace("self.num_epochs = 10", "self.num_epochs = 15"))
    config: Path = write_config(nnunet={"trainer_paths": [str(edited)]})
    ctx = RunContext.load(config)
    assert ctx.layout.fold_dir == fold
    done = subprocess.run([sys.executable, "-m", "supervisor", "run", str(config)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr[-3000:]
    events = events_of(ctx)
    changed = next(e for e in events if e["event"] == "settings_changed")
    assert changed["changes"] == [{"name": "num_epochs", "from": "10", "to": "15"}]
    assert "-pretrained_weights" in changed["advice"] and "num_epochs 10 -> 15" in done.stderr
    assert not any(e["event"] == "launch" for e in events)  # stopped before launching
    assert next(e for e in events if e["event"] == "give_up")["reason"] == "settings_changed"

    # the user means it: the change is recorded and the resume goes on
    config = write_config(nnunet={"trainer_paths": [str(edited)]}, checkpoint={"on_changed_settings": "continue"})
    sup = supervise(config)
    try:
        wait_for(lambda: any(e["event"] == "launch" for e in events_of(ctx)), 180, "the resume to launch")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=120) == 75
    finally:
        if sup.poll() is None:
            sup.kill()
    continued = [e for e in events_of(ctx) if e["event"] == "settings_changed"][-1]
    assert continued["continued"] is True and continued["changes"][0]["to"] == "15"


def test_check_names_a_truncated_preprocessed_case_of_the_real_dataset(tiny_dataset: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    import shutil

    from supervisor.demo.runyaml import write_demo_config

    raw, pre = tiny_dataset
    copy = tmp_path / "pre"
    shutil.copytree(pre, copy)
    case = copy / "Dataset901_Tiny" / "nnUNetPlans_3d_fullres" / "tiny_003.b2nd"
    size = case.stat().st_size
    with open(case, "r+b") as f:
        f.truncate(size - 1000)  # what a preprocessing killed mid-write leaves
    config = write_demo_config(tmp_path / "run.yaml", raw, copy, tmp_path / "results")
    done = subprocess.run([sys.executable, "-m", "supervisor", "check", str(config)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stdout
    fail = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and "preprocessed case tiny_003" in fail[0]
    assert f"is truncated ({size - 1000} of {size} bytes)" in fail[0] and "nnUNetv2_preprocess -d 901" in fail[0]
