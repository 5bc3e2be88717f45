"""An experiment's prediction without nnU-Net: what find_best chose (inference_information.json), the steps planned
from it (the cascade's low-resolution stage first, the ensemble, the postprocessing), the pipeline running them in
order on a fake engine (a set-aside case left out of the later steps and named, a stop, a step that gave up), its
pipeline.json and events.jsonl, `predict EXPERIMENT`'s refusals, and what `status` reads back. Files in tmp_path."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from supervisor.core.messages import Spawn
from supervisor.daemon.process import ProcessOps
from supervisor.errors import ConfigError, LockedError
from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.view import prediction_line
from supervisor.layout import PipelineLayout
from supervisor.observe.prediction import pipeline_status
from supervisor.pipeline.predict import PredictionPipeline, Step, plan, predict_experiment, relocate
from supervisor.predicted.cases import OutputVerdict
from supervisor.rundir.eventlog import EventLog, read_events
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from supervisor.stages.combining.stage import CombineStage
from supervisor.stages.prediction.chosen import Model, read_chosen
from supervisor.stages.prediction.stage import PredictionStage
from tests.unit.experiment.conftest import experiment

DATASET = "Dataset977_Thing"
TRAINER, PLANS = "nnUNetTrainer", "nnUNetPlans"
CASES = ("a", "b", "c")


# ---- helpers ----

def name(configuration: str) -> str:
    return f"{TRAINER}__{PLANS}__{configuration}"


def information(*configurations: str, folds: Sequence[object] = (0, 1), trainer: str = TRAINER,
                pp: str = "/cluster/old/Dataset977_Thing/ens/postprocessing.pkl",
                plans: str = "/cluster/old/Dataset977_Thing/some/plans.json") -> dict[str, Any]:
    """inference_information.json as nnU-Net 2.8's find_best writes it."""
    return {"folds": list(folds), "best_model_or_ensemble": {
        "selected_model_or_models": [{"trainer": trainer, "plans_identifier": PLANS, "configuration": c}
                                     for c in configurations],
        "postprocessing_file": pp, "some_plans_file": plans}}


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def model_tree(tmp_path: Path, configuration: str, folds: Sequence[object] = (0, 1)) -> Path:
    model = tmp_path / "r" / DATASET / name(configuration)
    write_json(model / "dataset.json", {"file_ending": ".nii.gz"})
    write_json(model / "plans.json", {"plans_name": PLANS})
    for f in folds:
        (model / f"fold_{f}").mkdir(parents=True, exist_ok=True)
        (model / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"not a real checkpoint")
    return model


def input_folder(folder: Path, cases: Sequence[str] = CASES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (folder / f"{case}_0000.nii.gz").write_bytes(f"image {case}".encode())
    return folder


def setup(tmp_path: Path, *chosen: str, trees: bool = True, **sections: Any) -> ExperimentContext:
    """An experiment with a predict section whose find_best chose `chosen`, the models' trees and the input."""
    input_folder(tmp_path / "in")
    exp = ExperimentContext.load(experiment(tmp_path, predict={"input": "in", "output": "out"}, **sections))
    write_json(exp.layout.root / "inference_information.json", information(*chosen))
    if trees:
        for c in {*chosen, *(exp.waits_for.get(c) for c in chosen)} - {None}:
            model_tree(tmp_path, str(c))
    return exp


def ok(case: str) -> OutputVerdict:
    return OutputVerdict(case, True, "", ())


Behaviour = Callable[[PredictionStage], int]


def finish(stage: PredictionStage) -> int:
    stage.verified = {c: ok(c) for c in stage.cases if c not in stage.failed}
    return 0


def set_aside(case: str) -> Behaviour:
    def run(stage: PredictionStage) -> int:
        stage.verified = {c: ok(c) for c in stage.cases if c != case and c not in stage.failed}
        stage.failed[case] = "exit -11 (SIGSEGV)"
        return 1

    return run


class FakeEngine:
    """The engine: plays one behaviour per step, in order, and notes what each stage was handed."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.behaviours = list(behaviours)
        self.seen: list[dict[str, Any]] = []

    def __call__(self, stage: PredictionStage, ops: ProcessOps) -> int:
        self.seen.append({"kind": type(stage).__name__, "output": stage.pctx.output, "failed": dict(stage.failed),
                          "run_dir": stage.layout.supervisor_dir})
        return self.behaviours[len(self.seen) - 1](stage)


def events(path: Path) -> list[dict[str, Any]]:
    return list(read_events(path, warn=False))


# ---- what find_best chose ----

def test_read_chosen_takes_the_models_folds_and_files(tmp_path: Path) -> None:
    path = write_json(tmp_path / "inference_information.json",
                      information("2d", "3d_fullres", folds=[0, 1, "all"], pp="/x/pp.pkl", plans="/x/plans.json"))
    chosen = read_chosen(path)
    assert chosen.models == (Model(TRAINER, PLANS, "2d"), Model(TRAINER, PLANS, "3d_fullres"))
    assert chosen.folds == (0, 1, "all") and chosen.ensemble
    assert chosen.postprocessing_file == Path("/x/pp.pkl") and chosen.plans_file == Path("/x/plans.json")
    assert chosen.models[1].name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert not read_chosen(write_json(tmp_path / "one.json", information("2d"))).ensemble


def test_a_missing_or_unreadable_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "inference_information.json"
    with pytest.raises(ConfigError) as err:
        read_chosen(path)
    [problem] = err.value.problems
    assert problem.startswith(f"{path} is missing") and "find_best_configuration has not run" in problem
    path.write_text('{"folds": [0, ')
    with pytest.raises(ConfigError) as err:
        read_chosen(path)
    assert err.value.problems[0].startswith(f"{path} cannot be read")
    path.write_text(json.dumps({"folds": [0]}))
    with pytest.raises(ConfigError) as err:
        read_chosen(path)
    assert err.value.problems == [f"{path}: no best_model_or_ensemble object (not written by nnU-Net 2's find_best?)"]


def test_every_problem_of_a_damaged_file_is_named_at_once(tmp_path: Path) -> None:
    doc = information("2d", "3d_fullres", folds=[0, -1, True, "x"])
    best = doc["best_model_or_ensemble"]
    best["selected_model_or_models"][1]["configuration"] = "../3d_fullres"  # no path may sneak into a folder name
    del best["postprocessing_file"]
    path = write_json(tmp_path / "inference_information.json", doc)
    with pytest.raises(ConfigError) as err:
        read_chosen(path)
    assert err.value.problems == [
        f"{path}: selected_model_or_models[1] needs trainer, plans_identifier, configuration",
        f"{path}: folds holds -1, not a fold", f"{path}: folds holds True, not a fold",
        f"{path}: folds holds 'x', not a fold", f"{path}: best_model_or_ensemble.postprocessing_file is missing"]
    empty = write_json(tmp_path / "empty.json", information(folds=[]))
    with pytest.raises(ConfigError) as err:
        read_chosen(empty)
    assert err.value.problems == [f"{empty}: selected_model_or_models is empty", f"{empty}: no folds"]


def test_relocate_finds_a_path_written_on_another_node_under_this_results_folder(tmp_path: Path) -> None:
    results = tmp_path / "r"
    here = write_json(tmp_path / "mnt" / DATASET / "pp.pkl", {})
    assert relocate(here, results, DATASET) == here  # it exists as written
    moved = Path("/old/Dataset977_Thing/runs/Dataset977_Thing/ens/postprocessing.pkl")
    assert relocate(moved, results, DATASET) == results / DATASET / "ens" / "postprocessing.pkl"  # the last one
    foreign = Path("/old/Dataset001_Other/pp.pkl")
    assert relocate(foreign, results, DATASET) == foreign


# ---- the plan ----

def test_one_model_is_predicted_then_postprocessed_into_the_output(tmp_path: Path) -> None:
    exp = setup(tmp_path, "3d_fullres")
    out = tmp_path / "out"
    p = plan(exp, out)
    model = out / "supervisor" / "models" / name("3d_fullres")
    assert p.steps == (Step("predict 3d_fullres", "predict", model, model / "supervisor", Model(TRAINER, PLANS,
                                                                                             "3d_fullres")),
                       Step("postprocess", "postprocess", out, out / "supervisor"))
    # find_best's paths from another node, found under this machine's results folder
    assert p.chosen.postprocessing_file == tmp_path / "r" / DATASET / "ens" / "postprocessing.pkl"
    assert p.chosen.plans_file == tmp_path / "r" / DATASET / "some" / "plans.json"


def test_a_cascade_in_an_ensemble_predicts_its_lowres_stage_first_and_once(tmp_path: Path) -> None:
    exp = setup(tmp_path, "3d_lowres", "3d_cascade_fullres")
    out = tmp_path / "out"
    p = plan(exp, out)
    models = out / "supervisor" / "models"
    assert [s.name for s in p.steps] == ["predict 3d_lowres", "predict 3d_cascade_fullres", "ensemble",
                                         "postprocess"]
    assert p.steps[1].prev_stage == models / name("3d_lowres") and p.steps[0].prev_stage is None
    assert p.steps[2].output == out / "supervisor" / "ensemble"
    assert p.steps[2].run_dir == out / "supervisor" / "ensemble" / "supervisor"


def test_a_cascade_the_experiment_did_not_train_finds_its_previous_stage_in_the_plans(tmp_path: Path) -> None:
    exp = setup(tmp_path, "3d_cascade_fullres", experiment={"configurations": ["3d_fullres"]})
    assert exp.waits_for == {}
    steps = plan(exp, tmp_path / "out").steps
    assert [s.name for s in steps] == ["predict 3d_lowres", "predict 3d_cascade_fullres", "postprocess"]
    assert steps[1].prev_stage == steps[0].output


def test_a_choice_of_another_trainer_is_refused(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", trees=False)
    write_json(exp.layout.root / "inference_information.json", information("2d", trainer="MyTrainer"))
    with pytest.raises(ConfigError) as err:
        plan(exp, tmp_path / "out")
    assert "MyTrainer__nnUNetPlans__2d" in err.value.problems[0] and "find_best again" in err.value.problems[0]
    assert err.value.source == str(exp.config_path)


# ---- the stages of the steps ----

def test_the_cascades_stage_passes_the_lowres_predictions_and_keeps_probabilities_for_the_ensemble(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("supervisor.stages.prediction.stage.nnunet_tool", lambda tool: f"/bin/{tool}")
    exp = setup(tmp_path, "2d", "3d_cascade_fullres")
    pipeline = PredictionPipeline(exp, tmp_path / "in", tmp_path / "out", engine=FakeEngine())
    by_name = {s.name: s for s in pipeline.plan.steps}
    stage = pipeline.stage(by_name["predict 3d_cascade_fullres"], ProcessOps())
    argv, _ = stage.command(Spawn(1, False))
    lowres = tmp_path / "out" / "supervisor" / "models" / name("3d_lowres")
    assert argv[argv.index("-c") + 1] == "3d_cascade_fullres" and argv[argv.index("-d") + 1] == DATASET
    assert argv[argv.index("-f") + 1:argv.index("-f") + 3] == ["0", "1"]
    assert argv[argv.index("-prev_stage_predictions") + 1] == str(lowres)
    assert "--save_probabilities" in argv  # the ensemble reads the models' probabilities
    assert sorted(stage.cases) == list(CASES)


def test_the_ensemble_and_postprocess_stages_read_what_the_steps_before_wrote(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")
    out = tmp_path / "out"
    pipeline = PredictionPipeline(exp, tmp_path / "in", out, engine=FakeEngine())
    steps = {s.name: s for s in pipeline.plan.steps}
    ensemble = pipeline.stage(steps["ensemble"], ProcessOps())
    assert isinstance(ensemble, CombineStage) and ensemble.job.kind == "ensemble"
    models = out / "supervisor" / "models"
    assert ensemble.job.sources == (models / name("2d"), models / name("3d_fullres"))
    assert ensemble.layout.supervisor_dir == out / "supervisor" / "ensemble" / "supervisor"
    assert ensemble.job.postprocessing_file is None and not ensemble.config.predict.save_probabilities
    post = pipeline.stage(steps["postprocess"], ProcessOps())
    assert isinstance(post, CombineStage) and post.job.sources == (out / "supervisor" / "ensemble",)
    assert post.job.postprocessing_file == tmp_path / "r" / DATASET / "ens" / "postprocessing.pkl"
    assert post.pctx.output == out and post.layout.supervisor_dir == out / "supervisor"


def test_a_model_without_its_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d")
    missing = tmp_path / "r" / DATASET / name("2d") / "fold_1" / "checkpoint_final.pth"
    missing.unlink()
    pipeline = PredictionPipeline(exp, tmp_path / "in", tmp_path / "out", engine=FakeEngine())
    with pytest.raises(ConfigError) as err:
        pipeline.stage(pipeline.plan.steps[0], ProcessOps())
    assert str(missing) in err.value.problems[0]


# ---- the run ----

def test_the_steps_run_in_order_and_the_pipeline_finishes(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")
    out = tmp_path / "out"
    layout = PipelineLayout(out)
    during: list[dict[str, Any]] = []

    def watched(stage: PredictionStage) -> int:
        during.append(StateStore(layout.state_file).load())
        return finish(stage)

    engine = FakeEngine(watched, finish, finish, finish)
    assert PredictionPipeline(exp, tmp_path / "in", out, engine=engine).run() == 0
    models = out / "supervisor" / "models"
    assert [(s["kind"], s["output"]) for s in engine.seen] == [
        ("PredictionStage", models / name("2d")), ("PredictionStage", models / name("3d_fullres")),
        ("CombineStage", out / "supervisor" / "ensemble"), ("CombineStage", out)]
    assert during[0]["state"] == "running" and during[0]["step"] == "predict 2d" and during[0]["exit_code"] is None
    doc = StateStore(layout.state_file).load()
    assert doc["state"] == "finished" and doc["exit_code"] == 0 and doc["step"] is None
    assert doc["models"] == [name("2d"), name("3d_fullres")] and doc["folds"] == [0, 1]
    assert [(s["name"], s["kind"], s["cases_verified"], s["exit_code"]) for s in doc["steps"]] == [
        ("predict 2d", "predict", 3, 0), ("predict 3d_fullres", "predict", 3, 0), ("ensemble", "ensemble", 3, 0),
        ("postprocess", "postprocess", 3, 0)]
    kinds = [e["event"] for e in events(layout.events_file)]
    assert kinds == ["pipeline_started", *["step_ended"] * 4, "finished"]
    assert not RunLock(layout.lock_file).is_held_elsewhere()  # let go of


def test_a_case_set_aside_is_left_out_of_the_later_steps_and_named_at_the_end(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")
    out = tmp_path / "out"
    engine = FakeEngine(set_aside("b"), finish, finish, finish)
    assert PredictionPipeline(exp, tmp_path / "in", out, engine=engine).run() == 1
    assert [s["failed"] for s in engine.seen] == [{}] + [{"b": "exit -11 (SIGSEGV)"}] * 3  # every later step
    layout = PipelineLayout(out)
    last = events(layout.events_file)[-1]
    assert last["event"] == "incomplete" and last["cases_failed"] == ["b"] and last["cases_total"] == 3
    doc = StateStore(layout.state_file).load()
    assert doc["state"] == "incomplete" and doc["exit_code"] == 1
    assert doc["cases_failed"] == {"b": "exit -11 (SIGSEGV)"}
    assert doc["steps"][0]["cases_failed"] == ["b"] and doc["steps"][0]["exit_code"] == 1


def test_a_step_that_gave_up_with_cases_not_done_ends_the_pipeline_at_once(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")

    def half(stage: PredictionStage) -> int:
        stage.verified = {"a": ok("a")}
        return 1

    engine = FakeEngine(half, finish, finish, finish)
    out = tmp_path / "out"
    assert PredictionPipeline(exp, tmp_path / "in", out, engine=engine).run() == 1
    assert len(engine.seen) == 1
    last = events(PipelineLayout(out).events_file)[-1]
    assert (last["event"], last["step"], last["code"]) == ("incomplete", "predict 2d", 1)
    doc = StateStore(PipelineLayout(out).state_file).load()
    assert doc["state"] == "incomplete" and doc["step"] == "predict 2d" and "exit_code" not in doc["steps"][1]


def test_a_step_stopped_resumably_stops_the_pipeline_with_75(tmp_path: Path) -> None:
    exp = setup(tmp_path, "3d_fullres")
    out = tmp_path / "out"
    engine = FakeEngine(finish, lambda stage: 75)
    assert PredictionPipeline(exp, tmp_path / "in", out, engine=engine).run() == 75
    assert len(engine.seen) == 2
    last = events(PipelineLayout(out).events_file)[-1]
    assert (last["event"], last["step"], last["code"]) == ("stopped", "postprocess", 75)
    doc = StateStore(PipelineLayout(out).state_file).load()
    assert (doc["state"], doc["exit_code"]) == ("stopped", 75)


def test_a_stop_between_steps_ends_75_before_the_next(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")
    out = tmp_path / "out"
    pipeline = PredictionPipeline(exp, tmp_path / "in", out, engine=FakeEngine())

    def stop_after(stage: PredictionStage) -> int:
        pipeline._stop = "SIGTERM"
        return finish(stage)

    engine = FakeEngine(stop_after, finish)
    pipeline.engine = engine
    assert pipeline.run() == 75
    assert len(engine.seen) == 1
    last = events(PipelineLayout(out).events_file)[-1]
    assert (last["event"], last["reason"], last["before"]) == ("stopped", "SIGTERM", "predict 3d_fullres")


def test_a_real_signal_during_a_step_is_caught_and_the_handlers_are_restored(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d")
    caught: list[int] = []

    def ours(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)  # the pipeline did not catch it: the test fails rather than the process dies

    previous = signal.signal(signal.SIGUSR1, ours)
    try:
        def signalled(stage: PredictionStage) -> int:
            os.kill(os.getpid(), signal.SIGUSR1)
            return finish(stage)

        engine = FakeEngine(signalled, finish)
        assert PredictionPipeline(exp, tmp_path / "in", tmp_path / "out", engine=engine).run() == 75
        assert caught == [] and len(engine.seen) == 1
        assert signal.getsignal(signal.SIGUSR1) is ours
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_another_live_pipeline_on_the_output_is_refused(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d")
    layout = PipelineLayout(tmp_path / "out")
    layout.supervisor_dir.mkdir(parents=True)
    other = RunLock(layout.lock_file)
    other.acquire()
    try:
        engine = FakeEngine(finish, finish)
        with pytest.raises(LockedError):
            PredictionPipeline(exp, tmp_path / "in", tmp_path / "out", engine=engine).run()
        assert engine.seen == []
    finally:
        other.release()


def test_a_steps_quarantines_and_set_aside_cases_are_copied_into_the_pipelines_events(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d")
    out = tmp_path / "out"
    clock = {"now": 1000.0}

    def with_events(stage: PredictionStage) -> int:
        stage.layout.supervisor_dir.mkdir(parents=True)  # the engine's run directory
        step_log = EventLog(stage.layout.events_file, lambda: clock["now"])
        clock["now"] = 900.0
        step_log.record("output_corrupt", case="a", path="/old")  # from an earlier run of the step: not again
        clock["now"] = 1010.0
        step_log.record("output_corrupt", case="b", path=str(stage.pctx.output / "b.nii.gz"), reason="torn")
        step_log.record("launched", attempt=2)
        step_log.record("case_failed", case="c", reason="exit -9")
        return finish(stage)

    def final(stage: PredictionStage) -> int:  # the last step writes into the pipeline's own run directory
        EventLog(stage.layout.events_file, lambda: clock["now"]).record("case_failed", case="a", reason="x")
        return finish(stage)

    engine = FakeEngine(with_events, final)
    assert PredictionPipeline(exp, tmp_path / "in", out, engine=engine, wall=lambda: clock["now"]).run() == 0
    copied = [e for e in events(PipelineLayout(out).events_file) if e["event"] in ("output_corrupt", "case_failed")]
    assert [(e["event"], e["case"], e.get("step")) for e in copied] == [
        ("output_corrupt", "b", "predict 2d"), ("case_failed", "c", "predict 2d"), ("case_failed", "a", None)]
    assert copied[0]["reason"] == "torn" and copied[0]["ts"] == 1010.0


# ---- predict EXPERIMENT ----

def test_predict_experiment_refuses_what_it_cannot_predict(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d")
    with pytest.raises(ConfigError) as err:
        predict_experiment(exp, str(tmp_path / "nowhere"), None)
    assert err.value.problems == [f"predict.input: {tmp_path / 'nowhere'} is not a folder"]
    with pytest.raises(ConfigError) as err:
        predict_experiment(exp, None, str(tmp_path / "in" / "segs"))
    assert err.value.problems[0].startswith(f"predict.output: {tmp_path / 'in' / 'segs'} must be outside")
    bare = ExperimentContext.load(experiment(tmp_path / "bare"))
    with pytest.raises(ConfigError) as err:
        predict_experiment(bare, str(tmp_path / "in"), None)
    assert err.value.problems == ["predict.output: not set (in the file, or -o on the command line)"]
    folds = replace(exp, spec=exp.spec.model_copy(update={"predict": exp.spec.predict.model_copy(
        update={"folds": [0]})}))  # the file's validation refuses it too; the command says so on its own
    with pytest.raises(ConfigError) as err:
        predict_experiment(folds, None, None)
    assert err.value.problems[0].startswith("predict.folds:") and "find_best's" in err.value.problems[0]


def test_predict_experiment_runs_the_pipeline_on_i_and_o(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = setup(tmp_path, "2d")
    input_folder(tmp_path / "scans")
    ran: list[tuple[Path, Path]] = []

    def run(self: PredictionPipeline) -> int:
        ran.append((self.input, self.output))
        return 75

    monkeypatch.setattr(PredictionPipeline, "run", run)
    monkeypatch.chdir(tmp_path)
    assert predict_experiment(exp, "scans", "segs") == 75
    assert ran == [(tmp_path / "scans", tmp_path / "segs")]
    assert predict_experiment(exp, None, None) == 75 and ran[1] == (tmp_path / "in", tmp_path / "out")


# ---- what status reads ----

def running_pipeline(out: Path, step_state: dict[str, Any] | None, final: dict[str, Any] | None) -> Path:
    layout = PipelineLayout(out)
    models = out / "supervisor" / "models" / name("2d")
    (models / "supervisor").mkdir(parents=True)
    StateStore(layout.state_file).save({
        "state": "running", "step": "predict 2d", "output": str(out), "cases_failed": {"c": "exit -9"},
        "steps": [{"name": "predict 2d", "run_dir": str(models / "supervisor")},
                  {"name": "postprocess", "run_dir": str(out / "supervisor")}]})
    if step_state is not None:
        StateStore(models / "supervisor" / "state.json").save(step_state)
    if final is not None:
        StateStore(out / "supervisor" / "state.json").save(final)
    return layout.lock_file


def test_pipeline_status_is_none_before_a_run_and_reads_the_running_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert pipeline_status(out) is None
    lock = RunLock(running_pipeline(out, {"predict": {"cases_total": 10, "cases_done": 4, "cases_failed": ["c"]},
                                          "case_gaps": [10.0, 30.0, 20.0, "x"]}, {"predict": {"cases_verified": 2}}))
    st = pipeline_status(out)
    assert st is not None
    assert st["step"] == "predict 2d" and st["steps"] == ["predict 2d", "postprocess"]
    assert st["step_cases_done"] == 4 and st["cases_total"] == 10 and st["cases_done"] == 2
    assert st["cases_failed"] == ["c"] and st["output"] == str(out)
    assert st["state"] == "running (no supervisor)" and st["live"] is False
    assert st["eta_s"] is None  # nothing runs: no time left to tell
    lock.acquire()
    try:
        st = pipeline_status(out)
    finally:
        lock.release()
    assert st is not None and st["eta_s"] == 20 * (10 - 4 - 1)  # the median gap times the cases left in the step


def test_pipeline_status_of_a_live_pipeline_without_pace_has_no_eta(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock = RunLock(running_pipeline(out, {"predict": {"cases_total": 3, "cases_done": 0}}, None))
    lock.acquire()
    try:
        st = pipeline_status(out)
    finally:
        lock.release()
    assert st is not None and st["state"] == "running" and st["live"] is True
    assert st["eta_s"] is None and st["cases_done"] == 0 and st["step_cases_done"] == 0


def test_the_prediction_line_says_the_step_its_cases_and_the_final_outputs() -> None:
    line = prediction_line({"state": "running", "step": "ensemble", "steps": ["predict 2d", "ensemble", "post"],
                            "step_cases_done": 2, "cases_total": 5, "eta_s": 600, "cases_done": 0,
                            "cases_failed": ["c", "d"], "output": "/segs"})
    assert line == ("prediction: running, step ensemble (2/3): 2/5 cases, about 10 min left in this step; "
                    "0/5 final outputs verified, failed: c, d (/segs)")
    done = prediction_line({"state": "finished", "step": None, "steps": ["post"], "cases_total": 5,
                            "cases_done": 5, "cases_failed": [], "output": "/segs"})
    assert done == "prediction: finished; 5/5 final outputs verified (/segs)"


@pytest.mark.parametrize(("key", "value"), [("folds", 3), ("selected_model_or_models", 5)])
def test_a_value_that_is_no_list_is_named_not_a_crash(tmp_path: Path, key: str, value: int) -> None:
    doc = information("2d")
    (doc if key == "folds" else doc["best_model_or_ensemble"])[key] = value
    path = write_json(tmp_path / "inference_information.json", doc)
    with pytest.raises(ConfigError) as err:
        read_chosen(path)
    assert f"{key} holds {value}, not a list" in str(err.value)
