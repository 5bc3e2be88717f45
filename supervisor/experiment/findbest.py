"""The experiment's last step: nnUNetv2_find_best_configuration over what it trained, its output kept."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from supervisor.atomic import atomic_copy
from supervisor.experiment.context import ExperimentContext
from supervisor.fileread import read_bytes

OUTPUTS = ("inference_instructions.txt", "inference_information.json")
INFORMATION = OUTPUTS[-1]  # inference_information.json: what find_best chose, kept in the experiment's folder


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
    if not ensembling_allowed(exp, configurations):
        argv.append("--disable_ensembling")  # ensembling needs the validations' .npz files (--npz)
    return argv


def models(exp: ExperimentContext, configurations: list[str]) -> set[tuple[str, str, str]]:
    """(trainer, plans, configuration) that find_best considers: of every trainer x plans, the configurations its
    plans have (nnU-Net's filter_available_models drops the others, e.g. a 3d_lowres one plans file lacks)."""
    return {(st.trainer, st.plans, c) for st in exp.studies for c in configurations if c in st.configurations}


def ensembling_allowed(exp: ExperimentContext, configurations: list[str]) -> bool:
    """find_best ensembles pairs of models (two configurations, or one configuration of two trainers or plans) from
    the validations' .npz files, which only --npz writes."""
    return exp.spec.experiment.npz or len(models(exp, configurations)) < 2


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


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def trained_ts(exp: ExperimentContext) -> float:
    """When the newest fold finished (its validation summary written): what find_best and the parts come after."""
    return max((mtime(exp.fold_layout(c).fold_dir / "validation" / "summary.json") or 0.0 for c in exp.cells),
               default=0.0)


def _made_for(info: Any, exp: ExperimentContext, configurations: list[str]) -> bool:
    """The kept choice was made over exactly these models and folds, as find_best_argv would ask for them now
    (nnU-Net records them: considered_models, folds, ensembling_allowed)."""
    if not isinstance(info, dict):
        return False
    recorded_models = info.get("considered_models")
    if not isinstance(recorded_models, list) or not all(isinstance(m, dict) for m in recorded_models):
        return False
    considered = {(m.get("trainer"), m.get("plans"), m.get("configuration")) for m in recorded_models}
    folds = [int(f) for f in exp.spec.experiment.folds if f != "all"]
    recorded = info.get("folds")
    same_folds = isinstance(recorded, list) and sorted(str(f) for f in recorded) == sorted(str(f) for f in folds)
    return considered == models(exp, configurations) and same_folds \
        and info.get("ensembling_allowed") is ensembling_allowed(exp, configurations)


def find_best_done(exp: ExperimentContext, configurations: list[str] | None = None) -> bool:
    """find_best's choice is kept in the experiment's folder, newer than every fold, and made over this
    experiment's trainers, plans, configurations and folds: running it again would choose the same (and take
    minutes on a real dataset). An unreadable kept file is not done: find_best runs again and rewrites it."""
    path = exp.layout.root / INFORMATION
    kept = mtime(path)
    if kept is None or kept < trained_ts(exp):
        return False
    try:
        info = json.loads(read_bytes(path, 16 << 20, INFORMATION))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return False
    return _made_for(info, exp, exp.configurations if configurations is None else configurations)
