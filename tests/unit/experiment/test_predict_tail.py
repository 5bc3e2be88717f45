"""An experiment with a predict section: the scheduler's last phase (find_best's choice predicted, a stop during
it, its exit code kept or made 1) and what the experiment file allows (both folders, no folds, find_best on)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import ConfigError
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.experiment.schedule import (
    Action,
    Begin,
    CellState,
    Device,
    Exit,
    FindBestDone,
    FoldEnded,
    Phase,
    PredictDone,
    Record,
    RunFindBest,
    RunPredict,
    Scheduler,
    State,
    StopPredict,
    StopRequested,
)
from supervisor.layout import PipelineLayout
from tests.unit.experiment.conftest import experiment

CELL = Cell("2d", 0)


def finding_best(predict: bool) -> tuple[Scheduler, State]:
    """One cell, finished: the experiment is at find_best."""
    sch = Scheduler({}, True, 3, ("2d",), predict=predict)
    s, _ = sch.step(State(cells={CELL: CellState()}), Begin((Device("cpu", 1.0),), {"2d": 1.0}))
    s, actions = sch.step(s, FoldEnded(CELL, 0))
    assert actions[-1] == RunFindBest(("2d",)) and s.phase is Phase.FINDING_BEST
    return sch, s


def predicting() -> tuple[Scheduler, State, list[Action]]:
    sch, s = finding_best(predict=True)
    s, actions = sch.step(s, FindBestDone(True, "best: 2d"))
    return sch, s, list(actions)


def exits(actions: Sequence[object]) -> list[Exit]:
    return [a for a in actions if isinstance(a, Exit)]


# ---- the scheduler ----

def test_find_best_done_starts_the_prediction_instead_of_exiting() -> None:
    _sch, s, actions = predicting()
    assert s.phase is Phase.PREDICTING and s.exit_code is None
    assert actions[-1] == RunPredict() and exits(actions) == []
    assert Record("find_best", {"ok": True, "message": "best: 2d"}) in actions


@pytest.mark.parametrize(("code", "exit_code", "kind"), [(0, 0, "finished"), (75, 75, "stopped"),
                                                         (1, 1, "incomplete"), (70, 1, "incomplete"),
                                                         (3, 1, "incomplete"), (-9, 1, "incomplete")])
def test_the_predictions_end_is_the_experiments(code: int, exit_code: int, kind: str) -> None:
    sch, s, _ = predicting()
    s, actions = sch.step(s, PredictDone(code, f"prediction exited {code}"))
    assert s.phase is Phase.DONE and s.exit_code == exit_code and actions[-1] == Exit(exit_code)
    assert Record("predicted", {"code": code, "message": f"prediction exited {code}"}) in actions
    assert any(isinstance(a, Record) and a.event == kind for a in actions)


def test_a_stop_while_predicting_stops_it_resumably_and_exits_75_once_it_ended() -> None:
    sch, s, _ = predicting()
    s, actions = sch.step(s, StopRequested("SIGTERM"))
    assert s.phase is Phase.STOPPING and StopPredict() in actions and exits(actions) == []
    assert sch.step(s, StopRequested("SIGINT")) == (s, [])  # once
    s, actions = sch.step(s, PredictDone(75, "stopped"))
    assert s.phase is Phase.DONE and actions[-1] == Exit(75)


def test_a_failed_find_best_predicts_nothing() -> None:
    sch, s = finding_best(predict=True)
    s, actions = sch.step(s, FindBestDone(False, "find_best failed (exit 1)"))
    assert s.phase is Phase.DONE and actions[-1] == Exit(1)
    assert not any(isinstance(a, RunPredict) for a in actions)


def test_without_a_predict_section_find_best_ends_the_experiment() -> None:
    sch, s = finding_best(predict=False)
    s, actions = sch.step(s, FindBestDone(True, "best: 2d"))
    assert s.phase is Phase.DONE and actions[-1] == Exit(0)
    assert not any(isinstance(a, RunPredict) for a in actions)
    assert sch.step(s, PredictDone(1, "late")) == (s, [])  # nothing after DONE


def test_a_prediction_end_before_the_prediction_phase_is_ignored() -> None:
    sch = Scheduler({}, True, 3, ("2d",), predict=True)
    s, _ = sch.step(State(cells={CELL: CellState()}), Begin((Device("cpu", 1.0),), {"2d": 1.0}))
    assert s.phase is Phase.RUNNING
    assert sch.step(s, PredictDone(0, "stray")) == (s, [])


# ---- the experiment file ----

@pytest.mark.parametrize(("sections", "words"), [
    ({"predict": {"output": "out"}}, "both predict.input and predict.output"),
    ({"predict": {"input": "in"}}, "both predict.input and predict.output"),
    ({"predict": {"input": "in", "output": "out", "folds": [0]}}, "the folds find_best used"),
    ({"predict": {"input": "in", "output": "out"}, "experiment": {"find_best": False}},
     "set experiment.find_best: true"),
])
def test_a_predict_section_must_predict_what_find_best_chose(
        tmp_path: Path, sections: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        ExperimentContext.load(experiment(tmp_path, **sections))
    assert any(words in p for p in err.value.problems), err.value.problems


def test_a_predict_section_makes_the_experiment_predict_into_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = ExperimentContext.load(experiment(tmp_path, predict={"input": "in", "output": "segs"}))
    assert exp.predicts
    assert exp.predict_layout() == PipelineLayout(tmp_path / "segs")  # relative to the file's folder
    assert exp.predict_layout().state_file == tmp_path / "segs" / "supervisor" / "pipeline.json"
    monkeypatch.chdir(tmp_path / "pre")
    assert exp.predict_layout("mine").output == tmp_path / "pre" / "mine"  # -o: relative to the current folder
    assert not ExperimentContext.load(experiment(tmp_path / "plain")).predicts
