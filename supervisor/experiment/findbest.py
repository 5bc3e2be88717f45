"""The experiment's last step: nnUNetv2_find_best_configuration over what it trained, its output kept."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from supervisor.atomic import atomic_copy
from supervisor.experiment.context import ExperimentContext

OUTPUTS = ("inference_instructions.txt", "inference_information.json")


def find_best_argv(exp: ExperimentContext, configurations: list[str]) -> list[str] | None:
    """The command, or None where it cannot run (no numbered fold: fold "all" is not a cross-validation)."""
    folds = [str(f) for f in exp.spec.experiment.folds if f != "all"]
    if not folds:
        return None
    exe = Path(sys.executable).parent / "nnUNetv2_find_best_configuration"
    argv = [str(exe) if exe.is_file() else (shutil.which("nnUNetv2_find_best_configuration")
                                              or "nnUNetv2_find_best_configuration"),
            exp.dataset_name, "-c", *configurations, "-tr", *exp.spec.trainers, "-p", *exp.spec.plans_names,
            "-f", *folds]
    if len(configurations) > 1 and not exp.spec.experiment.npz:
        argv.append("--disable_ensembling")  # ensembling needs the validations' .npz files (--npz)
    return argv


def keep_outputs(exp: ExperimentContext) -> list[Path]:
    """Copy what find_best_configuration wrote under nnUNet_results/<dataset>/ into the experiment's folder."""
    kept = []
    for name in OUTPUTS:
        src = exp.paths.results / exp.dataset_name / name
        if src.is_file():
            dst = exp.layout.root / name
            atomic_copy(src, dst)
            kept.append(dst)
    return kept
