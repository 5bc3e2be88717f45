"""The preprocessing stage without nnU-Net: the shim's step lines and the cases written as progress, the stall that
a silence much longer than the gaps between cases is, -np fitted to the CPUs and halved by the remedy ladder, the
dataset's structural checks, and what is set aside before a relaunch. Files in tmp_path, an injected clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import parse_config
from supervisor.core.causes import Evidence, find_cause
from supervisor.core.classify import classify_exit
from supervisor.core.lifecycle import Decider, LoopState, Phase
from supervisor.core.messages import Begin, ChildExited, Launch, Launched, Record, Say
from supervisor.core.policy import RestartPolicy
from supervisor.core.remedies import (
    PREPROCESS_VAR,
    WORKERS_VAR,
    Change,
    Exhausted,
    Keep,
    Ladder,
    Remedies,
    RemedyOptions,
    Setting,
)
from supervisor.core.stall import StallRules
from supervisor.errors import ConfigError
from supervisor.evidence.allocation import Allocation
from supervisor.stages.preprocessing import data
from supervisor.stages.preprocessing.context import PreprocessContext
from supervisor.stages.preprocessing.stage import WORDS, PreprocessingStage, PreprocessWatch, fitted_processes, phase_of
from tests.conftest import FakeOps

DATASET = "Dataset901_Tiny"
PLANS = {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}
STEP = "nnunet-supervise preprocess: "
# nnU-Net's preprocessing (and the shim, which keeps its check) when a worker of its pool is gone
DEAD_WORKER_TAIL = ("Traceback (most recent call last):\n  File \"default_preprocessor.py\", line 280, in run\n"
                    "RuntimeError: Some background worker is 6 feet under. Yuck. \nOK jokes aside.\n"
                    "One of your background processes is missing.")


# ---- helpers ----

def raw_dataset(root: Path, cases: int = 2) -> Path:
    raw = root / "raw" / DATASET
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps({"numTraining": cases, "file_ending": ".nii.gz"}))
    return raw


def dataset_dir(root: Path, plans: Any = PLANS, fingerprint: str | None = "{}") -> Path:
    d = root / "pre" / DATASET
    d.mkdir(parents=True, exist_ok=True)
    if fingerprint is not None:
        (d / data.FINGERPRINT).write_text(fingerprint)
    if plans is not None:
        (d / "nnUNetPlans.json").write_text(plans if isinstance(plans, str) else json.dumps(plans))
    return d


def run_yaml(**sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"nnunet": {"dataset": DATASET, "configuration": "3d_fullres", "device": "cpu"},
                           "paths": {"nnUNet_raw": "raw", "nnUNet_preprocessed": "pre", "nnUNet_results": "res"}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


@pytest.fixture
def load(tmp_path: Path) -> Callable[[dict[str, Any]], PreprocessContext]:
    raw_dataset(tmp_path)
    (tmp_path / "pre").mkdir(exist_ok=True)
    (tmp_path / "res").mkdir(exist_ok=True)
    return lambda doc: PreprocessContext.load(tmp_path / "run.yaml", doc)


def allocation(cpus: float) -> Callable[..., Allocation]:
    return lambda environ=None: Allocation(host_cpus=16, cpus=cpus, cpu_source=f"{cpus:g} CPUs (test)",
                                           memory_bytes=None, memory_source="not known")


class Log:
    """An attempt log the shim writes its step lines into."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def step(self, *lines: str) -> None:
        with open(self.path, "a") as f:
            f.write("".join(f"{STEP}{line}\n" for line in lines))


# ---- the shim's steps ----

@pytest.mark.parametrize(("step", "phase"), [
    (None, "fingerprint"), ("fingerprint", "fingerprint"), ("fingerprint kept", "fingerprint"),
    ("planning", "planning"), ("plans kept", "planning"),
    ("configuration 2d: 3 of 6 cases already preprocessed, 3 to go", "preprocessing"),
    ("preprocessed tiny_001", "preprocessing"), ("gt_segmentations", "preprocessing"), ("done", "preprocessing"),
])
def test_phase_of_the_shims_step_lines(step: str | None, phase: str) -> None:
    assert phase_of(step) == phase


def test_the_watch_follows_the_step_lines_and_the_first_case_teaches_no_pace(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    w = PreprocessWatch(log.path, StallRules(startup_grace_s=3600, floor_s=20), 0.0, [], 0)
    assert w.poll(1, 0) is None and w.step is None and w.stall.phase == "fingerprint"
    log.step("fingerprint")
    w.poll(2, 0)
    assert w.step == "fingerprint" and w.stall.phase == "fingerprint" and w.stall.last_progress == 2
    log.step("planning")
    w.poll(3, 0)
    assert w.stall.phase == "planning"
    log.step("configuration 3d_fullres: 0 of 6 cases already preprocessed, 6 to go")
    w.poll(4, 0)
    assert w.stall.phase == "preprocessing"
    w.poll(50, 1)  # the first case carries the pool's start-up
    assert w.stall.epoch_times == [] and w.stall.last_progress == 50 and w.written == 1
    w.poll(60, 2)
    w.poll(90, 4)  # two cases in 30 s: 15 s apart
    assert w.stall.epoch_times == [10.0, 15.0] and w.stall.last_what == "4 case(s) written"


def test_a_resumed_attempts_first_new_case_teaches_no_pace(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-2.log")
    log.step("fingerprint kept", "plans kept", "configuration 3d_fullres: 3 of 6 cases already preprocessed")
    w = PreprocessWatch(log.path, StallRules(), 0.0, [7.0], written=3)
    w.poll(500, 4)
    assert w.stall.epoch_times == [7.0]  # the gaps of the attempts before, nothing new
    w.poll(509, 5)
    assert w.stall.epoch_times == [7.0, 9.0]


def test_a_silent_fingerprint_is_a_stall_once_after_the_step_grace(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    w = PreprocessWatch(log.path, StallRules(startup_grace_s=3600, floor_s=600), 0.0, [], 0)
    log.step("fingerprint")
    assert w.poll(100, 0) is None
    assert w.poll(3699, 0) is None
    why = w.poll(3700, 0)
    assert why is not None and "in the fingerprint phase" in why and "allowed 3600 s" in why
    assert "last sign of life: fingerprint" in why
    assert w.poll(3800, 0) is None and w.alarmed  # reported once


def test_a_silence_between_cases_is_a_stall_after_twice_the_longest_gap(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    log.step("fingerprint", "planning", "configuration 3d_fullres: 0 of 6 cases already preprocessed")
    w = PreprocessWatch(log.path, StallRules(startup_grace_s=3600, floor_s=20), 0.0, [], 0)
    for now, written in ((5, 0), (50, 1), (60, 2), (90, 4)):
        assert w.poll(now, written) is None
    assert w.stall.timeout_s() == 30  # 2 x 15 s
    assert w.poll(119, 4) is None
    why = w.poll(120, 4)
    assert why is not None and "in the preprocessing phase" in why and "gap between cases" in why
    assert "at least 20 s" in why and "last sign of life: 4 case(s) written" in why
    assert w.poll(500, 4) is None


def test_the_floor_holds_when_the_cases_come_fast_and_learned_gaps_carry_over(tmp_path: Path) -> None:
    log = Log(tmp_path / "attempt-1.log")
    log.step("configuration 3d_fullres: 0 of 6 cases already preprocessed")
    fast = PreprocessWatch(log.path, StallRules(startup_grace_s=3600, floor_s=600), 0.0, [1.0, 2.0], 0)
    fast.poll(1, 0)
    assert fast.stall.timeout_s() == 600
    assert fast.poll(600, 0) is None and fast.poll(601, 0) is not None
    slow = PreprocessWatch(log.path, StallRules(startup_grace_s=3600, floor_s=600), 0.0, [500.0], 0)
    slow.poll(1, 0)
    assert slow.stall.timeout_s() == 1000


# ---- -np fitted to the CPUs ----

def config(**sections: Any) -> Any:
    return parse_config(run_yaml(**sections))


def test_np_is_fitted_to_the_cpus_at_most_nnunets_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("supervisor.stages.preprocessing.stage.read_allocation", allocation(1.0))
    assert fitted_processes(config(), {}) == ({PREPROCESS_VAR: "1"}, "-np 1 (1 CPUs (test))")
    monkeypatch.setattr("supervisor.stages.preprocessing.stage.read_allocation", allocation(16.0))
    assert fitted_processes(config(), {})[0] == {PREPROCESS_VAR: "4"}
    monkeypatch.setattr("supervisor.stages.preprocessing.stage.read_allocation", allocation(2.5))
    assert fitted_processes(config(), {})[0] == {PREPROCESS_VAR: "2"}


def test_np_is_not_fitted_over_what_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_allocation(environ: Any = None) -> Allocation:
        raise AssertionError("the allocation is not read when nothing is fitted")

    monkeypatch.setattr("supervisor.stages.preprocessing.stage.read_allocation", no_allocation)
    sized, why = fitted_processes(config(preprocess={"num_processes": 3}), {})
    assert sized == {} and "preprocess.num_processes" in why
    sized, why = fitted_processes(config(nnunet={"env": {PREPROCESS_VAR: "6"}}), {})
    assert sized == {} and "as you set it" in why
    assert fitted_processes(config(), {PREPROCESS_VAR: "6"})[0] == {}
    sized, why = fitted_processes(config(remedies={"fit_allocation": False}), {})
    assert sized == {} and "fit_allocation: false" in why


# ---- the remedy ladder ----

def ladder(user: dict[str, str] | None = None, **options: Any) -> Ladder:
    user = user or {}
    return Ladder(RemedyOptions(**options), Setting(default_workers=12, user_env=user,
                                                    user_source={k: "nnunet.env" for k in user}))


@pytest.mark.parametrize("cause", ["host_oom", "workers_died"])
@pytest.mark.parametrize("phase", ["fingerprint", "planning", "preprocessing"])
def test_dying_preprocessing_workers_halve_np_to_one_then_give_up(cause: str, phase: str) -> None:
    lad, r, outs = ladder(), Remedies(), []
    for attempt in range(2, 6):
        out = lad.next(cause, r, attempt, epoch=0, progressed=False, phase=phase)
        outs.append(out)
        if isinstance(out, Change):
            assert out.applied.variable == PREPROCESS_VAR
            r = r.with_change(out.applied)
    changes = [o.applied for o in outs if isinstance(o, Change)]
    assert [(a.old, a.new) for a in changes] == [(None, "2"), ("2", "1")]
    assert isinstance(outs[2], Exhausted) and f"{PREPROCESS_VAR} is 1 already" in outs[2].message
    assert r.value(WORKERS_VAR) is None  # the training's workers are not the preprocessing's


def test_at_np_one_after_progress_the_preprocessing_relaunches_unchanged() -> None:
    r = Remedies()
    for attempt in (2, 3):
        out = ladder().next("host_oom", r, attempt, 0, False, "preprocessing")
        assert isinstance(out, Change)
        r = r.with_change(out.applied)
    assert isinstance(ladder().next("host_oom", r, 4, 5, True, "preprocessing"), Keep)


def test_the_users_np_is_not_overridden() -> None:
    out = ladder(user={PREPROCESS_VAR: "8"}).next("host_oom", Remedies(), 2, 0, False, "preprocessing")
    assert isinstance(out, Keep)
    assert f"{PREPROCESS_VAR}=8 is your setting (nnunet.env)" in out.message and "would set 4" in out.message
    allowed = ladder(user={PREPROCESS_VAR: "8"}, override_user=True).next("host_oom", Remedies(), 2, 0, False,
                                                                          "preprocessing")
    assert isinstance(allowed, Change) and (allowed.applied.old, allowed.applied.new) == ("8", "4")


def test_in_training_the_same_causes_still_halve_the_augmentation_workers() -> None:
    for cause in ("host_oom", "workers_died"):
        out = ladder().next(cause, Remedies(), 2, 0, False, "training")
        assert isinstance(out, Change) and out.applied.variable == WORKERS_VAR and out.applied.new == "6"


# ---- the cause ----

def test_nnunets_dead_preprocessing_worker_is_workers_died_and_retryable() -> None:
    c = classify_exit(1, DEAD_WORKER_TAIL, finished=False)
    assert c.kind == "workers_died" and c.retryable
    assert "6 feet under" in c.summary
    cause = find_cause(c.kind, 1, Evidence(phase="preprocessing"))
    assert cause is not None and cause.name == "workers_died"
    assert "preprocessing workers" in cause.summary and "augmentation" not in cause.summary
    training = find_cause(c.kind, 1, Evidence(phase="training"))
    assert training is not None and "augmentation workers" in training.summary


# ---- what is preprocessed, from the config ----

def test_a_run_yaml_preprocesses_its_configuration_unless_preprocess_names_others(load: Any, tmp_path: Path) -> None:
    p = load(run_yaml())
    assert p.configurations == ["3d_fullres"] and not p.experiment
    assert p.dataset_name == DATASET and p.dataset_id == 901 and p.raw_dataset == tmp_path / "raw" / DATASET
    assert p.layout.dataset_dir == tmp_path / "pre" / DATASET
    assert load(run_yaml(preprocess={"configurations": ["2d", "3d_fullres"]})).configurations == ["2d", "3d_fullres"]
    assert load(run_yaml(nnunet={"dataset": 901})).dataset_name == DATASET  # an id, resolved in nnUNet_raw


def test_an_experiment_file_preprocesses_its_configurations_or_nnunets_three(load: Any) -> None:
    doc = run_yaml()
    doc["nnunet"] = {"dataset": DATASET, "device": "cpu"}
    p = load({**doc, "experiment": {"configurations": ["2d"]}})
    assert p.experiment and p.configurations == ["2d"]
    assert load({**doc, "experiment": {}}).configurations == ["2d", "3d_fullres", "3d_lowres"]
    both = load({**doc, "experiment": {"configurations": ["2d"]}, "preprocess": {"configurations": ["3d_lowres"]}})
    assert both.configurations == ["3d_lowres"]


def test_without_nnunet_raw_the_config_error_names_it(load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    doc = run_yaml()
    del doc["paths"]["nnUNet_raw"]
    with pytest.raises(ConfigError) as err:
        load(doc)
    assert any(p.startswith("paths.nnUNet_raw:") for p in err.value.problems)
    assert err.value.source.endswith("run.yaml")


def test_a_raw_dataset_without_dataset_json_is_a_config_error(load: Any, tmp_path: Path) -> None:
    (tmp_path / "raw" / DATASET / "dataset.json").unlink()
    with pytest.raises(ConfigError) as err:
        load(run_yaml())
    assert str(tmp_path / "raw" / DATASET / "dataset.json") in str(err.value)
    assert err.value.problems[0].startswith("nnunet.dataset:")


# ---- the dataset's structure ----

def test_read_json_tells_absent_from_torn(tmp_path: Path) -> None:
    assert data.read_json(tmp_path / "none.json") == (None, None)
    (tmp_path / "torn.json").write_text('{"configurations": {')
    doc, problem = data.read_json(tmp_path / "torn.json")
    assert doc is None and problem is not None and problem.startswith("torn.json is unreadable")
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert data.read_json(tmp_path / "ok.json") == ({"a": 1}, None)


def test_without_fingerprint_or_plans_nothing_is_complete(tmp_path: Path) -> None:
    raw = raw_dataset(tmp_path)
    d = dataset_dir(tmp_path, plans=None, fingerprint=None)
    v = data.verify(d, raw, "nnUNetPlans", ["3d_fullres"])
    assert not v.complete
    assert v.problems == [f"{data.FINGERPRINT} is missing or unreadable", "nnUNetPlans.json is missing or unreadable"]
    (d / "nnUNetPlans.json").write_text('{"configurations": {"3d_fu')  # torn mid-write
    s = data.survey(d, raw, "nnUNetPlans", ["3d_fullres"])
    assert s.plans is None and s.folders == {} and s.cases_done == 0 and s.cases_total is None
    assert "nnUNetPlans.json is missing or unreadable" in data.verify(d, raw, "nnUNetPlans", ["3d_fullres"]).problems


def test_the_survey_counts_pkl_files_and_skips_what_the_plans_lack(tmp_path: Path) -> None:
    raw = raw_dataset(tmp_path, cases=3)
    d = dataset_dir(tmp_path)
    folder = d / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    for name in ("a.b2nd", "a_seg.b2nd", "a.pkl", "b.b2nd", "b.pkl", "c.b2nd"):  # c: arrays only, not written
        (folder / name).write_bytes(b"x")
    assert data.cases_written(folder) == 2 and data.cases_written(d / "absent") == 0
    s = data.survey(d, raw, "nnUNetPlans", ["3d_fullres", "2d"])
    assert s.fingerprint and s.skipped == ["2d"] and s.done == {"3d_fullres": 2}
    assert s.cases_done == 2 and s.cases_total == 3
    assert s.document()["configurations"] == {"3d_fullres": {"done": 2, "total": 3}}
    v = data.verify(d, raw, "nnUNetPlans", ["3d_fullres", "2d"])
    assert not v.complete and "gt_segmentations/ holds 0 of 3 segmentations" in v.problems


def test_quarantine_case_moves_exactly_that_cases_files(tmp_path: Path) -> None:
    folder = tmp_path / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    names = ["case.b2nd", "case_seg.b2nd", "case.pkl", "case1.b2nd", "case1_seg.b2nd", "case1.pkl"]
    for name in names:
        (folder / name).write_text(name)
    into = tmp_path / "quarantine" / "attempt-2" / folder.name
    assert data.quarantine_case(folder, "case", into) == ["case.b2nd", "case.pkl", "case_seg.b2nd"]
    assert sorted(p.name for p in folder.iterdir()) == ["case1.b2nd", "case1.pkl", "case1_seg.b2nd"]
    assert (into / "case_seg.b2nd").read_text() == "case_seg.b2nd"


def test_quarantine_file_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    into = tmp_path / "quarantine" / "attempt-3"
    for n in range(3):
        (tmp_path / "nnUNetPlans.json").write_text(f"torn {n}")
        data.quarantine_file(tmp_path / "nnUNetPlans.json", into)
    assert not (tmp_path / "nnUNetPlans.json").exists()
    assert {p.name: p.read_text() for p in into.iterdir()} == {
        "nnUNetPlans.json": "torn 0", "nnUNetPlans.json.1": "torn 1", "nnUNetPlans.json.2": "torn 2"}


# ---- the lifecycle in the preprocessing's words ----

def running(d: Decider) -> LoopState:
    s, actions = d.step(LoopState(), Begin(finished=False, resume=False), 0.0)
    assert actions == [Launch(1, False)]
    s, _ = d.step(s, Launched(100, ("python", "-m", "supervisor.trainer.preprocess"), False), 0.0)
    assert s.phase is Phase.RUNNING
    return s


def says(actions: list[Any]) -> list[str]:
    return [a.message for a in actions if isinstance(a, Say)]


def decider(ladder: Ladder | None = None) -> Decider:
    return Decider(RestartPolicy(backoff_initial_s=1), stop_grace_s=30, rand=lambda: 0.0, ladder=ladder,
                   words=WORDS)


def test_a_finished_preprocessing_says_so_in_its_words() -> None:
    d = decider()
    s, actions = d.step(running(d), ChildExited(0, "", True, 12, phase="preprocessing"), 1.0)
    assert s.phase is Phase.FINISHED
    assert f"attempt 1 exited: {WORDS.finished}; 12 case(s) preprocessed. Done." in says(actions)
    assert "checkpoint" not in " ".join(says(actions))


def test_a_retryable_failure_relaunches_with_the_cases_not_yet_written() -> None:
    d = decider(Ladder(RemedyOptions(), Setting(default_workers=12, user_env={}, user_source={})))
    ev = ChildExited(1, DEAD_WORKER_TAIL, False, 3, Evidence(phase="preprocessing"), "preprocessing")
    s, actions = d.step(running(d), ev, 1.0)
    assert s.phase is Phase.BACKOFF and s.remedies.value(PREPROCESS_VAR) == "2"
    line = says(actions)[-1]
    assert "3 case(s) preprocessed; relaunching" in line
    assert "relaunching with the cases not yet written (those written are kept)" in line
    remedy = [a.fields for a in actions if isinstance(a, Record) and a.event == "remedy"]
    assert remedy[0]["variable"] == PREPROCESS_VAR and "preprocessing process(es)" in remedy[0]["message"]


def test_an_unverified_exit_0_is_not_described_as_a_missing_checkpoint() -> None:
    d = decider()
    _, actions = d.step(running(d), ChildExited(0, "", False, 4, phase="preprocessing"), 1.0)
    line = says(actions)[-1]
    assert "relaunching with the cases not yet written" in line
    assert "checkpoint_final" not in line and "fold" not in line


# ---- set aside before a relaunch ----

@pytest.fixture
def stage(load: Any, tmp_path: Path) -> PreprocessingStage:
    return PreprocessingStage(load(run_yaml(preprocess={"num_processes": 2})), FakeOps([]), environ={})


def test_a_torn_plans_file_and_fingerprint_are_set_aside_into_the_attempts_quarantine(
        stage: PreprocessingStage, tmp_path: Path) -> None:
    d = dataset_dir(tmp_path, plans='{"configurations": {"3d_', fingerprint='{"spac')
    records = stage._set_aside(3)
    into = d / "supervisor" / "quarantine" / "attempt-3"
    assert sorted(p.name for p in into.iterdir()) == [data.FINGERPRINT, "nnUNetPlans.json"]
    assert not (d / data.FINGERPRINT).exists() and not (d / "nnUNetPlans.json").exists()
    assert [r.event for r in records] == ["file_quarantined", "file_quarantined"]
    by_path = {Path(r.fields["path"]).name: r.fields for r in records}
    assert by_path["nnUNetPlans.json"]["quarantined_to"] == str(into / "nnUNetPlans.json")
    assert "nnUNetPlans.json is unreadable" in by_path["nnUNetPlans.json"]["reason"]
    assert (into / data.FINGERPRINT).read_text() == '{"spac'


def test_intact_files_stay_and_a_damaged_written_case_is_set_aside(stage: PreprocessingStage, tmp_path: Path) -> None:
    d = dataset_dir(tmp_path)
    folder = d / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    for name in ("c0.b2nd", "c0_seg.b2nd", "c0.pkl", "c1.b2nd"):  # c0: counted as written but junk; c1: unwritten
        (folder / name).write_bytes(b"junk")
    records = stage._set_aside(2)
    assert (d / data.FINGERPRINT).is_file() and (d / "nnUNetPlans.json").is_file()
    assert [r.event for r in records] == ["case_quarantined"]
    assert records[0].fields["case"] == "c0" and records[0].fields["files"] == ["c0.b2nd", "c0.pkl", "c0_seg.b2nd"]
    assert sorted(p.name for p in folder.iterdir()) == ["c1.b2nd"]
    assert (d / "supervisor" / "quarantine" / "attempt-2" / folder.name / "c0.pkl").is_file()


def test_the_stages_ladder_respects_the_users_np(load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("supervisor.stages.preprocessing.stage.read_allocation", allocation(2.0))
    fitted = PreprocessingStage(load(run_yaml()), FakeOps([]), environ={})
    assert fitted.sized == {PREPROCESS_VAR: "2"} and fitted.ladder is not None
    out = fitted.ladder.next("host_oom", Remedies(), 2, 0, False, "preprocessing")
    assert isinstance(out, Change) and (out.applied.old, out.applied.new) == (None, "1")
    users = PreprocessingStage(load(run_yaml(nnunet={"env": {PREPROCESS_VAR: "8"}})), FakeOps([]), environ={})
    assert users.sized == {} and users.ladder is not None
    kept = users.ladder.next("host_oom", Remedies(), 2, 0, False, "preprocessing")
    assert isinstance(kept, Keep) and f"{PREPROCESS_VAR}=8 is your setting (nnunet.env)" in kept.message
    np_set = PreprocessingStage(load(run_yaml(preprocess={"num_processes": 3})), FakeOps([]), environ={})
    assert np_set.ladder is not None
    kept = np_set.ladder.next("host_oom", Remedies(), 2, 0, False, "preprocessing")
    assert isinstance(kept, Keep) and "(preprocess.num_processes)" in kept.message
