"""events.jsonl: what a record holds, torn and foreign lines, a full disk."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.rundir.eventlog import EventLog, read_events


def fixed_clock(*times: float) -> Iterator[float]:
    return iter(times)


def test_record_writes_ts_event_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    clock = fixed_clock(1795833770.1234567, 1795833771.5)
    log = EventLog(path, wall=lambda: next(clock))

    first = log.record("launch", attempt=1, pid=4242, argv=["nnUNetv2_train", "901", "3d_fullres", "0"], resume=False)
    second = log.record("exit", attempt=1, returncode=-9, classification="killed_by_signal", retryable=True)

    assert first == {"ts": 1795833770.123457, "event": "launch", "attempt": 1, "pid": 4242,
                     "argv": ["nnUNetv2_train", "901", "3d_fullres", "0"], "resume": False}
    assert second["ts"] == 1795833771.5
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first, second]
    assert list(json.loads(lines[0]))[:2] == ["ts", "event"]


def test_record_stringifies_what_json_cannot_hold(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", wall=lambda: 10.0)

    entry = log.record("checkpoint_verified", path=Path("/res/fold_0/checkpoint_latest.pth"), epoch=7)

    assert next(read_events(log.path)) == {**entry, "path": "/res/fold_0/checkpoint_latest.pth"}


def test_read_events_of_a_missing_file(tmp_path: Path) -> None:
    assert list(read_events(tmp_path / "events.jsonl")) == []


def test_read_events_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, wall=lambda: 10.0)
    log.record("launch", attempt=1)
    log.record("stall", attempt=1)
    with path.open("a") as f:
        f.write('{"ts": 11.0, "event": "exi')  # power cut mid-write

    assert [e["event"] for e in read_events(path)] == ["launch", "stall"]


def test_read_events_skips_lines_that_are_not_objects(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"ts": 1.0, "event": "launch"}\n\n[1, 2]\n"text"\n{"ts": 2.0, "event": "finished"}\n')

    assert [e["event"] for e in read_events(path)] == ["launch", "finished"]


def test_event_recorded_after_a_torn_line_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"ts": 1.0, "event": "launch"}\n{"ts": 2.0, "event": "ex')  # the last supervisor lost power
    log = EventLog(path, wall=lambda: 3.0)

    log.record("launch", attempt=2)

    assert [e["event"] for e in read_events(path)] == ["launch", "launch"]


def full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_events_a_full_disk_refuses_are_kept_and_written_later_in_order(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events = EventLog(tmp_path / "events.jsonl", wall=lambda: 1.0)
    events.record("launch", attempt=1)
    real = EventLog._append
    monkeypatch.setattr(EventLog, "_append", full_disk)
    events.record("exit", attempt=1)  # does not raise: the supervisor goes on
    events.record("disk_full", free_bytes=0)
    assert [e["event"] for e in read_events(tmp_path / "events.jsonl")] == ["launch"]
    monkeypatch.setattr(EventLog, "_append", real)
    events.record("disk_space", free_bytes=10)
    assert [e["event"] for e in read_events(tmp_path / "events.jsonl")] == ["launch", "exit", "disk_full",
                                                                           "disk_space"]
