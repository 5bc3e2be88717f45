"""Ensembling and postprocessing as stages, without nnU-Net: the folders of links each tool is handed (only the
cases still to do), its command line and -np (a remedy's, the user's, or fitted to the CPUs), the ladder halving -np
after a host OOM or dying workers, and a case set aside by an earlier step counting as settled. Files in tmp_path."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from supervisor.core.messages import LaunchFailed, Prepared, Spawn
from supervisor.core.remedies import COMBINE_VAR, Change, Exhausted, Keep, Remedies
from supervisor.evidence.allocation import Allocation
from supervisor.predicted.cases import OutputVerdict
from supervisor.stages.combining.stage import CombineJob, CombineStage, CombineWatch, Kind, fitted_processes
from supervisor.stages.prediction.context import PredictContext
from tests.conftest import FakeOps
from tests.unit.stages.test_prediction import FakeVerify, input_folder, model_tree, outputs, run_yaml

Make = Callable[..., CombineStage]


def source(folder: Path, *cases: str, ending: str = ".nii.gz", probabilities: bool = False,
           meta: tuple[str, ...] = ("dataset.json", "plans.json")) -> Path:
    """A step's output folder: its segmentations (or probabilities) and nnU-Net's copies of the model's files."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        names = [f"{case}.npz", f"{case}.pkl"] if probabilities else [f"{case}{ending}"]
        for n in names:
            (folder / n).write_bytes(f"{n} of {folder.name}".encode())
    for m in meta:
        (folder / m).write_text(json.dumps({"file_ending": ending}))
    return folder


@pytest.fixture
def verify(monkeypatch: pytest.MonkeyPatch) -> FakeVerify:
    fake = FakeVerify()
    monkeypatch.setattr("supervisor.stages.prediction.stage.verify_outputs", fake)
    monkeypatch.setattr("supervisor.stages.combining.stage.nnunet_tool", lambda tool: f"/opt/nnunet/bin/{tool}")
    return fake


def allocation(cpus: float) -> Allocation:
    return Allocation(64, cpus, f"{cpus} CPUs (test)", None, "not known")


@pytest.fixture
def make(tmp_path: Path, verify: FakeVerify, monkeypatch: pytest.MonkeyPatch) -> Make:
    (tmp_path / "raw" / "Dataset901_Tiny").mkdir(parents=True)
    (tmp_path / "pre").mkdir()
    model_tree(tmp_path)
    input_folder(tmp_path / "in")  # case_a, case_b (and a stray file)
    monkeypatch.setattr("supervisor.stages.combining.stage.read_allocation", lambda environ: allocation(4.0))

    def make(kind: Kind = "ensemble", environ: Mapping[str, str] | None = None, **sections: Any) -> CombineStage:
        pctx = PredictContext.load(tmp_path / "run.yaml", run_yaml(**sections))
        sources = (tmp_path / "m0", tmp_path / "m1") if kind == "ensemble" else (tmp_path / "ens",)
        job = CombineJob(kind, sources, tmp_path / "plans.json",
                         tmp_path / "pp.pkl" if kind == "postprocess" else None)
        return CombineStage(pctx, job, FakeOps([{"outcome": "finish"}] * 3), environ={} if environ is None else
                            environ)

    return make


def links(folder: Path) -> dict[str, str]:
    return {e.name: os.readlink(e.path) for e in os.scandir(folder) if e.is_symlink()}


# ---- the staged folders ----

def test_the_ensemble_is_handed_each_models_probabilities_of_the_cases_still_to_do(
        make: Make, tmp_path: Path) -> None:
    m0 = source(tmp_path / "m0", "case_a", "case_b", probabilities=True)
    m1 = source(tmp_path / "m1", "case_a", "case_b", probabilities=True, meta=("plans.json",))
    stage = make()
    stage.verified = {"case_a": OutputVerdict("case_a", True, "", ())}
    staged = stage._links(list(stage.cases))
    sup = tmp_path / "out" / "supervisor"
    assert staged == {
        sup / "input-0": {"case_b.npz": m0 / "case_b.npz", "case_b.pkl": m0 / "case_b.pkl",
                          "dataset.json": m0 / "dataset.json", "plans.json": m0 / "plans.json"},
        sup / "input-1": {"case_b.npz": m1 / "case_b.npz", "case_b.pkl": m1 / "case_b.pkl",
                          "plans.json": m1 / "plans.json"}}  # a meta file the source lacks is not linked


def test_the_postprocessing_is_handed_the_segmentations(make: Make, tmp_path: Path) -> None:
    ens = source(tmp_path / "ens", "case_a", "case_b")
    stage = make("postprocess")
    assert stage._links(["case_a", "case_b"]) == {tmp_path / "out" / "supervisor" / "input-0": {
        "case_a.nii.gz": ens / "case_a.nii.gz", "case_b.nii.gz": ens / "case_b.nii.gz",
        "dataset.json": ens / "dataset.json", "plans.json": ens / "plans.json"}}


def test_staging_leaves_out_failed_cases_and_drops_the_links_of_cases_since_verified(
        make: Make, tmp_path: Path) -> None:
    m0 = source(tmp_path / "m0", "case_a", "case_b", probabilities=True)
    source(tmp_path / "m1", "case_a", "case_b", probabilities=True)
    stage = make()
    stage._stage_input()
    sup = tmp_path / "out" / "supervisor"
    assert links(sup / "input-0") == {n: str(m0 / n) for n in (
        "case_a.npz", "case_a.pkl", "case_b.npz", "case_b.pkl", "dataset.json", "plans.json")}
    stage.verified = {"case_a": OutputVerdict("case_a", True, "", ())}  # neither tool skips what it did
    stage._stage_input()
    assert sorted(links(sup / "input-1")) == ["case_b.npz", "case_b.pkl", "dataset.json", "plans.json"]
    stage.verified, stage.failed = {}, {"case_b": "crashed the predictor twice"}
    stage._stage_input()
    assert sorted(links(sup / "input-0")) == ["case_a.npz", "case_a.pkl", "dataset.json", "plans.json"]
    assert (m0 / "case_b.npz").is_file()  # the source file stays


def test_missing_sources_names_the_cases_the_step_before_did_not_make(make: Make, tmp_path: Path) -> None:
    source(tmp_path / "m0", "case_a", "case_b", probabilities=True)
    source(tmp_path / "m1", "case_a", probabilities=True)
    stage = make()
    assert stage.missing_sources() == ["case_b"]  # its .npz and .pkl in the second model
    _, event = stage.prepare(False, lambda: None, ())()
    # nnUNetv2_ensemble would fail on the dangling link in every attempt: the launch fails, saying what to do
    assert isinstance(event, LaunchFailed) and event.kind == "sources_missing" and "case_b" in event.reason
    stage.failed = {"case_b": "set aside"}
    assert stage.missing_sources() == []
    assert isinstance(stage.prepare(False, lambda: None, ())()[1], Prepared)


def test_a_case_set_aside_before_counts_as_settled_at_begin(make: Make, tmp_path: Path) -> None:
    outputs(tmp_path / "out", "case_a")
    stage = make("postprocess")
    assert not stage.begin().finished
    stage.failed = {"case_b": "set aside by predict 2d"}
    b = stage.begin()
    assert b.finished and b.best_epoch == 1


# ---- the command ----

def test_the_ensemble_command(make: Make, tmp_path: Path) -> None:
    argv, env = make().command(Spawn(2, False))
    sup = tmp_path / "out" / "supervisor"
    assert argv == ["/opt/nnunet/bin/nnUNetv2_ensemble", "-i", str(sup / "input-0"), str(sup / "input-1"),
                    "-o", str(tmp_path / "out"), "-np", "4"]
    assert env["NNUNET_SUPERVISE_ATTEMPT"] == "2"


def test_the_postprocessing_command(make: Make, tmp_path: Path) -> None:
    argv, _ = make("postprocess").command(Spawn(1, False))
    assert argv == ["/opt/nnunet/bin/nnUNetv2_apply_postprocessing", "-i", str(tmp_path / "out" / "supervisor" /
                                                                              "input-0"),
                    "-o", str(tmp_path / "out"), "-pp_pkl_file", str(tmp_path / "pp.pkl"), "-np", "4",
                    "-plans_json", str(tmp_path / "plans.json")]


def test_np_is_the_remedys_then_nnunet_env_then_fitted(make: Make) -> None:
    user = make(nnunet={"env": {COMBINE_VAR: "3"}})
    remedied = Spawn(2, False, env=((COMBINE_VAR, "1"),))
    argv, _ = user.command(remedied)
    assert argv[argv.index("-np") + 1] == "1"
    argv, _ = user.command(Spawn(1, False))
    assert argv[argv.index("-np") + 1] == "3"
    argv, _ = make().command(Spawn(1, False))
    assert argv[argv.index("-np") + 1] == "4"


@pytest.mark.parametrize(("cpus", "expected"), [(64.0, 8), (2.5, 2), (0.5, 1)])
def test_the_fitted_np_is_the_allocations_whole_cpus_at_most_nnunets_8(
        monkeypatch: pytest.MonkeyPatch, cpus: float, expected: int) -> None:
    seen: list[Mapping[str, str]] = []

    def read(environ: Mapping[str, str]) -> Allocation:
        seen.append(environ)
        return allocation(cpus)

    monkeypatch.setattr("supervisor.stages.combining.stage.read_allocation", read)
    assert fitted_processes({"SLURM_CPUS_PER_TASK": "3"}) == expected
    assert seen == [{"SLURM_CPUS_PER_TASK": "3"}]


# ---- the ladder ----

@pytest.mark.parametrize("cause", ["host_oom", "workers_died"])
def test_dying_workers_halve_np_from_the_fitted_count_down_to_one(make: Make, cause: str) -> None:
    stage = make()
    assert stage.ladder is not None
    r, outs = Remedies(), []
    for attempt in (2, 3, 4):
        out = stage.ladder.next(cause, r, attempt, epoch=0, progressed=False, phase="prediction")
        outs.append(out)  # whatever phase the engine says, this stage's pool is the one
        if isinstance(out, Change):
            r = r.with_change(out.applied)
    changes = [o.applied for o in outs if isinstance(o, Change)]
    assert [(a.variable, a.old, a.new) for a in changes] == [(COMBINE_VAR, None, "2"), (COMBINE_VAR, "2", "1")]
    assert isinstance(outs[0], Change) and "ensembling or postprocessing" in outs[0].message
    assert isinstance(outs[2], Exhausted) and f"{COMBINE_VAR} is 1 already" in outs[2].message
    assert r.value("nnUNet_npp") is None  # the predictor's pool is not this one


def test_the_users_np_is_kept_unless_override_user(make: Make) -> None:
    kept = make(nnunet={"env": {COMBINE_VAR: "6"}}).ladder
    assert kept is not None
    out = kept.next("host_oom", Remedies(), 2, 0, False)
    assert isinstance(out, Keep) and f"{COMBINE_VAR}=6 is your setting (nnunet.env)" in out.message
    allowed = make(nnunet={"env": {COMBINE_VAR: "6"}}, remedies={"override_user": True}).ladder
    assert allowed is not None
    out = allowed.next("host_oom", Remedies(), 2, 0, False)
    assert isinstance(out, Change) and (out.applied.old, out.applied.new) == ("6", "3")
    assert make(remedies={"enabled": False}).ladder is None


# ---- what it is ----

def test_the_stages_name_words_and_no_gpu(make: Make) -> None:
    ensemble, post = make(), make("postprocess")
    assert (ensemble.name, ensemble.words.process) == ("ensembling", "nnUNetv2_ensemble")
    assert (post.name, post.words.process) == ("postprocessing", "nnUNetv2_apply_postprocessing")
    assert ensemble.words.progress(3) == "3 case(s) ensembled" and "postprocessed" in post.words.finished
    assert ensemble.gpu_request() is None and post.gpu_request() is None
    assert ensemble.watch_type is CombineWatch
    w = CombineWatch.__new__(CombineWatch)
    assert w.latest("Predicting case_a:\n") is None and w.phase_of("anything") == "combining"


def test_the_users_np_from_the_supervisors_environment_is_used_and_a_remedy_halves_it_only_when_allowed(
        make: Make) -> None:
    stage = make(environ={COMBINE_VAR: "2"})
    argv, _ = stage.command(Spawn(1, False))
    assert argv[argv.index("-np") + 1] == "2"  # not the fitted 4: the user said 2
    argv, _ = stage.command(Spawn(2, False, env=((COMBINE_VAR, "1"),)))
    assert argv[argv.index("-np") + 1] == "1"  # a remedy the user allowed (override_user) wins
