"""A prediction cut into parts (stages.prediction.parts): K/N parsed and refused clearly, the cut of the cases
(disjoint, complete, independent of what is done), how many parts auto means, a part's own run directory, the whole
and a part excluding each other by their locks, cases set aside kept aside across runs and parts (and tried again
when their input changed, or with --retry-failed), and the parts' verdicts taken in by the whole."""

# ruff: noqa: F811 - the prediction stage's fixtures, imported, are redefined as the tests' arguments
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import LockedError
from supervisor.layout import part_dirs
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.lock import RunLock
from supervisor.stages.prediction.parts import Part, live_parts, parts_wanted
from supervisor.stages.prediction.stage import PredictionStage, input_stamp
from tests.conftest import FakeOps
from tests.unit.stages.test_prediction import (  # noqa: F401 - fixtures among them
    FakeVerify,
    input_folder,
    load,
    outputs,
    run_yaml,
    verify,
)

NAMES = [f"c{i:02d}_0000.nii.gz" for i in range(7)]


@pytest.mark.parametrize("text", ["1/2", " 0 / 4 ", "0/1"])
def test_k_of_n_parses(text: str) -> None:
    part = Part.parse(text)
    assert str(part) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["2/2", "0/0", "-1/3", "a/b", "3", ""])
def test_a_bad_part_says_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="K/N"):
        Part.parse(text)


def test_the_parts_cut_the_cases_disjoint_and_complete_in_the_order_of_the_ids() -> None:
    cases = {f"c{i:02d}": i for i in range(7)}
    cut = [Part(k, 3).take(cases) for k in range(3)]
    assert [list(c) for c in cut] == [["c00", "c03", "c06"], ["c01", "c04"], ["c02", "c05"]]
    assert sorted(k for c in cut for k in c) == sorted(cases)
    # what is done changes nothing: the cut is of the input alone
    assert list(Part(1, 3).take(dict(reversed(list(cases.items()))))) == ["c01", "c04"]


def test_more_parts_than_cases_leaves_some_empty() -> None:
    assert Part(2, 3).take({"a": 1, "b": 2}) == {}


@pytest.mark.parametrize(("parts", "device", "gpus", "slots", "want"), [
    (3, "cuda", "auto", 1, 3), ("auto", "cuda", ["0", "1"], 1, 2), ("auto", "cuda", "auto", 1, 1),
    ("auto", "cpu", "auto", 2, 2), ("auto", "cpu", "auto", 1, 1)])
def test_auto_is_one_part_per_gpu_or_cpu_slot(parts: Any, device: str, gpus: Any, slots: int, want: int) -> None:
    assert parts_wanted(parts, device, gpus, slots) == want


# ---- a part as a stage ----

def make_stage(load: Any, tmp_path: Path, part: Part | None = None, retry: bool = False, **sections: Any) -> Any:
    from dataclasses import replace

    sections.setdefault("predict", {"input": "inm"})
    pctx = load(run_yaml(**sections), part=part)
    return PredictionStage(replace(pctx, retry_failed=retry), FakeOps([{"outcome": "finish"}] * 3), environ={})


@pytest.fixture
def many(tmp_path: Path) -> Path:
    input_folder(tmp_path / "inm", NAMES)
    return tmp_path


def test_a_part_predicts_its_cases_in_a_run_directory_of_its_own(load: Any, many: Path, verify: FakeVerify) -> None:
    stage = make_stage(load, many, Part(1, 3))
    assert sorted(stage.cases) == ["c01", "c04"]
    assert stage.layout.supervisor_dir == many / "out" / "supervisor" / "part-1-of-3"
    assert stage.pctx.output == many / "out"  # the outputs go where the whole's do
    staged = stage._stage_input()
    assert staged == many / "out" / "supervisor" / "part-1-of-3" / "input"
    assert sorted(p.name for p in staged.iterdir()) == ["c01_0000.nii.gz", "c04_0000.nii.gz"]


def test_an_empty_part_is_finished_at_once(load: Any, many: Path, verify: FakeVerify) -> None:
    input_folder(many / "in2", NAMES[:2])
    stage = make_stage(load, many, Part(2, 3), predict={"input": "in2"})
    assert stage.cases == {} and stage.begin().finished


def test_the_whole_refuses_while_a_part_is_run_by_a_live_supervisor(load: Any, many: Path,
                                                                     verify: FakeVerify) -> None:
    part = make_stage(load, many, Part(0, 2))
    part.layout.supervisor_dir.mkdir(parents=True)
    held = RunLock(part.layout.lock_file)
    held.acquire()
    try:
        with pytest.raises(LockedError, match="part 0/2"):
            make_stage(load, many).remember({})
        make_stage(load, many, Part(1, 2)).remember({})  # another part is no conflict
    finally:
        held.release()
    make_stage(load, many).remember({})


def test_a_part_refuses_while_the_whole_runs(load: Any, many: Path, verify: FakeVerify) -> None:
    whole = make_stage(load, many)
    whole.layout.supervisor_dir.mkdir(parents=True)
    held = RunLock(whole.layout.lock_file)
    held.acquire()
    try:
        with pytest.raises(LockedError, match="the whole prediction"):
            make_stage(load, many, Part(1, 2)).remember({})
    finally:
        held.release()


def set_aside(stage: Any, case: str) -> None:
    stage.layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
    EventLog(stage.layout.events_file).record("case_failed", case=case, reason="exit 1: Background workers died",
                                              inputs=input_stamp(stage.cases[case]))


def test_a_case_set_aside_stays_aside_when_the_prediction_is_run_again(load: Any, many: Path,
                                                                         verify: FakeVerify) -> None:
    first = make_stage(load, many)
    set_aside(first, "c03")
    outputs(many / "out", *[c for c in first.cases if c != "c03"])
    again = make_stage(load, many)
    assert again.begin().finished
    assert again.failed == {"c03": "exit 1: Background workers died"}
    assert "c03" not in [p.name[:3] for p in again._stage_input().iterdir()]


def test_a_case_whose_input_was_replaced_or_with_retry_failed_is_tried_again(load: Any, many: Path,
                                                                             verify: FakeVerify) -> None:
    first = make_stage(load, many)
    set_aside(first, "c03")
    outputs(many / "out", *[c for c in first.cases if c != "c03"])
    retried = make_stage(load, many, retry=True)
    assert not retried.begin().finished and retried.failed == {}
    (many / "inm" / "c03_0000.nii.gz").write_bytes(b"a new, good image of c03")
    replaced = make_stage(load, many)
    assert not replaced.begin().finished and replaced.failed == {}


def test_the_whole_keeps_aside_what_a_part_set_aside(load: Any, many: Path, verify: FakeVerify) -> None:
    part = make_stage(load, many, Part(1, 2))
    set_aside(part, "c03")
    assert [d.name for d in part_dirs(many / "out" / "supervisor")] == ["part-1-of-2"]
    outputs(many / "out", *[c for c in part.cases if c != "c03"], "c00", "c02", "c04", "c06")
    whole = make_stage(load, many)
    assert whole.begin().finished and list(whole.failed) == ["c03"]
    # ... but a part's set-aside case does not reach another part
    assert make_stage(load, many, Part(0, 2)).failed == {}


def test_the_whole_takes_in_the_verdicts_the_parts_kept(tmp_path: Path) -> None:
    from supervisor.predicted.cases import OutputRequest, OutputVerdict, VerdictCache

    seg, img = tmp_path / "c01.nii.gz", tmp_path / "c01_0000.nii.gz"
    seg.write_bytes(b"seg")
    img.write_bytes(b"img")
    request = OutputRequest("c01", (img,), (seg,))
    (tmp_path / "part-0-of-2").mkdir()
    part = VerdictCache(tmp_path / "part-0-of-2" / "verified-outputs.json")
    part.put(request, OutputVerdict("c01", True, "", (seg,)), [[str(img), 3, img.stat().st_mtime_ns],
                                                                [str(seg), 3, seg.stat().st_mtime_ns]])
    assert part.save() is None
    whole = VerdictCache(tmp_path / "verified-outputs.json")
    whole.adopt([part.path, tmp_path / "part-1-of-2" / "missing.json"])
    assert whole.get(request) is not None
    seg.write_bytes(b"another segmentation")  # changed since: read again
    assert whole.get(request) is None


def test_live_parts_names_only_held_locks(tmp_path: Path) -> None:
    for name in ("part-0-of-2", "part-1-of-2", "not-a-part"):
        (tmp_path / name).mkdir()
    held = RunLock(tmp_path / "part-1-of-2" / "supervisor.lock")
    held.acquire()
    try:
        assert live_parts(tmp_path, None, "supervisor.lock") == ["part 1/2"]
    finally:
        held.release()
    assert live_parts(tmp_path, None, "supervisor.lock") == []
