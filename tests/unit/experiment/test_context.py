"""An experiment file: strict validation, each cell's run.yaml, configurations from the plans in training order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.context import RunContext
from supervisor.errors import ConfigError
from supervisor.experiment.context import Cell, ExperimentContext, plans_configurations
from tests.unit.experiment.conftest import PLANS, experiment


def test_by_default_every_preprocessed_configuration_in_training_order_with_the_cascade_after_lowres(
        tmp_path: Path) -> None:
    exp = ExperimentContext.load(experiment(tmp_path))
    assert exp.configurations == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    assert exp.waits_for == {"3d_cascade_fullres": "3d_lowres"}
    assert len(exp.cells) == 20 and exp.cells[0] == Cell("2d", 0)
    assert exp.data_identifiers["3d_cascade_fullres"] == "nnUNetPlans_3d_fullres"  # inherited
    assert exp.layout.root == tmp_path / "r" / "Dataset977_Thing" / "nnunet-supervise__exp"


def test_a_configuration_without_its_data_is_left_out_by_default(tmp_path: Path) -> None:
    exp = ExperimentContext.load(experiment(tmp_path, data=("2d",)))
    assert exp.configurations == ["2d"]


def test_listed_configurations_and_folds(tmp_path: Path) -> None:
    path = experiment(tmp_path, experiment={"configurations": ["3d_fullres", "2d"], "folds": [0, 3]})
    exp = ExperimentContext.load(path)
    assert exp.cells == [Cell("2d", 0), Cell("2d", 3), Cell("3d_fullres", 0), Cell("3d_fullres", 3)]


def test_an_unknown_configuration_is_named_with_what_is_available(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentContext.load(experiment(tmp_path, experiment={"configurations": ["3d_fulres"]}))
    assert info.value.problems == ["experiment.configurations: 3d_fulres not in nnUNetPlans.json; available: 2d, "
                                   "3d_fullres, 3d_lowres, 3d_cascade_fullres"]


@pytest.mark.parametrize(("section", "problem"), [
    ({"experiment": {"folds": []}}, "experiment.folds: got []"),
    ({"experiment": {"folds": [0, 0]}}, "a list of distinct folds"),
    ({"experiment": {"devices": {"per_gpu": 0}}}, "experiment.devices.per_gpu: got 0"),
    ({"experiment": {"devices": {"gpus": ["x"]}}}, "experiment.devices.gpus: got ['x']"),
    ({"experiment": {"devices": {"slotz": 2}}}, "experiment.devices.slotz: unknown key (did you mean 'slots'?)"),
    ({"nnunet": {"configuration": "2d"}}, "nnunet.configuration: not in an experiment file; list them under "
                                          "experiment.configurations"),
])
def test_bad_experiment_files_are_refused_naming_the_key(tmp_path: Path, section: dict[str, Any],
                                                         problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentContext.load(experiment(tmp_path, **section))
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_a_cell_is_a_run_of_its_own_with_npz_and_no_metrics(tmp_path: Path) -> None:
    path = experiment(tmp_path, metrics={"port": 9500}, restart={"max_restarts": 4})
    ctx = RunContext.load(path, "3", "2d")
    assert ctx.config.nnunet.configuration == "2d" and ctx.config.nnunet.fold == 3
    assert ctx.config.nnunet.extra_args == ["--npz"] and ctx.config.restart.max_restarts == 4
    assert ctx.config.metrics.port is None  # the experiment serves the folds' metrics
    assert ctx.layout.fold_dir == tmp_path / "r" / "Dataset977_Thing" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_3"
    with pytest.raises(ConfigError, match="this is an experiment file"):
        RunContext.load(path)


def test_npz_off_is_not_added(tmp_path: Path) -> None:
    ctx = RunContext.load(experiment(tmp_path, experiment={"npz": False}), 0, "2d")
    assert "--npz" not in ctx.config.nnunet.extra_args


def test_inherits_from_is_resolved() -> None:
    merged = plans_configurations(PLANS)
    assert merged["3d_cascade_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert merged["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
