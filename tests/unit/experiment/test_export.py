"""`export EXPERIMENT -o model.zip`: find_best's choice packed by nnU-Net's own nnUNetv2_export_model_to_zip, run
for real over a results folder shaped as training and find_best leave it (the exporter only zips files); refusals
before it runs; the zip verified before it takes the output's name."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from supervisor.experiment import export
from supervisor.experiment.context import ExperimentContext
from tests.unit.experiment.conftest import experiment
from tests.unit.experiment.test_cvsummary import summary_doc, write_summary

DATASET = "Dataset977_Thing"


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small real torch checkpoint (the structural check reads its zip, data.pkl and storages)."""
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("ckpt") / "c.pth"
    torch.save({"network_weights": {"w": torch.arange(64, dtype=torch.float32)}, "current_epoch": 5,
                "trainer_name": "nnUNetTrainer"}, path)
    return path.read_bytes()


def trained(tmp_path: Path, ckpt: bytes, models: list[tuple[str, str]], chosen: list[tuple[str, str]],
            folds: tuple[int, ...] = (0, 1), **ex: Any) -> ExperimentContext:
    """The experiment's folds trained and validated, find_best run (its choice: `chosen`, (trainer, configuration)),
    as nnU-Net leaves nnUNet_results."""
    trainers = sorted({t for t, _ in models}, key=[t for t, _ in models].index)
    confs = sorted({c for _, c in models}, key=[c for _, c in models].index)
    exp = ExperimentContext.load(experiment(tmp_path, experiment={"configurations": confs, "folds": list(folds),
                                                                  "trainers": trainers, **ex}))
    base = tmp_path / "r" / DATASET
    fs = "_".join(map(str, folds))
    for trainer, conf in models:
        model = base / f"{trainer}__nnUNetPlans__{conf}"
        for name, doc in (("plans.json", {"plans_name": "nnUNetPlans"}), ("dataset_fingerprint.json", {}),
                          ("dataset.json", {"labels": {"background": 0, "thing": 1}, "file_ending": ".nii.gz"})):
            write_summary(model / name, doc)
        for f in folds:
            fold = model / f"fold_{f}"
            write_summary(fold / "validation" / "summary.json", summary_doc(0.8))
            (fold / "checkpoint_final.pth").write_bytes(ckpt)
            (fold / "progress.png").write_bytes(b"\x89PNG\r\n\x1a\n")
            write_summary(fold / "debug.json", {"fold": f})
        cv = model / f"crossval_results_folds_{fs}"
        write_summary(cv / "summary.json", summary_doc(0.81))
        (cv / "postprocessing.pkl").write_bytes(b"pp")
        write_summary(cv / "postprocessing.json", {})
    picked = [{"trainer": t, "plans_identifier": "nnUNetPlans", "configuration": c} for t, c in chosen]
    names = [f"{t}__nnUNetPlans__{c}" for t, c in chosen]
    source = base / names[0] / f"crossval_results_folds_{fs}"
    if len(chosen) > 1:
        source = base / "ensembles" / f"ensemble___{names[0]}___{names[1]}___{fs}"
        write_summary(source / "summary.json", summary_doc(0.83))
        (source / "postprocessing.pkl").write_bytes(b"pp")
    info = {"folds": list(folds), "dataset_name_or_id": DATASET, "ensembling_allowed": True,
            "considered_models": [{"trainer": t, "plans": "nnUNetPlans", "configuration": c} for t in trainers
                                  for c in confs],
            "best_model_or_ensemble": {"result_on_crossval_pre_pp": 0.83, "result_on_crossval_post_pp": 0.84,
                                       "postprocessing_file": str(source / "postprocessing.pkl"),
                                       "some_plans_file": str(source / "plans.json"),
                                       "selected_model_or_models": picked}}
    for where in (base, exp.layout.root):  # find_best writes it there; the experiment keeps a copy
        write_summary(where / "inference_information.json", info)
    return exp


def run(exp: ExperimentContext, output: Path, force: bool = False) -> tuple[int, str]:
    said: list[str] = []
    code = export.export_command(exp.config_path, output, said.append, force=force)
    return code, "\n".join(said)


def test_an_ensemble_of_one_trainer_is_one_zip_made_by_nnunets_exporter(tmp_path: Path,
                                                                         checkpoint_bytes: bytes) -> None:
    exp = trained(tmp_path, checkpoint_bytes, [("nnUNetTrainer", "2d"), ("nnUNetTrainer", "3d_fullres")],
                  chosen=[("nnUNetTrainer", "2d"), ("nnUNetTrainer", "3d_fullres")])
    out = tmp_path / "out" / "model.zip"
    (e,) = export.plan(exp, export.read_chosen(exp.layout.root / "inference_information.json"), out)
    argv = export.argv(exp, e, out)
    assert argv[0].endswith("nnUNetv2_export_model_to_zip") and argv[1:] == [
        "-d", DATASET, "-o", str(out), "-c", "2d", "3d_fullres", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans",
        "-f", "0", "1", "-chk", "checkpoint_final.pth"]
    code, said = run(exp, out)  # the real exporter, in a subprocess
    assert code == 0, said
    names = set(zipfile.ZipFile(out).namelist())
    for conf in ("2d", "3d_fullres"):
        m = f"{DATASET}/nnUNetTrainer__nnUNetPlans__{conf}"
        assert {f"{m}/fold_0/checkpoint_final.pth", f"{m}/fold_1/checkpoint_final.pth", f"{m}/plans.json",
                f"{m}/dataset.json", f"{m}/crossval_results_folds_0_1/postprocessing.pkl"} <= names
    ens = (f"{DATASET}/ensembles/ensemble___nnUNetTrainer__nnUNetPlans__2d___"
           "nnUNetTrainer__nnUNetPlans__3d_fullres___0_1")
    assert f"{ens}/postprocessing.pkl" in names and f"{DATASET}/inference_information.json" in names
    assert zipfile.ZipFile(out).read(f"{DATASET}/nnUNetTrainer__nnUNetPlans__2d/fold_1/checkpoint_final.pth") \
        == checkpoint_bytes
    assert f"{out} (" in said and "verified" in said and "nnUNetv2_install_pretrained_model_from_zip" in said
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres: folds 0, 1 (checkpoint_final.pth), plans.json, dataset.json, " \
           "cross-validation summary and postprocessing" in said
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.zip"]  # no partial file left
    code, said = run(exp, out)
    assert code == 1 and f"{out} exists; give --force" in said
    out.write_bytes(b"an older export")
    assert run(exp, out, force=True)[0] == 0 and zipfile.ZipFile(out).testzip() is None


def test_a_failing_exporter_leaves_no_output(tmp_path: Path, checkpoint_bytes: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    exp = trained(tmp_path, checkpoint_bytes, [("nnUNetTrainer", "2d")], chosen=[("nnUNetTrainer", "2d")])
    tool = tmp_path / "exporter"
    tool.write_text('#!/bin/sh\necho "writing $4"; echo partial > "$4"; echo "RuntimeError: disk" >&2; exit 1\n')
    tool.chmod(0o755)
    monkeypatch.setattr(export, "nnunet_tool", lambda name: str(tool))
    code, said = run(exp, tmp_path / "model.zip")
    assert code == 1 and "nnUNetv2_export_model_to_zip failed (exit 1)" in said and "RuntimeError: disk" in said
    assert sorted(p.name for p in tmp_path.iterdir() if "model" in p.name) == []


def test_an_ensemble_across_trainers_is_one_zip_per_trainer_each_with_the_ensemble(
        tmp_path: Path, checkpoint_bytes: bytes) -> None:
    exp = trained(tmp_path, checkpoint_bytes, [("nnUNetTrainer", "2d"), ("nnUNetTrainer_Short", "2d")],
                  chosen=[("nnUNetTrainer", "2d"), ("nnUNetTrainer_Short", "2d")])
    out = tmp_path / "model.zip"
    code, said = run(exp, out)  # the real exporter, twice
    assert code == 0, said
    assert not out.exists() and "as 2 zips" in said
    ens = (f"{DATASET}/ensembles/ensemble___nnUNetTrainer__nnUNetPlans__2d___nnUNetTrainer_Short__nnUNetPlans__2d"
           "___0_1/postprocessing.pkl")
    for trainer in ("nnUNetTrainer", "nnUNetTrainer_Short"):
        names = zipfile.ZipFile(tmp_path / f"model.{trainer}__nnUNetPlans.zip").namelist()
        assert f"{DATASET}/{trainer}__nnUNetPlans__2d/fold_1/checkpoint_final.pth" in names and ens in names
        assert not any(f"/{other}__" in n for other in {"nnUNetTrainer", "nnUNetTrainer_Short"} - {trainer}
                       for n in names if "ensembles" not in n)


def test_a_chosen_cascade_brings_its_lowres_stage(tmp_path: Path, checkpoint_bytes: bytes) -> None:
    exp = trained(tmp_path, checkpoint_bytes, [("nnUNetTrainer", "3d_lowres"), ("nnUNetTrainer", "3d_cascade_fullres")],
                  chosen=[("nnUNetTrainer", "3d_cascade_fullres")])
    (e,) = export.plan(exp, export.read_chosen(exp.layout.root / "inference_information.json"), tmp_path / "m.zip")
    assert e.configurations == ("3d_lowres", "3d_cascade_fullres")
    assert export.problems(exp, [e], force=False) == []


def test_refusals_before_anything_runs(tmp_path: Path, checkpoint_bytes: bytes) -> None:
    exp = trained(tmp_path, checkpoint_bytes, [("nnUNetTrainer", "2d")], chosen=[("nnUNetTrainer", "2d")])
    out = tmp_path / "model.zip"
    fold0 = tmp_path / "r" / DATASET / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    (fold0 / "checkpoint_final.pth").write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2])  # torn
    (fold0 / "progress.png").unlink()
    code, said = run(exp, out)
    assert code == 1 and "checkpoint_final.pth is not usable" in said and "progress.png is missing" in said
    (fold0 / "checkpoint_final.pth").unlink()
    code, said = run(exp, out)
    assert code == 1 and "fold 0 of nnUNetTrainer__nnUNetPlans__2d has not finished training" in said
    assert not out.exists()
    (exp.layout.root / "inference_information.json").write_text('{"folds": [0, 1], "best_mod')
    code, said = run(exp, out)
    assert code == 1 and "nothing to export" in said and "cannot be read" in said
    (exp.layout.root / "inference_information.json").unlink()
    code, said = run(exp, out)
    assert code == 1 and "find_best_configuration has not run" in said
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: {folds: [9]}\nnunet: {dataset: 977}\n")
    said_lines: list[str] = []
    assert export.export_command(bad, out, said_lines.append) == 2 and "invalid config" in said_lines[0]


def test_a_stale_choice_is_refused(tmp_path: Path, checkpoint_bytes: bytes) -> None:
    import os

    exp = trained(tmp_path, checkpoint_bytes, [("nnUNetTrainer", "2d")], chosen=[("nnUNetTrainer", "2d")])
    summary = tmp_path / "r" / DATASET / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1" / "validation" / "summary.json"
    os.utime(summary, (summary.stat().st_mtime + 60,) * 2)  # fold 1 validated again after find_best
    code, said = run(exp, tmp_path / "model.zip")
    assert code == 1 and "older than a fold's validation" in said


def test_a_custom_trainers_file_is_named_since_the_zip_holds_no_code(tmp_path: Path) -> None:
    from supervisor.experiment.export import custom_trainers

    mine = tmp_path / "mine" / "sub"
    mine.mkdir(parents=True)
    (mine / "trainers.py").write_text("class nnUNetTrainer_Mine(nnUNetTrainer):\n    pass\n")
    (mine / "notes.py").write_text("# nnUNetTrainer_Mine is described here, not defined\n")
    exp = ExperimentContext.load(experiment(tmp_path, nnunet={"trainer_paths": [str(tmp_path / "mine")]}))
    assert custom_trainers(exp, ["nnUNetTrainer_Mine", "nnUNetTrainer"]) == {"nnUNetTrainer_Mine": mine / "trainers.py"}
