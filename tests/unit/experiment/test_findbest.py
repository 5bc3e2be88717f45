"""find_best_done: an experiment restarted after every fold finished does not run find_best again (minutes on a real
dataset) when the choice it kept was made after the last fold, over the same models and folds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.findbest import INFORMATION, find_best_done, trained_ts
from tests.unit.experiment.conftest import experiment, two_plans


def information(exp: ExperimentContext, configurations: list[str] | None = None) -> dict[str, Any]:
    """What nnUNetv2_find_best_configuration records of what it considered (nnunetv2 2.8's return_dict keys)."""
    configs = exp.configurations if configurations is None else configurations
    return {"folds": [int(f) for f in exp.spec.experiment.folds if f != "all"], "dataset_name_or_id": exp.dataset_name,
            "considered_models": [{"plans": p, "configuration": c, "trainer": t}
                                  for p in exp.spec.plans_names for c in configs for t in exp.spec.trainers],
            "ensembling_allowed": True, "all_results": {}, "best_model_or_ensemble": {}}


def finished(tmp_path: Path, **experiment_section: Any) -> ExperimentContext:
    exp = ExperimentContext.load(experiment(tmp_path, experiment={"configurations": ["2d"], "folds": [0, 1],
                                                                  **experiment_section}))
    for cell in exp.cells:
        summary = exp.fold_layout(cell).fold_dir / "validation" / "summary.json"
        summary.parent.mkdir(parents=True)
        summary.write_text("{}")
        os.utime(summary, (1000, 1000))
    return exp


def keep(exp: ExperimentContext, info: Any, ts: float = 2000) -> None:
    path = exp.layout.root / INFORMATION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info if isinstance(info, str) else json.dumps(info))
    os.utime(path, (ts, ts))


def test_a_kept_choice_newer_than_every_fold_over_the_same_models_is_done(tmp_path: Path) -> None:
    exp = finished(tmp_path)
    assert trained_ts(exp) == 1000
    assert not find_best_done(exp)  # nothing kept
    keep(exp, information(exp))
    assert find_best_done(exp)
    keep(exp, information(exp), ts=500)  # an earlier find_best's, before these folds finished
    assert not find_best_done(exp)


def test_a_choice_over_other_models_or_folds_is_not_this_experiments(tmp_path: Path) -> None:
    exp = finished(tmp_path)
    other_models = information(exp, ["2d", "3d_fullres"])
    keep(exp, other_models)
    assert not find_best_done(exp)
    other_folds = {**information(exp), "folds": [0, 1, 2]}
    keep(exp, other_folds)
    assert not find_best_done(exp)
    no_ensembling = {**information(exp), "ensembling_allowed": False}  # this argv does not disable it: one config
    keep(exp, no_ensembling)
    assert not find_best_done(exp)


def test_a_damaged_kept_choice_is_not_done_and_never_raises(tmp_path: Path) -> None:
    exp = finished(tmp_path)
    for damaged in ('{"folds": [0, 1], "considered_mod', "[]", '{"considered_models": "2d"}', "\udcff"[:0] + "\x00"):
        keep(exp, damaged)
        assert not find_best_done(exp)
    (exp.layout.root / INFORMATION).write_bytes(b"\xff\xfe\x00")
    assert not find_best_done(exp)


def test_a_study_whose_plans_have_other_configurations_is_compared_on_what_nnunet_considered(tmp_path: Path) -> None:
    """nnU-Net's filter_available_models drops a configuration a plans file lacks: that model is not asked for."""
    exp = ExperimentContext.load(two_plans(tmp_path))
    for cell in exp.cells:
        summary = exp.fold_layout(cell).fold_dir / "validation" / "summary.json"
        summary.parent.mkdir(parents=True)
        summary.write_text("{}")
        os.utime(summary, (1000, 1000))
    considered = [{"plans": st.plans, "configuration": c, "trainer": st.trainer}
                  for st in exp.studies for c in st.configurations]
    keep(exp, {"folds": [0], "considered_models": considered, "ensembling_allowed": True})
    assert find_best_done(exp)
    every = [{"plans": p, "configuration": c, "trainer": "nnUNetTrainer"}
             for p in exp.spec.plans_names for c in exp.configurations]  # one model nnU-Net could never consider
    keep(exp, {"folds": [0], "considered_models": every, "ensembling_allowed": True})
    assert not find_best_done(exp)


def test_one_configuration_of_two_trainers_without_npz_disables_ensembling(tmp_path: Path) -> None:
    from supervisor.experiment.findbest import find_best_argv

    exp = finished(tmp_path, trainers=["nnUNetTrainer", "nnUNetTrainer_Short"], npz=False)
    argv = find_best_argv(exp, exp.configurations)
    assert argv is not None and "--disable_ensembling" in argv  # two models: find_best would ensemble their .npz
    single = finished(tmp_path / "one", npz=False)
    argv = find_best_argv(single, single.configurations)
    assert argv is not None and "--disable_ensembling" not in argv  # one model: nothing to ensemble
