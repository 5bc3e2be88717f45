"""Our own files, damaged every way a power cut, a full disk or a person can (hypothesis): the readers, `status`,
`report` and the daemon's start-up never raise, say what was wrong, and still read every valid record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.cli import main
from supervisor.context import RunContext
from supervisor.daemon.runner import Runner
from supervisor.rundir.eventlog import parse_events, read_events
from supervisor.rundir.statefile import FIELDS, StateStore, parse
from tests.conftest import FakeClock, FakeOps, make_ctx

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=6)

GOOD_EVENTS = [
    {"ts": 1795833700.0, "event": "launch", "attempt": 1, "pid": 100, "argv": ["nnUNetv2_train"], "resume": False},
    {"ts": 1795833760.5, "event": "exit", "attempt": 1, "returncode": -9, "classification": "killed_by_signal",
     "retryable": True, "summary": "killed by SIGKILL", "epochs_completed": 3},
    {"ts": 1795833761.0, "event": "backoff", "delay_s": 10.4, "next_attempt": 2, "restart": 1, "progress": True},
    {"ts": 1795833772.0, "event": "launch", "attempt": 2, "pid": 101, "argv": ["nnUNetv2_train", "--c"],
     "resume": True},
    {"ts": 1795833900.0, "event": "exit", "attempt": 2, "returncode": 0, "classification": "finished",
     "retryable": False, "summary": "training and validation finished", "epochs_completed": 10},
    {"ts": 1795833900.1, "event": "finished", "attempt": 2, "epochs": 10},
]

GOOD_STATE = {"schema": 1, "state": "finished", "attempt": 2, "restarts": 1, "max_restarts": 10, "best_epoch": 10,
              "epoch": 9, "pid": None, "last_exit": {"classification": "finished"}, "resumable": False,
              "verified_epoch": 4, "epoch_times": [4.1, 3.9], "num_epochs": 10, "started_ts": 1795833700.0,
              "updated_ts": 1795833901.0}

bad_line = st.one_of(
    st.binary(min_size=1, max_size=120).filter(lambda b: b"\n" not in b),
    JSON.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=5), JSON, max_size=3).map(lambda d: json.dumps(d).encode()),  # no ts/event
    st.builds(lambda ts: json.dumps({"ts": ts, "event": "launch"}).encode(),
              st.one_of(st.text(max_size=5), st.none(), st.floats(min_value=1e12), st.just(-1))),
    st.just(b"x" * 200_000),  # a huge line
    st.just(b"\xff\xfe\x00garbage"),
)


def lines_of(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


@st.composite
def damaged_events(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Any]]]:
    """events.jsonl with garbage lines between the good ones and maybe a torn end; and the events still intact."""
    keep = draw(st.lists(st.booleans(), min_size=len(GOOD_EVENTS), max_size=len(GOOD_EVENTS)))
    out: list[bytes] = []
    expected = []
    for event, kept in zip(GOOD_EVENTS, keep, strict=True):
        out += draw(st.lists(bad_line, max_size=2))
        if kept:
            out.append(json.dumps(event).encode())
            expected.append(event)
        else:  # this one is damaged: cut short, or a byte flipped inside it
            raw = json.dumps(event).encode()
            out.append(raw[: draw(st.integers(1, len(raw) - 1))] + b"\x00\xff")
    raw = b"\n".join(out) + b"\n"
    if draw(st.booleans()):
        raw += b'{"ts": 1795833999.0, "event": "la'  # a torn last line (no newline)
    return raw, expected


@given(damaged_events())
@settings(max_examples=200, deadline=None)
def test_every_intact_event_is_read_and_nothing_raises(case: tuple[bytes, list[dict[str, Any]]]) -> None:
    raw, expected = case
    reading = parse_events(raw)
    assert reading.events == expected
    damaged_lines = len([line for line in raw.split(b"\n") if line.strip()]) - len(expected)
    assert len(reading.problems) >= min(damaged_lines, 1)


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_bytes_as_events_or_state_never_raise(raw: bytes) -> None:
    parse_events(raw)
    parse(raw)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_a_state_cut_or_flipped_anywhere_reads_as_empty_or_as_its_valid_fields(data: st.DataObject) -> None:
    raw = bytearray(json.dumps(GOOD_STATE, indent=2).encode())
    how = data.draw(st.sampled_from(["cut", "flip", "field"]))
    if how == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    else:  # one field of the wrong type (or another value)
        key = data.draw(st.sampled_from(sorted(GOOD_STATE)))
        raw = bytearray(json.dumps({**GOOD_STATE, key: data.draw(JSON)}).encode())
    reading = parse(bytes(raw))
    if reading.damaged is None:
        doc = json.loads(bytes(raw))
        for key, value in doc.items():  # every field that is what it must be is still read
            if key not in FIELDS or FIELDS[key][0](value):
                assert reading.data[key] == value
            else:
                assert key not in reading.data and any(p.startswith(f"{key} is ") for p in reading.dropped)


# ---- the commands and the daemon on a damaged copy of a real run directory ----

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that crashed once and finished (the fake OS, no process): its whole folder tree."""
    root = tmp_path_factory.mktemp("finished")
    plan = [{"epochs": [0, 3], "outcome": "crash"}, {"epochs": [2, 5], "outcome": "finish"}]
    ctx = make_ctx(root, plan)
    assert Runner(ctx, ops=FakeOps(plan), clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0).run() == 0
    return root


def damage(run: Path, target: str, content: bytes | str) -> Path:
    """Put `content` where the run's state.json or events.jsonl is: bytes, or "dir" / "fifo"."""
    sup = next(run.glob("res/*/*/fold_0/supervisor"))
    path = sup / target
    path.unlink()
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        import os

        os.mkfifo(path)
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    return path


contents = st.one_of(st.binary(max_size=300), st.sampled_from(["dir", "fifo"]),
                     damaged_events().map(lambda case: case[0]),
                     st.builds(lambda key, v: json.dumps({**GOOD_STATE, key: v}).encode(),
                               st.sampled_from(sorted(GOOD_STATE)), JSON))


@given(target=st.sampled_from(["state.json", "events.jsonl"]), content=contents,
       command=st.sampled_from([["status"], ["status", "--json"], ["report"], ["report", "--json"]]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_status_and_report_on_damaged_files_exit_0_without_a_traceback(finished_run: Path, tmp_path: Path,
                                                                       target: str, content: bytes | str,
                                                                       command: list[str]) -> None:
    run = tmp_path / "copy"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(finished_run, run, symlinks=True)
    damage(run, target, content)
    result = CliRunner().invoke(main, [command[0], str(run / "run.yaml"), *command[1:]])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    if "--json" in command:
        json.loads(result.stdout)


@given(target=st.sampled_from(["state.json", "events.jsonl"]), content=contents)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_daemon_starts_on_damaged_files_resumes_and_keeps_them(finished_run: Path, tmp_path: Path, target: str,
                                                                   content: bytes | str) -> None:
    run = tmp_path / "copy"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(finished_run, run, symlinks=True)
    path = damage(run, target, content)
    before = path.read_bytes() if isinstance(content, bytes) else None
    unreadable = target == "state.json" and StateStore(path).read().damaged is not None
    fold = path.parent.parent
    (fold / "checkpoint_final.pth").unlink()  # not finished any more: the daemon must launch again
    plan = [{"epochs": [4, 5], "outcome": "finish"}] * 9
    ctx = RunContext.load(run / "run.yaml")
    code = Runner(ctx, ops=FakeOps(plan), clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0).run()
    events = list(read_events(ctx.layout.events_file))
    if code == 1:  # the damaged state still said a checkpoint was resumed once: never a silent fresh start
        assert events[-1]["event"] == "give_up" and events[-1]["reason"] == "no_valid_checkpoint"
        return
    assert code == 0 and events[-1]["event"] == "finished"
    launch = next(e for e in reversed(events) if e["event"] == "launch")
    assert launch["attempt"] >= 3  # attempt numbers continue: attempt-1/2.log are never appended to
    if target == "events.jsonl" and before is not None:
        assert ctx.layout.events_file.read_bytes().startswith(before)  # nothing of the old record is lost
    if isinstance(content, str) or unreadable:
        assert list((path.parent / "damaged").iterdir())  # set aside, never deleted
