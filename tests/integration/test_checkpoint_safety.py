"""Checkpoint safety on real nnU-Net: damaged latest, newer best, changed architecture."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from supervisor.checkpoints.meta import read_meta
from supervisor.context import RunContext
from supervisor.stages.training.traininglog import read_progress
from tests.conftest import DEMO_TRAINERS, copy_run, events_of, supervise

pytestmark = pytest.mark.integration




def resumed_at(ctx: RunContext) -> int | None:
    logs = ctx.layout.training_logs()
    return read_progress(logs[-1]).first_epoch


def test_truncated_latest_is_quarantined_and_the_run_resumes_from_the_newest_valid(
        write_config: Any, interrupted_training: Path, tmp_path: Path) -> None:
    fold = copy_run(interrupted_training, tmp_path / "results")
    best_epoch = read_meta(fold / "checkpoint_best.pth").current_epoch
    latest = fold / "checkpoint_latest.pth"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3])  # a power cut in the middle of torch.save
    ctx = RunContext.load(write_config())

    sup = supervise(ctx.config_path)
    assert sup.wait(timeout=300) == 0

    events = events_of(ctx)
    corrupt = next(e for e in events if e["event"] == "checkpoint_corrupt")
    assert corrupt["path"] == str(latest) and "zip" in corrupt["reason"]
    quarantined = Path(corrupt["quarantined_to"])
    assert quarantined.read_bytes() == data[: len(data) // 3]  # kept, byte for byte, never deleted
    assert quarantined.with_suffix(".reason.txt").exists()
    verified = next(e for e in events if e["event"] == "checkpoint_verified")
    assert verified["epoch"] == best_epoch
    assert resumed_at(ctx) == best_epoch
    assert ctx.layout.is_finished()


def test_best_newer_than_latest_is_staged_and_resumed(
        write_config: Any, interrupted_training: Path, tmp_path: Path) -> None:
    fold = copy_run(interrupted_training, tmp_path / "results")
    older = (interrupted_training.parent / "latest_epoch4.pth").read_bytes()
    (fold / "checkpoint_latest.pth").write_bytes(older)  # nnU-Net's --c would go back to epoch 4
    best_epoch = read_meta(fold / "checkpoint_best.pth").current_epoch
    assert best_epoch is not None and best_epoch > 4
    ctx = RunContext.load(write_config())

    sup = supervise(ctx.config_path)
    assert sup.wait(timeout=300) == 0
    staged = next(e for e in events_of(ctx) if e["event"] == "checkpoint_staged")
    assert staged["source"].endswith("checkpoint_best.pth") and staged["epoch"] == best_epoch
    assert resumed_at(ctx) == best_epoch
    replaced = list((ctx.layout.supervisor_dir / "replaced").glob("checkpoint_latest*.pth"))
    assert [p.read_bytes() == older for p in replaced] == [True]  # the older latest is kept, not overwritten


CHANGED_TRAINER = textwrap.dedent('''
    import torch
    from torch import nn
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


    class nnUNetTrainer_Demo(nnUNetTrainer):
        """Edited since the checkpoint was written: one more layer in the network."""

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 10
            self.num_iterations_per_epoch = 5
            self.save_every = 2

        @staticmethod
        def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            net = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
            net.extra_head = nn.Conv3d(2, 2, 1)
            return net
''')


def test_changed_architecture_stops_before_launch_with_a_key_by_key_diagnosis(
        write_config: Any, interrupted_training: Path, tmp_path: Path) -> None:
    fold = copy_run(interrupted_training, tmp_path / "results")
    trainers = tmp_path / "edited_trainers"
    trainers.mkdir()
    (trainers / "nnUNetTrainer_Demo.py").write_text(CHANGED_TRAINER)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in fold.glob("*.pth")}
    config = write_config(nnunet={"trainer_paths": [str(trainers)]})
    ctx = RunContext.load(config)

    sup = supervise(config)
    assert sup.wait(timeout=300) == 1
    events = events_of(ctx)
    assert not any(e["event"] == "launch" for e in events)  # diagnosed before any launch
    incompatible = next(e for e in events if e["event"] == "incompatible_checkpoint")
    assert incompatible["missing_keys"] == ["extra_head.bias", "extra_head.weight"]
    assert incompatible["unexpected_keys"] == [] and incompatible["shape_mismatches"] == []
    assert events[-1]["event"] == "give_up" and events[-1]["reason"] == "incompatible_checkpoint"
    log = config.with_suffix(".supervisor.log").read_text()
    assert "extra_head.weight" in log and "untouched" in log
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in fold.glob("*.pth")}

    # The same diagnosis from `verify --against`, as JSON.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "supervisor", "verify", str(fold / "checkpoint_latest.pth"),
                          "--json", "--against", str(config)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["ok"] is False and report["missing_keys"] == ["extra_head.bias", "extra_head.weight"]
    assert report["epoch"] == 6


def test_verify_passes_the_real_checkpoint_against_the_real_trainer(
        write_config: Any, interrupted_training: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "supervisor", "verify",
                          str(interrupted_training / "fold_0" / "checkpoint_latest.pth"),
                          "--against", str(write_config())], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "usable (epoch 6)" in out.stdout and "compatibility ok" in out.stdout
    assert DEMO_TRAINERS.is_dir()


def test_warm_start_when_asked_loads_the_weights_and_starts_over_loudly(
        write_config: Any, interrupted_training: Path, tmp_path: Path) -> None:
    """A layer was removed from the trainer since: with on_incompatible: warm_start, -pretrained_weights and no --c."""
    import torch

    fold = copy_run(interrupted_training, tmp_path / "results")
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):
        ckpt = torch.load(fold / name, weights_only=False)
        ckpt["network_weights"]["retired_head.weight"] = torch.zeros(2, 2, 1, 1, 1)
        torch.save(ckpt, fold / name)
    originals = {p.name: p.read_bytes() for p in fold.glob("*.pth")}
    best_epoch = read_meta(fold / "checkpoint_best.pth").current_epoch
    config = write_config(checkpoint={"on_incompatible": "warm_start"})
    ctx = RunContext.load(config)

    sup = supervise(config)
    assert sup.wait(timeout=300) == 0
    events = events_of(ctx)
    warm = next(e for e in events if e["event"] == "warm_start")
    assert warm["path"].endswith("checkpoint_best.pth") and warm["epoch"] == best_epoch
    assert "start over" in warm["warning"]
    launch = next(e for e in events if e["event"] == "launch")
    assert launch["argv"][-2:] == ["-pretrained_weights", warm["weights"]] and "--c" not in launch["argv"]
    assert "Loading pretrained weights" in ctx.layout.attempt_log(1).read_text()
    assert resumed_at(ctx) == 0  # epoch counter, optimizer and LR schedule started over, as the warning said
    assert ctx.layout.is_finished()
    # Nothing lost: the incompatible checkpoints were moved aside, byte for byte.
    aside = {p.name.split(".")[0]: p.read_bytes() for p in (ctx.layout.supervisor_dir / "replaced").glob("*.pth")}
    assert aside == {"checkpoint_latest": originals["checkpoint_latest.pth"],
                     "checkpoint_best": originals["checkpoint_best.pth"]}
    assert "WARNING" in config.with_suffix(".supervisor.log").read_text()
