"""The prediction stage without nnU-Net: what `predict` resolves from a run.yaml, the command and its staged input
folder, the outputs verified (by a fake in place of the reading subprocess) and a bad one quarantined, nnU-Net's
"Predicting CASE:" lines and the segmentations written as progress, the stall between cases, the remedy ladder's
nnUNet_npp then nnUNet_nps, and the facts state.json carries. Files in tmp_path, an injected clock."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import parse_config
from supervisor.core.messages import ChildExited, LaunchFailed, Prepared, Recycle, Spawn
from supervisor.core.remedies import NPP_VAR, NPS_VAR, Change, Exhausted, Keep, Remedies
from supervisor.core.stall import StallRules
from supervisor.errors import ConfigError
from supervisor.predicted.cases import OutputVerdict
from supervisor.predicted.verify import OutputCheckError
from supervisor.stages.prediction.context import PredictContext
from supervisor.stages.prediction.stage import PredictionStage, PredictWatch
from supervisor.trainer.protocol import MARKER_VAR
from tests.conftest import FakeOps

DATASET = "Dataset901_Tiny"
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"
CASES = ("case_a_0000.nii.gz", "case_b_0000.nii.gz", "notes.nii.gz")  # notes: no _XXXX, not a case


# ---- helpers ----

def model_tree(root: Path, folds: Sequence[int | str] = (0,), checkpoint: str = "checkpoint_final.pth") -> Path:
    model = root / "results" / DATASET / MODEL
    model.mkdir(parents=True, exist_ok=True)
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "labels": {"background": 0}}))
    (model / "plans.json").write_text(json.dumps({"plans_name": "nnUNetPlans"}))
    for f in folds:
        (model / f"fold_{f}").mkdir(exist_ok=True)
        (model / f"fold_{f}" / checkpoint).write_bytes(b"not a real checkpoint")
    return model


def input_folder(folder: Path, names: Sequence[str] = CASES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(f"image {name}".encode())
    return folder


def run_yaml(**sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"nnunet": {"dataset": 901, "configuration": "3d_fullres", "device": "cpu"},
                           "paths": {"nnUNet_raw": "raw", "nnUNet_preprocessed": "pre", "nnUNet_results": "results"},
                           "predict": {"input": "in", "output": "out"}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


def outputs(folder: Path, *cases: str, ending: str = ".nii.gz") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (folder / f"{case}{ending}").write_bytes(f"segmentation of {case}".encode())


@pytest.fixture
def load(tmp_path: Path) -> Callable[..., PredictContext]:
    (tmp_path / "raw" / DATASET).mkdir(parents=True)  # dataset 901 resolves to its folder name here
    (tmp_path / "pre").mkdir()
    model_tree(tmp_path)
    input_folder(tmp_path / "in")
    return lambda doc, **kw: PredictContext.load(tmp_path / "run.yaml", doc, **kw)


class FakeVerify:
    """Stands in for verify_outputs (the reading subprocess): ok for every case but those in `bad`."""

    def __init__(self) -> None:
        self.bad: dict[str, str] = {}  # case -> reason
        self.error: str | None = None
        self.calls: list[list[Mapping[str, Any]]] = []

    def __call__(self, requests: Sequence[Mapping[str, Any]], env: Mapping[str, str], timeout_s: float = 0,
                 cache: Any = None, reader: str | None = None) -> list[OutputVerdict]:
        self.calls.append(list(requests))
        if self.error is not None:
            raise OutputCheckError(self.error, [])
        return [OutputVerdict(r["case"], r["case"] not in self.bad, self.bad.get(r["case"], ""),
                              tuple(Path(o) for o in r["outputs"])) for r in requests]


@pytest.fixture
def verify(monkeypatch: pytest.MonkeyPatch) -> FakeVerify:
    fake = FakeVerify()
    monkeypatch.setattr("supervisor.stages.prediction.stage.verify_outputs", fake)
    monkeypatch.setattr("supervisor.stages.prediction.stage.nnunet_tool", lambda name: f"/opt/nnunet/bin/{name}")
    return fake


@pytest.fixture
def make(load: Callable[..., PredictContext], verify: FakeVerify) -> Callable[..., PredictionStage]:
    def make(environ: Mapping[str, str] | None = None, **sections: Any) -> PredictionStage:
        # attempt N's pid 1000 + N plays entry N of FakeOps's plan: no kernel kill in the evidence
        return PredictionStage(load(run_yaml(**sections)), FakeOps([{"outcome": "finish"}] * 3),
                               environ={} if environ is None else environ)

    return make


@pytest.fixture
def stage(make: Callable[..., PredictionStage]) -> PredictionStage:
    return make()


class Log:
    """An attempt log nnU-Net's prediction prints into."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def predicting(self, case: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"\nPredicting {case}:\nperform_everything_on_device: False\n")


# ---- what is predicted, from the config ----

def test_input_and_output_come_from_the_file_relative_to_its_folder(load: Any, tmp_path: Path) -> None:
    p = load(run_yaml())
    assert p.input == tmp_path / "in" and p.output == tmp_path / "out"
    assert p.run.dataset_name == DATASET and p.folds == [0] and p.file_ending == ".nii.gz"
    assert p.model_dir == tmp_path / "results" / DATASET / MODEL
    assert p.layout.supervisor_dir == tmp_path / "out" / "supervisor"


def test_i_and_o_override_the_file_relative_to_the_current_folder(
        load: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    input_folder(elsewhere / "scans")
    monkeypatch.chdir(elsewhere)
    p = load(run_yaml(), input_dir="scans", output_dir="segs")
    assert p.input == elsewhere / "scans" and p.output == elsewhere / "segs"
    doc = run_yaml()
    del doc["predict"]["output"]
    assert load(doc, output_dir="segs").output == elsewhere / "segs"  # -o fills in what the file lacks


def test_a_missing_output_is_a_config_error_naming_it(load: Any, tmp_path: Path) -> None:
    doc = run_yaml()
    del doc["predict"]["output"]
    with pytest.raises(ConfigError) as err:
        load(doc)
    assert err.value.problems == ["predict.output: not set (in the file, or -o on the command line)"]
    assert err.value.source == str(tmp_path / "run.yaml")


@pytest.mark.parametrize("output", ["in", "in/predicted", "."])
def test_an_output_inside_the_input_or_holding_it_is_refused(load: Any, output: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(run_yaml(predict={"output": output}))
    assert any(p.startswith("predict.output:") and "must be outside the input folder" in p
               for p in err.value.problems)


def test_a_fold_without_the_checkpoint_is_named_with_the_advice(load: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(run_yaml(predict={"folds": [0, 1]}))
    [problem] = err.value.problems
    assert str(tmp_path / "results" / DATASET / MODEL / "fold_1" / "checkpoint_final.pth") in problem
    assert "name another predict.checkpoint" in problem
    model_tree(tmp_path, folds=(0, 1), checkpoint="checkpoint_latest.pth")
    p = load(run_yaml(predict={"folds": [0, 1], "checkpoint": "checkpoint_latest.pth"}))
    assert p.folds == [0, 1]


def test_the_models_dataset_json_missing_is_named(load: Any, tmp_path: Path) -> None:
    dataset_json = tmp_path / "results" / DATASET / MODEL / "dataset.json"
    dataset_json.unlink()
    with pytest.raises(ConfigError) as err:
        load(run_yaml())
    assert len(err.value.problems) == 1 and str(dataset_json) in err.value.problems[0]
    assert "file_ending" in err.value.problems[0]


def test_an_experiment_file_is_refused_clearly(load: Any) -> None:
    doc = run_yaml()
    doc["nnunet"] = {"dataset": DATASET, "device": "cpu"}
    with pytest.raises(ConfigError) as err:
        load({**doc, "experiment": {"configurations": ["3d_fullres"]}})
    assert "experiment file" in str(err.value) and "find_best chose" in str(err.value)


def test_an_empty_list_of_folds_is_refused(load: Any) -> None:
    with pytest.raises(ConfigError) as err:
        load(run_yaml(predict={"folds": []}))
    assert any(p.startswith("predict.folds") for p in err.value.problems)


# ---- the predict section ----

@pytest.mark.parametrize("arg", ["-chk", "--continue_prediction", "-npp", "-o"])
def test_extra_args_may_not_set_what_the_supervisor_sets(arg: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(run_yaml(predict={"extra_args": ["--disable_tta", arg, "x"]}))
    [problem] = err.value.problems
    assert problem.startswith("predict.extra_args:") and f"({arg} given)" in problem


@pytest.mark.parametrize("arg", ["-chk=checkpoint_best.pth", "-npp=8", "--save_prob", "--continue", "-f0"])
def test_extra_args_may_not_set_them_with_an_equals_sign_either(arg: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(run_yaml(predict={"extra_args": [arg]}))


def test_nnunet_options_that_are_not_ours_pass() -> None:
    extra = ["-step_size", "0.5", "--disable_tta", "-prev_stage_predictions", "/x", "--not_on_device"]
    assert parse_config(run_yaml(predict={"extra_args": extra})).predict.extra_args == extra


def test_the_checkpoint_is_a_file_name_in_the_fold_folder() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(run_yaml(predict={"checkpoint": "a/b.pth"}))
    assert err.value.problems[0].startswith("predict.checkpoint: got 'a/b.pth'")
    assert parse_config(run_yaml(predict={"checkpoint": "checkpoint_best.pth"})).predict.checkpoint == \
        "checkpoint_best.pth"


# ---- the stage: cases, outputs, command ----

def test_an_input_folder_without_a_case_is_a_config_error(make: Any, tmp_path: Path) -> None:
    input_folder(tmp_path / "empty", ["notes.nii.gz", "case_a_0000.nii"])
    with pytest.raises(ConfigError) as err:
        make(predict={"input": "empty"})
    assert err.value.problems[0].startswith(f"predict.input: no case in {tmp_path / 'empty'}")


def test_the_cases_leave_out_the_stray_file(stage: PredictionStage, tmp_path: Path) -> None:
    assert stage.cases == {"case_a": [tmp_path / "in" / "case_a_0000.nii.gz"],
                           "case_b": [tmp_path / "in" / "case_b_0000.nii.gz"]}
    assert stage.ignored == [tmp_path / "in" / "notes.nii.gz"]


def test_written_counts_the_segmentations_of_known_cases_only(stage: PredictionStage, tmp_path: Path) -> None:
    assert stage.written() == 0  # no output folder yet
    out = tmp_path / "out"
    outputs(out, "case_a", "notes", "other")
    (out / "case_b.npz").write_bytes(b"probabilities")  # written before the segmentation: not yet a case done
    assert stage.written() == 1


def test_the_command_continues_from_the_staged_input_with_the_users_args_last(
        make: Any, tmp_path: Path) -> None:
    model_tree(tmp_path, folds=(0, 1), checkpoint="checkpoint_latest.pth")
    stage = make(predict={"folds": [0, 1], "checkpoint": "checkpoint_latest.pth", "save_probabilities": True,
                          "extra_args": ["-step_size", "0.75", "--disable_tta"]})
    argv, env = stage.command(Spawn(3, False))
    out = tmp_path / "out"
    assert argv == ["/opt/nnunet/bin/nnUNetv2_predict", "-i", str(out / "supervisor" / "input"), "-o", str(out),
                    "-d", DATASET, "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "-c", "3d_fullres", "-f", "0", "1",
                    "-chk", "checkpoint_latest.pth", "-device", "cpu", "--continue_prediction",
                    "--save_probabilities", "-step_size", "0.75", "--disable_tta"]
    assert env[MARKER_VAR] == str(out)  # the prediction's processes are found by its output folder
    assert env["NNUNET_SUPERVISE_ATTEMPT"] == "3" and env["nnUNet_results"] == str(tmp_path / "results")
    plain, _ = make().command(Spawn(1, False))
    assert "--save_probabilities" not in plain and plain[-1] == "--continue_prediction"


# ---- the staged input ----

def test_the_staged_input_links_each_channel_and_leaves_the_stray_file_out(
        stage: PredictionStage, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    staged = stage._stage_input()
    assert staged == tmp_path / "out" / "supervisor" / "input"
    assert sorted(os.listdir(staged)) == ["case_a_0000.nii.gz", "case_b_0000.nii.gz"]
    for name in ("case_a_0000.nii.gz", "case_b_0000.nii.gz"):
        assert (staged / name).is_symlink() and os.readlink(staged / name) == str(tmp_path / "in" / name)
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before  # the user's folder untouched
    assert not any(p.is_symlink() for p in (tmp_path / "in").iterdir())


def test_a_set_aside_case_is_left_out_and_a_correct_link_kept(stage: PredictionStage, tmp_path: Path) -> None:
    staged = stage._stage_input()
    kept = os.lstat(staged / "case_a_0000.nii.gz")
    stage.failed = {"case_b": "crashed the predictor twice"}
    assert stage._stage_input() == staged
    assert os.listdir(staged) == ["case_a_0000.nii.gz"]  # the stale link to case_b removed
    again = os.lstat(staged / "case_a_0000.nii.gz")
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert (tmp_path / "in" / "case_b_0000.nii.gz").is_file()  # its input file stays


def test_a_link_pointing_elsewhere_is_replaced(stage: PredictionStage, tmp_path: Path) -> None:
    staged = tmp_path / "out" / "supervisor" / "input"
    staged.mkdir(parents=True)
    os.symlink(tmp_path / "old" / "case_a_0000.nii.gz", staged / "case_a_0000.nii.gz")
    stage._stage_input()
    assert os.readlink(staged / "case_a_0000.nii.gz") == str(tmp_path / "in" / "case_a_0000.nii.gz")


# ---- begin, and the preparation of a launch ----

def test_begin_without_outputs_verifies_nothing_and_is_not_finished(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    b = stage.begin()
    assert not b.finished and not b.resume and b.best_epoch == 0
    assert verify.calls == [] and (tmp_path / "out").is_dir()


def test_begin_is_finished_when_every_output_is_verified(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    outputs(tmp_path / "out", "case_a", "case_b")
    b = stage.begin()
    assert b.finished and b.best_epoch == 2
    [requests] = verify.calls
    assert requests[0] == {"case": "case_a", "input": [str(tmp_path / "in" / "case_a_0000.nii.gz")],
                           "outputs": [str(tmp_path / "out" / "case_a.nii.gz")], "probabilities": False}


def test_begin_with_a_bad_output_or_a_failed_check_is_not_finished(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    outputs(tmp_path / "out", "case_a", "case_b")
    verify.bad = {"case_b": "case_b.nii.gz is torn"}
    b = stage.begin()
    assert not b.finished and b.best_epoch == 1
    verify.bad, verify.error = {}, "the output-check subprocess failed (exit 1): ImportError"
    b = stage.begin()  # no crash: the prepare job decides
    assert not b.finished and b.best_epoch == 0


def test_the_prepare_job_quarantines_bad_outputs_and_stages_the_input(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outputs(out, "case_a", "case_b")
    verify.bad = {"case_b": "case_b.nii.gz: spacing differs from its input"}
    into = out / "supervisor" / "quarantine" / "attempt-1"
    into.mkdir(parents=True)
    (into / "case_b.nii.gz").write_bytes(b"quarantined earlier")
    waited: list[bool] = []
    records, ev = stage.prepare(True, lambda: waited.append(True), ())()
    assert ev == Prepared(resume=False) and waited == [True]
    assert [(r.event, r.fields) for r in records] == [("output_corrupt", {
        "path": str(out / "case_b.nii.gz"), "reason": "case_b.nii.gz: spacing differs from its input",
        "quarantined_to": str(into / "case_b.nii.gz.1"), "case": "case_b"})]
    assert (into / "case_b.nii.gz").read_bytes() == b"quarantined earlier"  # never overwritten
    assert (into / "case_b.nii.gz.1").read_bytes() == b"segmentation of case_b"
    assert not (out / "case_b.nii.gz").exists() and (out / "case_a.nii.gz").is_file()
    assert sorted(os.listdir(out / "supervisor" / "input")) == ["case_a_0000.nii.gz", "case_b_0000.nii.gz"]
    assert stage.applied(records) == records and stage.applied(None) == []


def test_a_failed_check_fails_the_launch_rather_than_trust_an_output(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    outputs(tmp_path / "out", "case_a")
    verify.error = "the output check took more than 3600 s (1 of 1 cases not read)"
    waited: list[bool] = []
    records, ev = stage.prepare(False, lambda: waited.append(True), ())()
    assert records == [] and waited == []
    assert isinstance(ev, LaunchFailed) and ev.kind == "verification_failed"
    assert "3600 s" in ev.reason and "--continue_prediction" in ev.reason
    assert (tmp_path / "out" / "case_a.nii.gz").is_file()


# ---- a running attempt, and its end ----

def launch(stage: PredictionStage, attempt: int = 1, now: float = 0.0) -> Log:
    log = Log(stage.layout.attempt_log(attempt))
    stage.launched(Spawn(attempt, False), 1000 + attempt, now)
    return log


def end(stage: PredictionStage, returncode: int) -> ChildExited:
    """The engine's end of an attempt: the outputs verified in the waiting thread (settle), then exited."""
    stage.settle(returncode)
    return stage.exited(returncode)


def test_an_attempt_that_predicted_every_case_exits_finished_in_the_prediction_phase(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    log = launch(stage)
    assert stage.look(1.0).changed is False
    log.predicting("case_a")
    stage.look(2.0)
    outputs(tmp_path / "out", "case_a")
    assert stage.look(30.0).changed
    log.predicting("case_b")
    outputs(tmp_path / "out", "case_b")
    stage.look(40.0)
    ev = end(stage, 0)
    assert isinstance(ev, ChildExited)
    assert ev.finished and ev.epochs_completed == 2 and ev.phase == "prediction" and ev.returncode == 0
    assert "Predicting case_b:" in ev.log_tail
    assert stage.watch is None and stage._gaps == [10.0]  # the gap between the two outputs, kept for the next


def test_an_exit_with_a_case_missing_or_bad_is_not_finished(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    log = launch(stage)
    log.predicting("case_a")
    outputs(tmp_path / "out", "case_a")
    stage.look(5.0)
    missing = end(stage, 0)
    assert not missing.finished and missing.epochs_completed == 1 and missing.phase == "prediction"
    launch(stage, attempt=2)
    outputs(tmp_path / "out", "case_b")
    verify.bad = {"case_a": "case_a.nii.gz is torn"}
    bad = end(stage, 1)
    assert not bad.finished and bad.epochs_completed == 1 and bad.phase == "startup"  # no line in attempt 2 yet
    launch(stage, attempt=3)
    verify.bad, verify.error = {}, "the output-check subprocess failed (exit 1): ImportError"
    unchecked = end(stage, 0)
    assert not unchecked.finished  # what could not be verified is not done


def test_a_host_oom_before_the_first_case_printed_halves_nnunet_npp(
        stage: PredictionStage, verify: FakeVerify) -> None:
    launch(stage)
    stage.look(60.0)
    ev = end(stage, -9)
    assert stage.ladder is not None
    out = stage.ladder.next("host_oom", Remedies(), 2, 0, False, ev.phase)
    assert isinstance(out, Change) and out.applied.variable == NPP_VAR


def test_a_stall_is_reported_as_an_event_naming_the_case(make: Any, verify: FakeVerify, tmp_path: Path) -> None:
    stage = make(predict={"stall_floor_s": 20})
    log = launch(stage)
    log.predicting("case_a")
    stage.look(1.0)
    outputs(tmp_path / "out", "case_a")
    stage.look(50.0)
    log.predicting("case_b")
    stage.look(51.0)
    # the first output taught no pace: until a second one, the allowance is heartbeat.startup_grace_s, not the floor
    assert stage.watch is not None and stage.watch.stall.timeout_s() == 900
    outputs(tmp_path / "out", "case_b")
    stage.look(60.0)
    assert stage.stall_deadline() == 80.0  # max(20, 2 x 10 s) after the last output
    assert stage.look(79.0).events == []
    [ev] = stage.look(80.0).events
    assert isinstance(ev, Recycle) and ev.kind == "stall" and "gap between cases" in ev.message
    assert ev.fields["phase"] == "prediction" and ev.fields["case"] == "case_b"
    assert ev.fields["dump"] == str(tmp_path / "out" / "supervisor" / "stall-1.txt")
    assert stage.look(200.0).events == [] and stage.stall_deadline() is None  # once


# ---- the watch ----

def test_predicting_lines_advance_the_phase_and_name_the_case(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    w = PredictWatch(log.path, StallRules(startup_grace_s=3600, floor_s=20), 0.0, [], 0)
    assert w.poll(1, 0) is None and w.case is None and w.stall.phase == "startup"
    log.predicting("case_a")
    w.poll(7, 0)
    assert w.case == "case_a" and w.stall.phase == "prediction" and w.stall.last_progress == 7
    assert w.stall.last_what == "predicting case_a"
    w.poll(9, 0)
    assert w.stall.last_progress == 7  # the same line again is no news
    with open(log.path, "a") as f:
        f.write("Predicting image of shape (1, 64, 64, 64):\n")  # not a case's line
    w.poll(10, 0)
    assert w.case == "case_a"


def test_the_first_output_of_an_attempt_teaches_no_pace(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-2.log")
    w = PredictWatch(log.path, StallRules(startup_grace_s=3600, floor_s=20), 0.0, [7.0], written=1)
    w.poll(300, 2)  # the model's loading is in this one
    assert w.stall.epoch_times == [7.0] and w.stall.last_progress == 300 and w.stall.phase == "prediction"
    w.poll(312, 3)
    w.poll(342, 5)  # two outputs in 30 s: 15 s apart
    assert w.stall.epoch_times == [7.0, 12.0, 15.0] and w.stall.last_what == "5 case(s) written"


def test_a_silence_between_cases_is_a_stall_once_after_twice_the_longest_gap(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    log.predicting("case_a")
    w = PredictWatch(log.path, StallRules(startup_grace_s=3600, floor_s=20), 0.0, [], 0)
    for now, written in ((5, 0), (50, 1), (60, 2), (90, 4)):
        assert w.poll(now, written) is None
    assert w.stall.timeout_s() == 30  # 2 x 15 s
    assert w.poll(119, 4) is None
    why = w.poll(120, 4)
    assert why is not None and "in the prediction phase" in why and "gap between cases" in why
    assert "at least 20 s" in why and "last sign of life: 4 case(s) written" in why
    assert w.poll(500, 4) is None and w.alarmed


def test_the_floor_holds_when_the_cases_come_fast(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    log.predicting("case_a")
    w = PredictWatch(log.path, StallRules(startup_grace_s=3600, floor_s=600), 0.0, [1.0, 2.0], 0)
    w.poll(1, 0)
    assert w.stall.timeout_s() == 600
    assert w.poll(600, 0) is None and w.poll(601, 0) is not None


# ---- the remedy ladder ----

@pytest.mark.parametrize("cause", ["host_oom", "workers_died"])
def test_dying_predictor_workers_halve_npp_to_one_then_nps_then_give_up(make: Any, cause: str) -> None:
    stage = make()
    assert stage.ladder is not None
    r, outs = Remedies(), []
    for attempt in (2, 3, 4):
        out = stage.ladder.next(cause, r, attempt, epoch=0, progressed=False, phase="prediction")
        outs.append(out)
        if isinstance(out, Change):
            r = r.with_change(out.applied)
    changes = [o.applied for o in outs if isinstance(o, Change)]
    assert [(a.variable, a.old, a.new) for a in changes] == [(NPP_VAR, None, "1"), (NPS_VAR, None, "1")]
    assert isinstance(outs[0], Change) and "reading and preprocessing the cases" in outs[0].message
    assert isinstance(outs[2], Exhausted) and f"{NPS_VAR} is 1 already" in outs[2].message
    assert r.value("nnUNet_n_proc_DA") is None  # the training's workers are not the predictor's


def test_the_users_npp_is_not_overridden(make: Any) -> None:
    stage = make(nnunet={"env": {NPP_VAR: "4"}})
    assert stage.ladder is not None
    out = stage.ladder.next("host_oom", Remedies(), 2, 0, False, "prediction")
    assert isinstance(out, Keep)
    assert f"{NPP_VAR}=4 is your setting (nnunet.env)" in out.message and "would set 2" in out.message
    environ = make(environ={NPP_VAR: "2"})
    assert environ.ladder is not None
    kept = environ.ladder.next("workers_died", Remedies(), 2, 0, False, "prediction")
    assert isinstance(kept, Keep) and "your setting (the supervisor's environment)" in kept.message
    allowed = make(nnunet={"env": {NPP_VAR: "4"}}, remedies={"override_user": True})
    out = allowed.ladder.next("host_oom", Remedies(), 2, 0, False, "prediction")
    assert isinstance(out, Change) and (out.applied.variable, out.applied.old, out.applied.new) == (NPP_VAR, "4", "2")


def test_a_users_npp_of_one_goes_on_to_nps(make: Any) -> None:
    stage = make(nnunet={"env": {NPP_VAR: "1"}})
    out = stage.ladder.next("host_oom", Remedies(), 2, 0, False, "prediction")
    assert isinstance(out, Change) and (out.applied.variable, out.applied.new) == (NPS_VAR, "1")


# ---- what it says ----

def test_facts_carry_the_contracts_predict_object(
        stage: PredictionStage, verify: FakeVerify, tmp_path: Path) -> None:
    facts = stage.facts(0.0, running=False)
    assert facts["predict"]["cases_total"] == 2 and facts["predict"]["cases_done"] == 0
    assert facts["predict"]["cases_failed"] == [] and facts["output"] == str(tmp_path / "out")
    assert facts["attempt_status"] is None
    outputs(tmp_path / "out", "case_a")
    stage.begin()
    stage.failed = {"case_b": "crashed the predictor"}
    assert stage.facts(0.0, running=False)["predict"] == {
        "cases_total": 2, "cases_done": 1, "cases_verified": 1, "cases_failed": ["case_b"], "case": None}
    log = launch(stage, now=100.0)
    log.predicting("case_b")
    stage.look(110.0)
    running = stage.facts(110.0, running=True)
    assert running["predict"]["cases_done"] == 1 and running["predict"]["case"] == "case_b"
    assert running["attempt_status"]["phase"] == "prediction"
    line, fields = stage.status("running", 1, running, 0.0)
    assert line == "running: attempt 1, predicted 1/2 cases"
    assert fields == {"progress": "attempt 1, predicted 1/2 cases"}
