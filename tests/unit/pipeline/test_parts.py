"""Parts of a prediction run at once on one machine (pipeline.parts), with fake children and an injected clock: each
part's command and GPU, a stop passed on, a part held by an earlier live supervisor followed and run again, what
the parts' exits mean for the whole; and the experiment's pipeline in parts (fake engine): the parts before the
whole's steps, a part's own steps and run directories."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from supervisor.layout import PipelineLayout
from supervisor.pipeline.parts import PartsRun, verdict
from supervisor.pipeline.predict import PredictionPipeline
from supervisor.rundir.eventlog import EventLog, read_events
from supervisor.rundir.lock import RunLock
from supervisor.stages.prediction.parts import Part
from tests.unit.pipeline.test_predict import FakeEngine, finish, name, setup


class FakeChild:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, codes: list[int | None]) -> None:
        self.argv, self.env, self.log, self.codes = argv, env, log, codes
        self.pid = 4242
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.codes[:] = [75]


class Spawner:
    """Children that answer poll() from a script per part: None (running) until their exit code."""

    def __init__(self, scripts: dict[str, list[list[int | None]]]) -> None:
        self.scripts = scripts
        self.children: list[FakeChild] = []

    def __call__(self, argv: list[str], env: dict[str, str], log: Path) -> FakeChild:
        part = argv[argv.index("--part") + 1]
        child = FakeChild(argv, env, log, self.scripts[part].pop(0))
        self.children.append(child)
        return child


def parts_run(tmp_path: Path, devices: list[str | None], spawner: Spawner, stop: list[str] | None = None,
              sleep: Any = None) -> PartsRun:
    stop = [] if stop is None else stop
    return PartsRun(["predict", "/x/run.yaml"], devices, tmp_path, "supervisor.lock",
                    EventLog(tmp_path / "events.jsonl"), lambda: stop[0] if stop else None, spawn=spawner,
                    sleep=sleep or (lambda s: None), environ={"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"})


def test_each_part_is_a_supervisor_of_its_own_on_its_gpu(tmp_path: Path) -> None:
    spawner = Spawner({"0/2": [[None, None, 0]], "1/2": [[None, 1]]})
    codes = parts_run(tmp_path, ["0", "1"], spawner).run()
    assert codes == {Part(0, 2): 0, Part(1, 2): 1}
    a, b = spawner.children
    assert a.argv == [sys.executable, "-m", "supervisor", "predict", "/x/run.yaml", "--part", "0/2"]
    assert (a.env["CUDA_VISIBLE_DEVICES"], b.env["CUDA_VISIBLE_DEVICES"]) == ("0", "1")
    assert a.log == tmp_path / "part-0-of-2.log"
    kinds = [(e["event"], e.get("parts"), e.get("codes")) for e in read_events(tmp_path / "events.jsonl")]
    assert kinds == [("parts_started", 2, None), ("parts_ended", None, {"0/2": 0, "1/2": 1})]


def test_on_the_cpu_the_parts_keep_the_environment(tmp_path: Path) -> None:
    spawner = Spawner({"0/2": [[0]], "1/2": [[0]]})
    parts_run(tmp_path, [None, None], spawner).run()
    assert all(c.env["CUDA_VISIBLE_DEVICES"] == "0,1" for c in spawner.children)


def test_a_stop_is_passed_on_once_and_the_parts_end_resumably(tmp_path: Path) -> None:
    stop: list[str] = []
    spawner = Spawner({"0/2": [[None] * 50], "1/2": [[None] * 50]})
    ticks = []

    def sleep(s: float) -> None:
        ticks.append(s)
        if len(ticks) == 3:
            stop.append("SIGTERM")

    codes = parts_run(tmp_path, [None, None], spawner, stop, sleep).run()
    assert set(codes.values()) == {75} and verdict(codes) == 75
    assert [c.signals for c in spawner.children] == [[signal.SIGTERM], [signal.SIGTERM]]


def test_a_part_held_by_an_earlier_supervisor_is_followed_then_run_again(tmp_path: Path) -> None:
    (tmp_path / "part-1-of-2").mkdir()
    held = RunLock(tmp_path / "part-1-of-2" / "supervisor.lock")
    held.acquire()
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 4:
            held.release()  # the earlier supervisor ends

    spawner = Spawner({"0/2": [[None, 0]], "1/2": [[3], [0]]})
    codes = parts_run(tmp_path, [None, None], spawner, sleep=sleep).run()
    assert codes == {Part(0, 2): 0, Part(1, 2): 0}
    assert len(spawner.children) == 3  # part 1 started again once its lock was free


def test_what_the_parts_exits_mean_for_the_whole() -> None:
    p0, p1 = Part(0, 2), Part(1, 2)
    assert verdict({p0: 0, p1: 0}) is None
    assert verdict({p0: 0, p1: 1}) is None  # cases set aside: the whole keeps them aside and combines the rest
    assert verdict({p0: 70, p1: 0}) is None  # a crash: the whole predicts what it left
    assert verdict({p0: 75, p1: 0}) == 75
    assert verdict({p0: 2, p1: 75}) == 2
    assert verdict({p0: 3, p1: 0}) == 3


# ---- the experiment's prediction in parts ----

def test_the_parts_run_before_the_whole_verifies_and_combines(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")
    out = tmp_path / "out"
    seen: list[PartsRun] = []

    def fake_parts(run: PartsRun) -> dict[Part, int]:
        seen.append(run)
        return {p: 0 for p in run.parts}

    engine = FakeEngine(finish, finish, finish, finish)
    pipeline = PredictionPipeline(exp, tmp_path / "in", out, engine=engine, devices=["0", "1"], parts_run=fake_parts)
    assert pipeline.run() == 0
    (run,) = seen
    assert list(run.devices) == ["0", "1"] and run.lock_name == "pipeline.lock"
    assert run.command == ["predict", str(exp.config_path), "-i", str(tmp_path / "in"), "-o", str(out)]
    assert len(engine.seen) == 4  # then the whole's four steps, each verifying what the parts made
    kinds = [e["event"] for e in read_events(PipelineLayout(out).events_file)]
    assert kinds[:1] == ["pipeline_started"] and kinds[-1] == "finished"


def test_a_stopped_part_stops_the_whole_before_its_steps(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d")
    engine = FakeEngine()
    pipeline = PredictionPipeline(exp, tmp_path / "in", tmp_path / "out", engine=engine, devices=[None, None],
                                  parts_run=lambda run: {p: 75 for p in run.parts})
    assert pipeline.run() == 75 and engine.seen == []


def test_a_part_predicts_with_each_model_in_run_directories_of_its_own(tmp_path: Path) -> None:
    exp = setup(tmp_path, "2d", "3d_fullres")
    out = tmp_path / "out"
    engine = FakeEngine(finish, finish)
    assert PredictionPipeline(exp, tmp_path / "in", out, engine=engine, part=Part(1, 2)).run() == 0
    models = out / "supervisor" / "models"
    assert [(s["kind"], s["output"], s["run_dir"]) for s in engine.seen] == [
        ("PredictionStage", models / name("2d"), models / name("2d") / "supervisor" / "part-1-of-2"),
        ("PredictionStage", models / name("3d_fullres"),
         models / name("3d_fullres") / "supervisor" / "part-1-of-2")]
    part_layout = PipelineLayout(out, out / "supervisor" / "part-1-of-2")
    assert part_layout.state_file.is_file() and not PipelineLayout(out).state_file.exists()


def test_no_parts_keeps_the_whole_on_one_device(tmp_path: Path, monkeypatch: Any) -> None:
    from supervisor.experiment.context import ExperimentContext
    from supervisor.pipeline import predict as module
    from tests.unit.experiment.conftest import experiment

    setup(tmp_path, "2d")
    exp = ExperimentContext.load(experiment(tmp_path, predict={"input": "in", "output": "out", "parts": 3}))
    made: list[Any] = []
    monkeypatch.setattr(module.PredictionPipeline, "run", lambda self: made.append(self.devices) or 0)
    assert module.predict_experiment(exp, None, None, no_parts=True) == 0
    assert module.predict_experiment(exp, None, None) == 0
    assert made == [[None], [None, None, None]]


def test_a_bad_part_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from supervisor.cli import main

    (tmp_path / "run.yaml").write_text("nnunet: {dataset: 1, configuration: 2d}\n")
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "run.yaml"), "--part", "2/2"])
    assert r.exit_code == 2 and "0 <= K < N" in r.output
