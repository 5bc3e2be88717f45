"""An experiment file over a made-up dataset (its plans with all four configurations), for the experiment tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PLANS = {"configurations": {
    "2d": {"data_identifier": "nnUNetPlans_2d"},
    "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"},
    "3d_lowres": {"data_identifier": "nnUNetPlans_3d_lowres", "next_stage": "3d_cascade_fullres"},
    "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
}}


def experiment(tmp_path: Path, data: tuple[str, ...] = ("2d", "3d_fullres", "3d_lowres"),
               **sections: Any) -> Path:
    pre = tmp_path / "pre" / "Dataset977_Thing"
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    for name in data:
        (pre / f"nnUNetPlans_{name}").mkdir(exist_ok=True)
    doc: dict[str, Any] = {"experiment": {}, "nnunet": {"dataset": 977, "device": "cpu"},
                           "paths": {"nnUNet_preprocessed": str(tmp_path / "pre"),
                                     "nnUNet_results": str(tmp_path / "r")}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def two_plans(tmp_path: Path) -> Path:
    """A study of nnUNetPlans (the four configurations) and nnUNetResEncUNetMPlans, whose plans have 2d only."""
    path = experiment(tmp_path, experiment={"plans": ["nnUNetPlans", "nnUNetResEncUNetMPlans"], "folds": [0]})
    pre = tmp_path / "pre" / "Dataset977_Thing"
    (pre / "nnUNetResEncUNetMPlans.json").write_text(json.dumps({"configurations": {
        "2d": {"data_identifier": "nnUNetResEncUNetMPlans_2d"}}}))
    (pre / "nnUNetResEncUNetMPlans_2d").mkdir()
    return path
