"""`nnunet-supervise train DATASET CONFIGURATION FOLD [nnUNetv2_train's own options]`: the command nnU-Net users
already type, mapped onto a run.yaml (contract: "Meeting users' habits").

Every option of nnUNetv2_train (2.8's parser) has a place here (NNUNET_OPTIONS); a new one nnU-Net adds shows up
as a failing test (tests/unit/test_trainargs.py reads nnU-Net's own parser), never as a silent pass-through:

    -tr, -p, -device, -num_gpus    nnunet.trainer, .plans, .device, .num_gpus
    -pretrained_weights W          nnunet.pretrained_weights: the first launch only (while the fold has no
                                   checkpoint), as nnU-Net uses it; every relaunch after that resumes with --c
    --npz, --val_best,             nnunet.extra_args, as they are
    --disable_checkpointing
    --c                            accepted and left to the supervisor (it resumes whenever there is a checkpoint)
    --val                          a validation-only run: the training must have finished (checkpoint_final.pth);
                                   the supervisor then runs only the final validation

and a few of ours (OUR_OPTIONS). Pure: argv in, a run.yaml document and notes out; the CLI writes and runs it.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# nnUNetv2_train's options (nnunetv2/run/run_training.py, run_training_entry) and what we do with each
NNUNET_OPTIONS = {"-tr": "nnunet.trainer", "-p": "nnunet.plans", "-pretrained_weights": "nnunet.pretrained_weights",
                  "-num_gpus": "nnunet.num_gpus", "--npz": "nnunet.extra_args", "--c": "the supervisor's",
                  "--val": "a validation-only run", "--val_best": "nnunet.extra_args",
                  "--disable_checkpointing": "nnunet.extra_args", "-device": "nnunet.device"}
OUR_OPTIONS = {"--cooperative": "cooperative.enabled: true (saves at the next step on a stop, atomic saves)",
               "--max-restarts": "restart.max_restarts", "--write-only": "write the run.yaml, do not run it",
               "-v": "debug logging"}


class TrainArgsError(ValueError):
    """What was wrong with the command line, and what is allowed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never exit, never print usage: the CLI says it in one place
        raise TrainArgsError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnunet-supervise train", add_help=False, allow_abbrev=False)
    p.add_argument("dataset_name_or_id")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-tr", default="nnUNetTrainer")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-pretrained_weights", default=None)
    p.add_argument("-num_gpus", type=int, default=1)
    p.add_argument("--npz", action="store_true")
    p.add_argument("--c", action="store_true")
    p.add_argument("--val", action="store_true")
    p.add_argument("--val_best", action="store_true")
    p.add_argument("--disable_checkpointing", action="store_true")
    p.add_argument("-device", default="cuda")
    p.add_argument("--cooperative", action="store_true")
    p.add_argument("--max-restarts", type=int, default=None, dest="max_restarts")
    p.add_argument("--write-only", action="store_true", dest="write_only")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@dataclass
class TrainRequest:
    doc: dict[str, Any]  # the run.yaml's sections (paths added by the CLI)
    validate_only: bool
    write_only: bool
    verbose: bool
    notes: list[str] = field(default_factory=list)  # what the user should know about the mapping
    argv: list[str] = field(default_factory=list)


def allowed() -> str:
    theirs = ", ".join(f"{k} ({v})" for k, v in NNUNET_OPTIONS.items())
    ours = ", ".join(f"{k} ({v})" for k, v in OUR_OPTIONS.items())
    return f"nnUNetv2_train's options: {theirs}; ours: {ours}"


def parse(argv: list[str], base: Path) -> TrainRequest:
    """TrainArgsError names what is wrong (an unknown option beside nnU-Net's own list)."""
    try:
        a, unknown = parser().parse_known_args(argv)
    except TrainArgsError as exc:
        raise TrainArgsError(f"{exc}. Usage: nnunet-supervise train DATASET CONFIGURATION FOLD [options]; "
                             f"{allowed()}") from None
    if unknown:
        raise TrainArgsError(f"not an option of nnUNetv2_train or ours: {' '.join(unknown)}. {allowed()}")
    fold: int | str = int(a.fold) if a.fold.isdigit() else a.fold
    if fold != "all" and not isinstance(fold, int):
        raise TrainArgsError(f"FOLD {a.fold!r}: a fold number 0, 1, 2, ... or all")
    dataset: int | str = int(a.dataset_name_or_id) if a.dataset_name_or_id.isdigit() else a.dataset_name_or_id
    extra = [flag for flag, on in (("--npz", a.npz), ("--val_best", a.val_best),
                                   ("--disable_checkpointing", a.disable_checkpointing)) if on]
    nn: dict[str, Any] = {"dataset": dataset, "configuration": a.configuration, "fold": fold, "trainer": a.tr,
                          "plans": a.p, "device": a.device}
    if a.num_gpus != 1:
        nn["num_gpus"] = a.num_gpus
    if extra:
        nn["extra_args"] = extra
    notes = []
    if a.pretrained_weights is not None:
        nn["pretrained_weights"] = str((base / a.pretrained_weights).resolve())
        notes.append("-pretrained_weights is used for the first launch only (while the fold has no checkpoint); "
                     "every relaunch resumes from the fold's own checkpoint with --c")
    if a.c:
        notes.append("--c is the supervisor's: it resumes with --c whenever the fold has a verified checkpoint")
    if a.disable_checkpointing:
        notes.append("--disable_checkpointing: nnU-Net writes no checkpoint, so a crash can only start over")
    if a.val and a.pretrained_weights is not None:
        raise TrainArgsError("--val with -pretrained_weights: a validation-only run trains nothing")
    doc: dict[str, Any] = {"nnunet": nn}
    if a.cooperative:
        doc["cooperative"] = {"enabled": True}
    if a.max_restarts is not None:
        if a.max_restarts < 0:
            raise TrainArgsError("--max-restarts: 0 or more")
        doc["restart"] = {"max_restarts": a.max_restarts}
    return TrainRequest(doc, a.val, a.write_only, a.verbose, notes, list(argv))


def header(argv: list[str], when: str) -> str:
    """The comment on top of the written run.yaml: where it came from and what to do with it."""
    return (f"# Written by `nnunet-supervise train {shlex.join(argv)}` on {when}.\n"
            "# The supervised form of that nnUNetv2_train command: run it again with `nnunet-supervise run THIS_FILE`\n"
            "# (or the same train command); `status`, `stop`, `report`, `systemd`, `slurm` take this file.\n"
            "# Every key: `nnunet-supervise schema`; the README's config reference.\n")
