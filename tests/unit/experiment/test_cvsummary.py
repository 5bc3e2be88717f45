"""The cross-validation summary: mean foreground Dice per trainer x plans x configuration from the folds'
validation/summary.json, so far or final, nnU-Net's pooled number and find_best's choice beside it; in `status`
(table and JSON) and `report`; a single fold's own Dice in its `status`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from supervisor.experiment import cvsummary, view
from supervisor.experiment.context import ExperimentContext
from supervisor.observe.status import gather, read_validation, text
from tests.unit.experiment.conftest import experiment


def summary_doc(dice: float, labels: dict[str, float] | None = None, cases: int = 3) -> dict[str, Any]:
    """validation/summary.json as nnU-Net's compute_metrics_on_folder writes it (the keys we read, and more)."""
    labels = labels or {"1": dice}
    metrics = {k: {"Dice": d, "IoU": d / (2 - d), "FN": 1, "FP": 2, "TP": 30, "TN": 900, "n_pred": 32, "n_ref": 31}
               for k, d in labels.items()}
    return {"foreground_mean": {"Dice": dice, "IoU": dice / (2 - dice)}, "mean": metrics,
            "metric_per_case": [{"metrics": metrics, "prediction_file": f"/p/case_{i}.nii.gz",
                                 "reference_file": f"/r/case_{i}.nii.gz"} for i in range(cases)]}


def write_summary(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, sort_keys=True))
    return path


def fold_summary(exp: ExperimentContext, configuration: str, fold: int, doc: Any,
                 trainer: str | None = None) -> Path:
    cell = next(c for c in exp.cells if (c.configuration, c.fold) == (configuration, fold)
                and (trainer is None or c.trainer == trainer))
    return write_summary(exp.fold_layout(cell).fold_dir / "validation" / "summary.json", doc)


def two_by_three(tmp_path: Path) -> ExperimentContext:
    return ExperimentContext.load(experiment(tmp_path, experiment={"configurations": ["2d", "3d_fullres"],
                                                                   "folds": [0, 1, 2]}))


def test_nothing_before_a_fold_finished(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    cv = cvsummary.summary(exp)
    assert [m["folds_finished"] for m in cv["models"]] == [0, 0] and cv["best"] is None
    assert cvsummary.lines(cv) == []
    assert "cross-validation" not in view.table(view.status(exp))


def test_so_far_then_final_with_per_fold_and_per_label_means(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    model = tmp_path / "r" / "Dataset977_Thing" / "nnUNetTrainer__nnUNetPlans__2d"
    model.mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    fold_summary(exp, "2d", 0, summary_doc(0.8, {"1": 0.9, "2": 0.7}))
    fold_summary(exp, "2d", 1, summary_doc(0.6, {"1": 0.8, "2": 0.4}))
    fold_summary(exp, "3d_fullres", 0, summary_doc(0.75))
    cv = cvsummary.summary(exp)
    two_d, three_d = cv["models"]
    assert (two_d["folds_finished"], two_d["folds_total"], two_d["final"]) == (2, 3, False)
    assert three_d["mean_dice"] == 0.75
    assert abs(two_d["mean_dice"] - 0.7) < 1e-9
    assert [(f["fold"], f["state"], f["dice"]) for f in two_d["folds"]] == [(0, "done", 0.8), (1, "done", 0.6),
                                                                            (2, "missing", None)]
    assert two_d["labels"] == {"1": {"name": "liver", "dice": 0.85}, "2": {"name": "tumour", "dice": 0.55}}
    assert cv["best"] == "nnUNetTrainer__nnUNetPlans__3d_fullres" and cv["best_by"] == "mean over finished folds"
    block = cvsummary.lines(cv)
    assert block[0] == cvsummary.HEADER
    assert block[1].split() == ["2d", "0.7000", "so", "far", "(2", "of", "3", "folds)", "folds", "0.8000", "0.6000",
                                "-", "labels", "liver", "0.8500,", "tumour", "0.5500"]
    assert block[2].startswith("* 3d_fullres") and "so far (1 of 3 folds)" in block[2]
    fold_summary(exp, "2d", 2, summary_doc(0.7, {"1": 0.8, "2": 0.6}))
    two_d = cvsummary.summary(exp)["models"][0]
    assert two_d["final"] and two_d["folds_finished"] == 3 and abs(two_d["mean_dice"] - 0.7) < 1e-9
    assert " final " in cvsummary.lines(cvsummary.summary(exp))[1]


def test_a_torn_or_wrong_typed_summary_is_unreadable_for_its_fold_never_a_traceback(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    fold_summary(exp, "2d", 0, summary_doc(0.8))
    fold_summary(exp, "2d", 1, json.dumps(summary_doc(0.8))[:50])  # torn mid-write
    fold_summary(exp, "2d", 2, {"foreground_mean": {"Dice": "0.9"}, "mean": []})
    fold_summary(exp, "3d_fullres", 0, [1, 2])
    fold_summary(exp, "3d_fullres", 1, {"foreground_mean": {"Dice": float("nan")}})  # nnU-Net's own: not damage
    d = exp.fold_layout(exp.cells[5]).fold_dir / "validation" / "summary.json"
    d.mkdir(parents=True)  # a directory where the file should be
    cv = cvsummary.summary(exp)
    two_d, three_d = cv["models"]
    assert [f["state"] for f in two_d["folds"]] == ["done", "unreadable", "unreadable"]
    assert (two_d["folds_finished"], two_d["folds_unreadable"], two_d["mean_dice"]) == (1, 2, 0.8)
    assert "'0.9', not a number" in two_d["folds"][2]["problem"]
    assert [f["state"] for f in three_d["folds"]] == ["unreadable", "done", "unreadable"]
    assert three_d["mean_dice"] is None and "NaN" in three_d["folds"][1]["note"]
    block = cvsummary.lines(cv)
    assert "folds 0.8000 ? ?" in block[1] and block[2].split()[:2] == ["3d_fullres", "-"]
    assert "folds ? NaN ?" in block[2]
    assert sum("validation summary unreadable" in line for line in block) == 4
    assert cv["best"] == "nnUNetTrainer__nnUNetPlans__2d"


def test_nnunets_pooled_number_and_find_best_s_choice_mark_the_best(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    for f, d in enumerate((0.9, 0.7, 0.8)):
        fold_summary(exp, "2d", f, summary_doc(d))
    for f, d in enumerate((0.82, 0.84, 0.83)):
        fold_summary(exp, "3d_fullres", f, summary_doc(d))
    base = tmp_path / "r" / "Dataset977_Thing"
    for conf, pooled in (("2d", 0.85), ("3d_fullres", 0.83)):
        write_summary(base / f"nnUNetTrainer__nnUNetPlans__{conf}" / "crossval_results_folds_0_1_2" / "summary.json",
                      summary_doc(pooled, cases=9))
    cv = cvsummary.summary(exp)
    assert [m["nnunet_dice"] for m in cv["models"]] == [0.85, 0.83]
    assert all(m["nnunet_current"] for m in cv["models"])
    assert cv["best"] == "nnUNetTrainer__nnUNetPlans__3d_fullres"  # no find_best yet: by the mean over folds
    info = {"folds": [0, 1, 2], "dataset_name_or_id": "Dataset977_Thing", "ensembling_allowed": True,
            "considered_models": [{"trainer": "nnUNetTrainer", "plans": "nnUNetPlans", "configuration": c}
                                  for c in ("2d", "3d_fullres")],
            "all_results": {"nnUNetTrainer__nnUNetPlans__2d": 0.85, "nnUNetTrainer__nnUNetPlans__3d_fullres": 0.83},
            "best_model_or_ensemble": {"result_on_crossval_pre_pp": 0.85, "result_on_crossval_post_pp": 0.86,
                                       "postprocessing_file": "/x/postprocessing.pkl", "some_plans_file": "/x/p.json",
                                       "selected_model_or_models": [{"configuration": "2d", "trainer": "nnUNetTrainer",
                                                                     "plans_identifier": "nnUNetPlans"}]}}
    write_summary(exp.layout.root / "inference_information.json", info)
    cv = cvsummary.summary(exp)
    assert cv["best"] == "nnUNetTrainer__nnUNetPlans__2d" and cv["best_by"] == "find_best"
    assert cv["chosen"]["current"] and cv["chosen"]["dice_postprocessed"] == 0.86
    block = cvsummary.lines(cv)
    assert block[1].startswith("* 2d") and "nnU-Net 0.8500" in block[1] and " final " in block[1]
    assert block[-1] == ("  find_best chose nnUNetTrainer__nnUNetPlans__2d: nnU-Net's cross-validation Dice 0.8500 "
                         "(0.8600 postprocessed)")
    # an ensemble chosen: both of its members are marked, and `best` names the ensemble
    both = [{"configuration": c, "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"}
            for c in ("2d", "3d_fullres")]
    chose_both = {**info["best_model_or_ensemble"], "selected_model_or_models": both}
    write_summary(exp.layout.root / "inference_information.json", {**info, "best_model_or_ensemble": chose_both})
    ens = cvsummary.summary(exp)
    assert [m["best"] for m in ens["models"]] == [True, True]
    assert ens["best"] == "ensemble of nnUNetTrainer__nnUNetPlans__2d + nnUNetTrainer__nnUNetPlans__3d_fullres"
    write_summary(exp.layout.root / "inference_information.json", info)
    # a fold retrained since: nnU-Net's numbers are old, and the choice no longer decides what is best
    later = fold_summary(exp, "3d_fullres", 2, summary_doc(0.95))
    os.utime(later, (os.path.getmtime(later) + 60,) * 2)
    cv = cvsummary.summary(exp)
    assert not cv["chosen"]["current"] and not cv["models"][1]["nnunet_current"]
    assert cv["best"] == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    block = cvsummary.lines(cv)
    assert "(older than a fold)" in block[2] and "find_best runs again" in block[-1]


def test_a_study_names_each_trainer_and_plans_and_status_json_has_it(tmp_path: Path) -> None:
    exp = ExperimentContext.load(experiment(tmp_path, experiment={
        "trainers": ["nnUNetTrainer", "nnUNetTrainer_Short"], "configurations": ["2d"], "folds": [0, 1, "all"]}))
    fold_summary(exp, "2d", 0, summary_doc(0.5), trainer="nnUNetTrainer_Short")
    info = view.status(exp)
    cv = json.loads(json.dumps(info["cross_validation"]))  # what `status --json` prints
    assert [(m["name"], m["folds_total"], m["folds_finished"]) for m in cv["models"]] == [
        ("nnUNetTrainer__nnUNetPlans/2d", 2, 0), ("nnUNetTrainer_Short__nnUNetPlans/2d", 2, 1)]  # fold all: no CV
    table = view.table(info).splitlines()
    at = table.index(cvsummary.HEADER)
    assert table[at + 2].startswith("* nnUNetTrainer_Short__nnUNetPlans/2d  0.5000  so far (1 of 2 folds)")
    numbers = view.report(exp)
    assert numbers["cross_validation"]["best"] == "nnUNetTrainer_Short__nnUNetPlans__2d"
    assert view.report_lines(numbers)[0] == cvsummary.HEADER


def test_a_single_runs_status_shows_its_validation_dice(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    layout = exp.fold_layout(exp.cells[0])
    assert gather(layout, False)["validation"] is None
    assert read_validation(layout.fold_dir / "validation" / "summary.json").state == "missing"
    fold_summary(exp, "2d", 0, summary_doc(0.8123, {"1": 0.9, "2": 0.7246}, cases=4))
    info = gather(layout, False)
    assert info["validation"]["dice"] == 0.8123 and info["validation"]["cases"] == 4
    assert "validation mean foreground Dice 0.8123 over 4 cases (per label: 1 0.9000, 2 0.7246)" in text(info, "x")
    assert "validation" not in gather(layout, False, validation=False)


def test_a_fold_whose_dice_nnunet_wrote_as_nan_counts_as_finished_and_is_left_out_of_the_mean(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    fold_summary(exp, "2d", 0, summary_doc(0.8))
    fold_summary(exp, "2d", 1, {"foreground_mean": {"Dice": float("nan")}, "mean": {}, "metric_per_case": []})
    fold_summary(exp, "2d", 2, summary_doc(0.6))
    two_d = cvsummary.summary(exp)["models"][0]
    assert two_d["final"] and two_d["folds_finished"] == 3 and abs(two_d["mean_dice"] - 0.7) < 1e-9


def test_a_damaged_choice_list_is_no_choice_never_a_traceback(tmp_path: Path) -> None:
    exp = two_by_three(tmp_path)
    fold_summary(exp, "2d", 0, summary_doc(0.8))
    exp.layout.root.mkdir(parents=True, exist_ok=True)
    (exp.layout.root / "inference_information.json").write_text(
        json.dumps({"best_model_or_ensemble": {"selected_model_or_models": 5}}))
    cv = cvsummary.summary(exp)
    assert cv["chosen"]["models"] == [] and cv["best"] == "nnUNetTrainer__nnUNetPlans__2d"
