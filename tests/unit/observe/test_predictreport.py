"""The report of a prediction from its run directory's files: an experiment's prediction (the real pipeline on a fake
engine that writes what the engine writes into each step's run directory), a run.yaml's prediction (state.json and
events.jsonl as the engine writes them), a torn events.jsonl line, a missing state file, a pipeline killed during a
step, parts, and folders that are not what they should be. Files in tmp_path."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from supervisor.layout import PipelineLayout, PredictLayout
from supervisor.observe.predictreport import EXITS, INTERRUPTED, for_config, prediction_report, report_lines
from supervisor.pipeline.predict import PredictionPipeline
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from supervisor.stages.prediction.stage import PredictionStage
from tests.unit.pipeline import test_predict as tp

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def engine_files(run_dir: Path, clock: Clock, attempts: list[str], *, cases: int, verified: int,
                 failed: dict[str, str] | None = None, quarantined: Sequence[str] = (),
                 gaps: list[float] | None = None, state: str = "finished", exit_code: int | None = 0,
                 step_s: float = 10.0) -> None:
    """What the engine leaves in a run directory: one launch and one exit per attempt (`attempts`: each exit's
    classification), a backoff before each relaunch, the quarantines and set-aside cases, the end; its state.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir / "events.jsonl", clock)
    failed = failed or {}
    for n, kind in enumerate(attempts, start=1):
        log.record("launch", attempt=n, pid=1000 + n, argv=["nnUNetv2_predict"], resume=False, sized={})
        clock.now += step_s
        for path in quarantined if n == len(attempts) else []:
            log.record("output_corrupt", path=path, reason="does not open", case=Path(path).name.split(".")[0],
                       quarantined_to=str(run_dir / "quarantine" / f"attempt-{n}" / Path(path).name))
        log.record("exit", attempt=n, returncode=0 if kind == "finished" else -9, classification=kind,
                   retryable=kind != "finished", summary=kind, epochs_completed=verified, phase="prediction")
        if n < len(attempts):
            log.record("backoff", delay_s=1.0, next_attempt=n + 1, restart=n, progress=False)
            clock.now += 1.0
    for case, why in failed.items():
        log.record("case_failed", case=case, reason=why, inputs=[[f"{case}_0000.nii.gz", 1, 1]])
    if state == "finished":
        log.record("finished", attempt=len(attempts), epochs=verified + len(failed))
    elif state == "failed":
        log.record("give_up", reason="cases_failed", message=f"set aside: {', '.join(failed)}")
    StateStore(run_dir / "state.json").save({
        "schema": 1, "stage": "prediction", "state": state, "attempt": len(attempts),
        "restarts": max(0, len(attempts) - 1), "exit_code": exit_code, "started_ts": T0,
        "predict": {"cases_total": cases, "cases_done": verified, "cases_verified": verified,
                    "cases_failed": sorted(failed), "case": None},
        "case_gaps": gaps or []})


# ---- an experiment's prediction ----

def pipeline_run(tmp_path: Path) -> tuple[Path, Clock]:
    """The real pipeline (2d, then postprocess) on a fake engine: the 2d model is killed once (a relaunch), one
    output is quarantined and case b set aside; the postprocessing combines the rest."""
    exp = tp.setup(tmp_path, "2d")
    out, clock = tmp_path / "out", Clock()

    def predict(stage: PredictionStage) -> int:
        engine_files(stage.layout.supervisor_dir, clock, ["killed_by_signal", "finished"], cases=3, verified=2,
                     failed={"b": "exit -11 (SIGSEGV)"}, quarantined=[str(stage.pctx.output / "a.nii.gz")],
                     gaps=[2.0, 4.0, 3.0], state="failed", exit_code=1)
        stage.verified = {"a": tp.ok("a"), "c": tp.ok("c")}
        stage.failed["b"] = "exit -11 (SIGSEGV)"
        return 1

    def postprocess(stage: PredictionStage) -> int:
        engine_files(stage.layout.supervisor_dir, clock, ["finished"], cases=3, verified=2,
                     failed={}, state="finished")
        return tp.finish(stage)

    assert PredictionPipeline(exp, tmp_path / "in", out, engine=tp.FakeEngine(predict, postprocess),
                              wall=clock).run() == 1
    return out, clock


def test_an_experiments_prediction_reports_each_step_the_final_outputs_and_what_was_set_aside(
        tmp_path: Path) -> None:
    out, clock = pipeline_run(tmp_path)
    d = prediction_report(out, now=clock.now + 3600)
    assert d is not None
    assert (d["kind"], d["exit"], d["live"], d["interrupted"]) == ("pipeline", "incomplete", False, False)
    assert d["reason"] == "1 case(s) set aside" and d["exit_code"] == 1 and d["sessions"] == 1
    assert d["wall_s"] == 31.0  # 2 attempts of 10 s + a 1 s backoff, then 10 s of postprocessing; not `now`
    assert (d["cases_total"], d["cases_verified"]) == (3, 2)
    assert d["cases_failed"] == [{"case": "b", "reason": "exit -11 (SIGSEGV)", "step": "predict 2d"}]
    q = d["quarantined"]
    assert q["count"] == 1 and q["outputs"][0]["path"].endswith("a.nii.gz")
    assert q["outputs"][0]["step"] == "predict 2d" and "attempt-2" in q["outputs"][0]["quarantined_to"]
    steps = {s["name"]: s for s in d["steps"]}
    assert list(steps) == ["predict 2d", "postprocess"]
    assert (steps["predict 2d"]["attempts"], steps["predict 2d"]["restarts"]) == (2, 1)
    assert (steps["postprocess"]["attempts"], steps["postprocess"]["restarts"]) == (1, 0)
    assert steps["predict 2d"]["seconds_per_case"] == 3.0 and steps["postprocess"]["seconds_per_case"] is None
    assert steps["predict 2d"]["exit_code"] == 1 and steps["predict 2d"]["cases_failed"] == ["b"]
    assert steps["postprocess"]["run_dir"] == str(out / "supervisor")
    assert (d["attempts"], d["restarts"]) == (3, 1)
    json.dumps(d)  # what --json prints
    text = "\n".join(report_lines(d))
    assert f"an experiment's prediction into {out}: incomplete (1 case(s) set aside); wall 31 s" in text
    assert "2/3 final outputs verified, 1 case(s) failed, 1 output(s) quarantined, 3 attempts, 1 restart" in text
    assert "step predict 2d: exit 1, 2/3 verified, 3 s per case, 2 attempts, 1 restart, failed: b" in text
    assert "step postprocess: exit 0, 2/3 verified, 1 attempt, 0 restarts" in text
    assert "failed: b (step predict 2d): exit -11 (SIGSEGV)" in text
    assert "quarantined (step predict 2d): " in text


def test_a_live_pipeline_is_running_and_its_wall_time_runs_on(tmp_path: Path) -> None:
    out, clock = pipeline_run(tmp_path)
    lock = RunLock(PipelineLayout(out).lock_file)
    lock.acquire()
    try:
        d = prediction_report(out, now=clock.now + 100)
    finally:
        lock.release()
    assert d is not None and d["exit"] == "running" and d["live"] is True and d["wall_s"] == 131.0
    assert report_lines(d)[0].endswith(": running; wall 2.2 min")


def test_a_pipeline_killed_during_a_step_reads_its_quarantines_from_the_steps_own_events(tmp_path: Path) -> None:
    """SIGKILLed during `predict 2d`: pipeline.json still says running, nothing was copied, nobody holds the lock."""
    out, clock = tmp_path / "out", Clock()
    root = PredictLayout(out).supervisor_dir
    step_dir = root / "models" / tp.name("2d") / "supervisor"
    root.mkdir(parents=True)
    EventLog(root / "events.jsonl", clock).record("pipeline_started", steps=["predict 2d", "postprocess"],
                                                  models=[tp.name("2d")])
    StateStore(root / "pipeline.json").save({
        "schema": 1, "stage": "prediction pipeline", "state": "running", "exit_code": None, "started_ts": T0,
        "step": "predict 2d", "cases_failed": {},
        "steps": [{"name": "predict 2d", "kind": "predict", "output": str(step_dir.parent), "run_dir": str(step_dir)},
                  {"name": "postprocess", "kind": "postprocess", "output": str(out), "run_dir": str(root)}]})
    engine_files(step_dir, clock, ["killed_by_signal", "finished"], cases=3, verified=1,
                 quarantined=[str(step_dir.parent / "c.nii.gz")], state="running", exit_code=None)
    d = prediction_report(out, now=clock.now)
    assert d is not None
    assert (d["exit"], d["interrupted"], d["reason"]) == ("incomplete", True, INTERRUPTED)
    assert d["quarantined"]["count"] == 1 and d["quarantined"]["outputs"][0]["step"] == "predict 2d"
    steps = {s["name"]: s for s in d["steps"]}
    assert (steps["predict 2d"]["attempts"], steps["predict 2d"]["restarts"]) == (2, 1)
    assert steps["predict 2d"]["exit_code"] is None and steps["predict 2d"]["cases_verified"] == 1
    assert steps["postprocess"]["attempts"] == 0 and d["cases_verified"] is None
    assert "step postprocess: not run yet, ?/? verified" in "\n".join(report_lines(d))


def test_a_pipeline_without_its_pipeline_json_is_read_from_its_events(tmp_path: Path) -> None:
    """pipeline.json lost (a person, a disk): the steps from pipeline_started, their run directories as the plan
    lays them out, the end from the pipeline's last event."""
    out, clock = pipeline_run(tmp_path)
    (out / "supervisor" / "pipeline.json").unlink()
    d = prediction_report(out, now=clock.now)
    assert d is not None and d["kind"] == "pipeline" and d["exit"] == "incomplete" and not d["interrupted"]
    steps = {s["name"]: s for s in d["steps"]}
    assert steps["predict 2d"]["run_dir"] == str(out / "supervisor" / "models" / tp.name("2d") / "supervisor")
    assert (steps["predict 2d"]["attempts"], steps["predict 2d"]["restarts"]) == (2, 1)
    assert [f["case"] for f in d["cases_failed"]] == ["b"]  # from the steps' summaries, the reason from its event
    assert d["cases_failed"][0]["reason"] == "exit -11 (SIGSEGV)"


def test_a_torn_last_line_of_the_pipelines_events_is_skipped_and_said(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    out, clock = pipeline_run(tmp_path)
    events = out / "supervisor" / "events.jsonl"
    raw = events.read_bytes()
    events.write_bytes(raw[:-20])  # the final `incomplete` cut short: a power cut during the write
    with caplog.at_level(logging.WARNING, logger="nnunet_supervise"):
        d = prediction_report(out, now=clock.now)
    assert d is not None and d["exit"] == "incomplete"  # pipeline.json says so
    assert d["cases_total"] == 3  # from the steps' summaries now
    assert sum("torn" in r.getMessage() for r in caplog.records) == 1  # said once, though read for several things


# ---- a run.yaml's prediction ----

def test_a_run_yaml_prediction_reports_its_attempts_restarts_pace_and_quarantines(tmp_path: Path) -> None:
    out, clock = tmp_path / "pred", Clock()
    run_dir = PredictLayout(out).supervisor_dir
    engine_files(run_dir, clock, ["killed_by_signal", "stall", "finished"], cases=4, verified=4,
                 quarantined=[str(out / "x.nii.gz"), str(out / "y.nii.gz")], gaps=[1.0, 2.0, 6.0])
    d = prediction_report(out, now=clock.now + 999)
    assert d is not None
    assert (d["kind"], d["exit"], d["interrupted"], d["exit_code"]) == ("run", "finished", False, 0)
    assert (d["attempts"], d["restarts"], d["wall_s"]) == (3, 2, 32.0)
    assert (d["cases_total"], d["cases_verified"], d["cases_failed"]) == (4, 4, [])
    assert d["quarantined"]["count"] == 2 and d["steps"][0]["seconds_per_case"] == 2.0
    assert "parts" not in d and "step" not in d["quarantined"]["outputs"][0]
    lines = report_lines(d)
    assert lines[0] == f"prediction into {out}: finished; wall 32 s"
    assert lines[1] == "  4/4 final outputs verified, 0 case(s) failed, 2 output(s) quarantined, 3 attempts, 2 restarts"
    assert "  2 s per case" in lines and any(line.startswith("  quarantined: ") for line in lines)


def test_a_run_yaml_prediction_without_its_state_file_is_read_from_its_events(tmp_path: Path) -> None:
    out, clock = tmp_path / "pred", Clock()
    run_dir = PredictLayout(out).supervisor_dir
    engine_files(run_dir, clock, ["killed_by_signal", "finished"], cases=3, verified=2,
                 failed={"c": "exit -9 (SIGKILL)"}, state="failed", exit_code=1)
    (run_dir / "state.json").unlink()
    d = prediction_report(out, now=clock.now)
    assert d is not None and d["exit"] == "incomplete" and not d["interrupted"]
    assert d["reason"] == "set aside: c" and d["cases_failed"] == [{"case": "c", "reason": "exit -9 (SIGKILL)"}]
    assert (d["attempts"], d["restarts"], d["cases_total"]) == (2, 1, None)
    assert "?/? final outputs verified" in report_lines(d)[1]


def test_a_run_yaml_prediction_killed_mid_attempt_is_incomplete_and_interrupted(tmp_path: Path) -> None:
    out, clock = tmp_path / "pred", Clock()
    run_dir = PredictLayout(out).supervisor_dir
    run_dir.mkdir(parents=True)
    EventLog(run_dir / "events.jsonl", clock).record("launch", attempt=1, pid=5, argv=[], resume=False, sized={})
    d = prediction_report(out, now=clock.now + 50)
    assert d is not None and (d["exit"], d["interrupted"], d["attempts"]) == ("incomplete", True, 1)
    assert INTERRUPTED in report_lines(d)[0]
    lock = RunLock(PredictLayout(out).lock_file)
    lock.acquire()
    try:
        live = prediction_report(out, now=clock.now + 50)
    finally:
        lock.release()
    assert live is not None and live["exit"] == "running" and live["wall_s"] == 50.0


def test_a_torn_line_in_a_runs_events_loses_that_event_only(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    out, clock = tmp_path / "pred", Clock()
    run_dir = PredictLayout(out).supervisor_dir
    engine_files(run_dir, clock, ["killed_by_signal", "finished"], cases=2, verified=2)
    lines = (run_dir / "events.jsonl").read_bytes().split(b"\n")
    lines[0] = lines[0][:15]  # the first launch torn (its newline kept: the next event was written after it)
    (run_dir / "events.jsonl").write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="nnunet_supervise"):
        d = prediction_report(out, now=clock.now)
    assert d is not None and d["exit"] == "finished" and d["attempts"] == 1 and d["restarts"] == 1
    assert any("events.jsonl" in r.getMessage() and "line 1" in r.getMessage() for r in caplog.records)


def test_a_run_yaml_prediction_in_parts_reports_each_part_and_counts_them_in(tmp_path: Path) -> None:
    out, clock = tmp_path / "pred", Clock()
    run_dir = PredictLayout(out).supervisor_dir
    run_dir.mkdir(parents=True)
    EventLog(run_dir / "events.jsonl", clock).record("parts_started", parts=2, devices=[None, None])
    engine_files(run_dir / "part-0-of-2", clock, ["killed_by_signal", "finished"], cases=2, verified=2,
                 quarantined=[str(out / "a.nii.gz")])
    engine_files(run_dir / "part-1-of-2", clock, ["finished"], cases=2, verified=1, failed={"d": "exit -11"},
                 state="failed", exit_code=1)
    EventLog(run_dir / "events.jsonl", clock).record("parts_ended", codes={"0/2": 0, "1/2": 1})
    whole = clock.now
    engine_files(run_dir, clock, ["finished"], cases=4, verified=3, failed={}, state="failed", exit_code=1)
    state = StateStore(run_dir / "state.json")
    doc = state.load()
    doc["predict"]["cases_failed"] = ["d"]  # adopted from the part (its event is the part's)
    state.save(doc)
    d = prediction_report(out, now=clock.now)
    assert d is not None and d["exit"] == "incomplete"
    assert [(p["part"], p["exit"], p["attempts"], p["restarts"]) for p in d["parts"]] == [
        ("0/2", "finished", 2, 1), ("1/2", "incomplete", 1, 0)]
    assert d["cases_failed"] == [{"case": "d", "reason": "exit -11"}]
    assert (d["attempts"], d["restarts"], d["quarantined"]["count"]) == (4, 1, 1)
    assert d["wall_s"] == round(clock.now - T0, 1) and whole > T0
    assert "  part 1/2: incomplete (set aside: d), 1/2 verified, 1 attempt, 0 restarts, failed: d" in report_lines(d)


# ---- what is not a prediction, or not one any more ----

def test_no_run_directory_or_an_empty_one_is_no_report(tmp_path: Path) -> None:
    assert prediction_report(tmp_path / "never") is None
    (tmp_path / "out" / "supervisor" / "input").mkdir(parents=True)  # the staged links only
    assert prediction_report(tmp_path / "out") is None
    (tmp_path / "file").write_text("x")
    assert prediction_report(tmp_path / "file") is None


@pytest.mark.parametrize("damage", ["directories", "garbage", "wrong types"])
def test_damaged_files_give_a_report_not_a_traceback(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "out" / "supervisor"
    root.mkdir(parents=True)
    if damage == "directories":
        for name in ("pipeline.json", "events.jsonl", "state.json"):
            (root / name).mkdir()
    elif damage == "garbage":
        (root / "pipeline.json").write_bytes(b"\xff\xfe{not json")
        (root / "events.jsonl").write_bytes(b"\x00\x01\n[1, 2]\n{\"ts\": \"x\"}\n")
    else:
        (root / "pipeline.json").write_text(json.dumps({"state": 3, "steps": [1, {"name": 2}, {"name": "postprocess",
                                                        "run_dir": 5}], "cases_failed": ["a"], "exit_code": "x"}))
        EventLog(root / "events.jsonl").record("pipeline_started", steps="nope")
        EventLog(root / "events.jsonl").record("step_ended", step="postprocess", cases_total="3",
                                               cases_failed="b", seconds_per_case=True, restarts=-1, code=None)
        EventLog(root / "events.jsonl").record("output_corrupt", path=7, case=None)
        EventLog(root / "events.jsonl").record("case_failed", case=["x"])
    d = prediction_report(tmp_path / "out")
    assert d is not None and d["kind"] == "pipeline" and d["exit"] in EXITS
    json.dumps(d)
    assert report_lines(d)


def test_for_config_resolves_predict_output_from_the_files_folder(tmp_path: Path) -> None:
    engine_files(tmp_path / "pred" / "supervisor", Clock(), ["finished"], cases=1, verified=1)
    config = tmp_path / "run.yaml"
    assert for_config(config, None) is None
    d = for_config(config, "pred")
    assert d is not None and d["output"] == str((tmp_path / "pred").resolve()) and d["exit"] == "finished"


def test_a_stopped_run_yaml_prediction_is_stopped(tmp_path: Path) -> None:
    out, clock = tmp_path / "pred", Clock()
    engine_files(PredictLayout(out).supervisor_dir, clock, ["stopped"], cases=2, verified=1, state="stopped",
                 exit_code=75)
    d: dict[str, Any] | None = prediction_report(out)
    assert d is not None and d["exit"] == "stopped" and d["exit_code"] == 75
    (PredictLayout(out).supervisor_dir / "state.json").unlink()  # the events say it too
    d = prediction_report(out)
    assert d is not None and d["exit"] == "stopped"
