"""A real CPU study on the tiny dataset: two trainers (nnUNetTrainer_Short, SGD, and a short nnU-Net
nnUNetTrainerVanillaAdam3en4) x 2d x two folds, two at a time; one trainer SIGKILLed, the experiment supervisor
SIGKILLed and started again once. It ends with every checkpoint_final.pth and find_best_configuration's output over
both trainers, and no fold trained twice; then its predict section: what find_best chose predicted (the experiment
supervisor SIGKILLed during it; the next one keeps find_best's choice instead of running it again), ensembled when it
chose two models, postprocessed, every final output verified; a final output torn afterwards is quarantined and made
again by `predict EXPERIMENT`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore
from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.integration
TRAINERS = REPO / "tests" / "trainers"
STUDY = ["nnUNetTrainer_Short", "nnUNetTrainer_Adam3en4Short"]
SGD, ADAM = (Cell("2d", 0, t, "nnUNetPlans") for t in STUDY)  # fold 0 of each trainer


def experiment_file(tmp_path: Path, raw: Path, pre: Path) -> Path:
    doc: dict[str, Any] = {
        "experiment": {"configurations": ["2d"], "folds": [0, 1], "devices": {"slots": 2}, "trainers": STUDY},
        "nnunet": {"dataset": 901, "device": "cpu",
                   "trainer_paths": [str(TRAINERS)], "env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}},
        "paths": {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(tmp_path / "res")},
        "restart": {"backoff_initial_s": 1, "backoff_max_s": 5},
        "cooperative": {"enabled": True},
        "predict": {"input": str(tmp_path / "imagesTs"), "output": str(tmp_path / "predictions")},
    }
    test = tmp_path / "imagesTs"
    test.mkdir()
    for image in sorted((raw / "Dataset901_Tiny" / "imagesTr").iterdir())[:3]:
        shutil.copy(image, test / image.name)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)


def fold_events(exp: ExperimentContext, cell: Cell) -> list[dict[str, Any]]:
    return list(read_events(exp.fold_layout(cell).events_file))


def test_a_two_trainer_study_survives_a_killed_trainer_and_a_killed_experiment_supervisor(
        tmp_path: Path, tiny_dataset: tuple[Path, Path]) -> None:
    raw, pre = tiny_dataset
    path = experiment_file(tmp_path, raw, pre)
    exp = ExperimentContext.load(path)
    assert [c.name for c in exp.cells] == [f"{t}__nnUNetPlans/2d/fold_{f}" for t in STUDY for f in (0, 1)]
    log = tmp_path / "experiment.log"
    sup = start(path, log)
    try:
        # the experiment supervisor is SIGKILLed while the first two folds train; they train on
        first = exp.fold_layout(SGD)
        wait_for(lambda: (StateStore(first.state_file).load().get("epoch") or 0) >= 1, 300, "SGD's fold 0 at epoch 1")
        sup.send_signal(signal.SIGKILL)
        sup.wait(30)
        sup = start(path, log)  # it finds them by their locks and follows them
        # a trainer of the second study is SIGKILLed; its fold supervisor resumes it (Adam's optimizer state)
        victim = exp.fold_layout(ADAM.sibling("2d", 1))
        pid = wait_for(lambda: (StateStore(victim.state_file).load().get("epoch") or 0) >= 1
                       and StateStore(victim.state_file).load().get("pid"), 400, "Adam's fold 1 at epoch 1")
        os.kill(pid, signal.SIGKILL)
        # the experiment supervisor is SIGKILLed again while it predicts; the prediction goes on, the next one
        # follows it and then checks that everything is there
        pipeline = exp.predict_layout().state_file
        wait_for(lambda: StateStore(pipeline).load().get("step") is not None or sup.poll() is not None, 900,
                 "the prediction", interval_s=0.2)
        sup.send_signal(signal.SIGKILL)
        sup.wait(30)
        sup = start(path, log)
        assert sup.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    text = log.read_text()
    assert "found 2 fold(s) run by live supervisors" in text
    for cell in exp.cells:
        assert exp.fold_layout(cell).is_finished(), cell
        evs = fold_events(exp, cell)
        launches = [e for e in evs if e["event"] == "launch"]
        exits = [e for e in evs if e["event"] == "exit"]
        assert [e["event"] for e in evs].count("finished") == 1 and evs[-1]["event"] == "finished"
        # never two trainers of one fold: each launch after the previous attempt's exit
        for later, earlier_exit in zip(launches[1:], exits, strict=False):
            assert later["ts"] >= earlier_exit["ts"]
        expected = 2 if cell == ADAM.sibling("2d", 1) else 1
        assert len(launches) == expected, (cell, launches)
    assert (exp.layout.root / "inference_instructions.txt").is_file()
    assert "nnUNetv2_predict" in (exp.layout.root / "inference_instructions.txt").read_text()
    ours = [e["event"] for e in read_events(exp.layout.events_file)]
    # each cell started once: the first supervisor started the 2d folds, the second followed them and started the rest
    assert ours.count("fold_started") == 4 and "find_best" in ours and ours[-1] == "finished"
    assert "predicted" in ours
    # find_best ran once over both trainers; the supervisor started during the prediction kept its choice
    assert ours.count("find_best") == 2 and "not run again" in text, ours
    considered = json.loads((exp.layout.root / "inference_information.json").read_text())["considered_models"]
    assert sorted(m["trainer"] for m in considered) == sorted(STUDY)
    state = StateStore(exp.layout.state_file).load()
    assert state["state"] == "done" and state["exit_code"] == 0
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(path), "--json"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert status.returncode == 0 and '"finished": 4' in status.stdout
    gantt = tmp_path / "gantt.png"
    report = subprocess.run([sys.executable, "-m", "supervisor", "report", str(path), "-o", str(gantt)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert report.returncode == 0 and gantt.stat().st_size > 10_000, report.stderr
    # the final segmentations: one verified output per input case, postprocessed from what find_best chose
    out = tmp_path / "predictions"
    cases = sorted(p.name.replace("_0000.nii.gz", "") for p in (tmp_path / "imagesTs").iterdir())
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    pipe = StateStore(exp.predict_layout().state_file).load()
    assert pipe["state"] == "finished" and pipe["steps"][-1]["name"] == "postprocess", pipe
    assert pipe["steps"][-1]["cases_verified"] == 3
    # in two parts (two CPU slots), each a supervisor of its own, the experiment supervisor killed while they ran;
    # the whole then found their work verified and combined it
    assert pipe["parts"] == 2
    shares = [StateStore(exp.predict_layout().supervisor_dir / f"part-{k}-of-2" / "pipeline.json").load()
              for k in range(2)]
    assert [s["state"] for s in shares] == ["finished", "finished"], shares
    assert sorted(s["steps"][0]["cases_total"] for s in shares) == [1, 2]
    kinds = [s["kind"] for s in pipe["steps"]]
    assert kinds == (["predict", "predict", "ensemble", "postprocess"] if len(pipe["models"]) == 2
                     else ["predict", "postprocess"]), pipe
    info = json.loads(status.stdout)
    assert info["predict"]["cases_total"] == 3 and info["predict"]["cases_done"] == 3, info["predict"]
    # the cross-validation summary from the folds' own summary.json, find_best's choice marked and current
    cv = info["cross_validation"]
    assert [m["trainer"] for m in cv["models"]] == STUDY and all(m["final"] for m in cv["models"]), cv
    assert cv["chosen"]["current"] and cv["best_by"] == "find_best", cv
    # find_best's choice as nnU-Net's model zip: the real exporter, every chosen fold's checkpoint inside
    model = tmp_path / "model.zip"
    exported = subprocess.run([sys.executable, "-m", "supervisor", "export", str(path), "-o", str(model)],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    names = set(zipfile.ZipFile(model).namelist()) if model.is_file() else \
        {n for z in tmp_path.glob("model.*.zip") for n in zipfile.ZipFile(z).namelist()}
    assert sum(n.endswith("/checkpoint_final.pth") for n in names) == 2 * len(pipe["models"]), sorted(names)
    # clean leaves a finished study's checkpoints and validation alone
    cleaned = subprocess.run([sys.executable, "-m", "supervisor", "clean", str(path)], capture_output=True,
                             text=True, cwd=REPO, timeout=120)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    for cell in exp.cells:
        fold = exp.fold_layout(cell).fold_dir
        assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    # a final output torn (a power cut as it was written, a person): quarantined, made again, the rest kept
    torn = out / f"{cases[0]}.nii.gz"
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    kept = (out / f"{cases[1]}.nii.gz").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "supervisor", "predict", str(path)], capture_output=True, text=True,
                           cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    corrupt = [e for e in read_events(exp.predict_layout().events_file) if e["event"] == "output_corrupt"]
    assert [Path(e["path"]).name for e in corrupt] == [torn.name]
    assert Path(corrupt[0]["quarantined_to"]).read_bytes() == data[: len(data) // 2]
    assert torn.stat().st_size > 0 and (out / f"{cases[1]}.nii.gz").stat().st_mtime_ns == kept
