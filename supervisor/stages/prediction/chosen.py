"""What nnUNetv2_find_best_configuration chose, from its inference_information.json (nnU-Net 2.8's keys): the
model or the two models of an ensemble, the folds, the postprocessing file and a plans file for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from supervisor.errors import ConfigError
from supervisor.fileread import read_bytes

Fold = Union[int, Literal["all"]]


@dataclass(frozen=True, order=True)
class Model:
    """One trained model: nnU-Net's trainer, plans and configuration."""

    trainer: str
    plans: str
    configuration: str

    @property
    def name(self) -> str:
        """nnU-Net's own folder name for it under nnUNet_results/<dataset>/."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


@dataclass(frozen=True)
class Chosen:
    """find_best's choice: predict with each model, ensemble them when there are two, then postprocess."""

    models: tuple[Model, ...]
    folds: tuple[Fold, ...]
    postprocessing_file: Path
    plans_file: Path

    @property
    def ensemble(self) -> bool:
        return len(self.models) > 1


def read_chosen(path: Path) -> Chosen:
    """Parse inference_information.json; ConfigError names what is missing or wrong (a file damaged, or written by
    another nnU-Net version)."""
    try:
        doc = json.loads(read_bytes(path, 16 << 20, "inference_information.json"))
    except FileNotFoundError:
        raise ConfigError([f"{path} is missing: nnUNetv2_find_best_configuration has not run (the experiment runs it "
                           "once every fold finished)"]) from None
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{path} cannot be read ({exc}); run the experiment again: find_best writes it anew"]) \
            from None
    problems: list[str] = []
    best: Any = doc.get("best_model_or_ensemble") if isinstance(doc, dict) else None
    if not isinstance(best, dict):
        raise ConfigError([f"{path}: no best_model_or_ensemble object (not written by nnU-Net 2's find_best?)"])
    models = []
    listed = best.get("selected_model_or_models")
    if listed is not None and not isinstance(listed, list):
        problems.append(f"{path}: selected_model_or_models holds {listed!r}, not a list")
    for i, m in enumerate(listed if isinstance(listed, list) else []):
        fields = [m.get(k) if isinstance(m, dict) else None for k in ("trainer", "plans_identifier", "configuration")]
        names = [f for f in fields if isinstance(f, str) and f and "/" not in f]
        if len(names) == 3:
            models.append(Model(*names))
        else:
            problems.append(f"{path}: selected_model_or_models[{i}] needs trainer, plans_identifier, configuration")
    if not models and not problems:
        problems.append(f"{path}: selected_model_or_models is empty")
    folds: list[Fold] = []
    given = doc.get("folds")
    if given is not None and not isinstance(given, list):
        problems.append(f"{path}: folds holds {given!r}, not a list")
    for f in given if isinstance(given, list) else []:
        if isinstance(f, int) and not isinstance(f, bool) and f >= 0:
            folds.append(f)
        elif f == "all":
            folds.append("all")
        else:
            problems.append(f"{path}: folds holds {f!r}, not a fold")
    if not folds and (given is None or isinstance(given, list)):
        problems.append(f"{path}: no folds")
    files = {}
    for key in ("postprocessing_file", "some_plans_file"):
        value = best.get(key)
        if isinstance(value, str) and value:
            files[key] = Path(value)
        else:
            problems.append(f"{path}: best_model_or_ensemble.{key} is missing")
    if problems:
        raise ConfigError(problems)
    return Chosen(tuple(models), tuple(folds), files["postprocessing_file"], files["some_plans_file"])
