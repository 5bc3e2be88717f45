"""The run directory's files: the single-instance lock, atomic state.json and the events.jsonl record."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from supervisor.errors import LockedError
from supervisor.events import EventLog, read_events
from supervisor.lock import RunLock
from supervisor.state import StateStore, atomic_write_text

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 60.0

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD_LOCK = """
import sys
from pathlib import Path
from supervisor.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
sys.stdin.read()
"""

# Tries to take the lock once and prints the outcome.
TRY_LOCK = """
import sys
from pathlib import Path
from supervisor.errors import LockedError
from supervisor.lock import RunLock
try:
    RunLock(Path(sys.argv[1])).acquire()
except LockedError as exc:
    print(f"locked: {exc}")
else:
    print("acquired")
"""


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    """Where the layout keeps the lock: <fold>/supervisor/supervisor.lock."""
    folder = tmp_path / "fold_0" / "supervisor"
    folder.mkdir(parents=True)
    return folder / "supervisor.lock"


@contextmanager
def holder_process(lock_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock; closing its stdin lets it exit."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_file)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE_S)
        if not ready or proc.stdout.readline().strip() != "locked":
            proc.kill()
            pytest.fail(f"holder did not take the lock: {proc.communicate(timeout=DEADLINE_S)[1]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE_S)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def try_lock_elsewhere(lock_file: Path) -> str:
    result = subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock_file)], cwd=REPO, text=True,
                            capture_output=True, timeout=DEADLINE_S, check=True)
    return result.stdout.strip()


# --- RunLock ----------------------------------------------------------------------------------------------------


def test_acquire_records_who_holds_it(lock_file: Path) -> None:
    lock = RunLock(lock_file)
    lock.acquire()
    try:
        holder = lock.holder()
        assert holder is not None
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        assert isinstance(holder["since"], float)
    finally:
        lock.release()


def test_a_second_process_cannot_take_a_held_lock(lock_file: Path) -> None:
    lock = RunLock(lock_file)
    lock.acquire()
    try:
        outcome = try_lock_elsewhere(lock_file)
    finally:
        lock.release()

    assert outcome.startswith("locked: ")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in outcome
    assert f"run {lock_file.parent.parent} is locked by another live supervisor" in outcome


def test_acquire_fails_naming_the_holder_pid(lock_file: Path) -> None:
    with holder_process(lock_file) as proc:
        with pytest.raises(LockedError) as info:
            RunLock(lock_file).acquire()

    assert f"(pid {proc.pid} on {socket.gethostname()})" in str(info.value)
    assert "nnunet-supervise status" in str(info.value)
    assert info.value.exit_code == 3


def test_failed_acquire_does_not_overwrite_the_holder_record(lock_file: Path) -> None:
    with holder_process(lock_file) as proc:
        with pytest.raises(LockedError):
            RunLock(lock_file).acquire()
        holder = RunLock(lock_file).holder()

    assert holder is not None and holder["pid"] == proc.pid


def test_is_held_elsewhere_follows_the_holder(lock_file: Path) -> None:
    lock = RunLock(lock_file)
    assert not lock.is_held_elsewhere()  # no lock file yet

    with holder_process(lock_file) as proc:
        assert lock.is_held_elsewhere()
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=DEADLINE_S) == 0

    assert lock_file.exists()  # the file stays for `status`
    assert not lock.is_held_elsewhere()


def test_lock_is_released_when_the_holder_is_killed(lock_file: Path) -> None:
    with holder_process(lock_file) as proc:
        proc.kill()
        proc.wait(timeout=DEADLINE_S)

    lock = RunLock(lock_file)
    assert not lock.is_held_elsewhere()
    lock.acquire()  # no stale-lock cleanup needed: the kernel dropped the flock
    try:
        holder = lock.holder()
        assert holder is not None and holder["pid"] == os.getpid()
    finally:
        lock.release()


def test_release_lets_another_process_in(lock_file: Path) -> None:
    lock = RunLock(lock_file)
    lock.acquire()
    lock.release()
    lock.release()  # a second release is harmless

    assert try_lock_elsewhere(lock_file) == "acquired"


def test_holder_of_an_unreadable_lock_file(lock_file: Path) -> None:
    assert RunLock(lock_file).holder() is None
    lock_file.write_text("{not json")
    assert RunLock(lock_file).holder() is None
    lock_file.write_text("[1, 2]")
    assert RunLock(lock_file).holder() is None


# --- state.json -------------------------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")

    atomic_write_text(path, "new\n")
    atomic_write_text(path, "newer\n")

    assert path.read_text() == "newer\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")

    assert path.read_text() == "old\n"



def test_atomic_write_failure_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")

    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_state_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    state = {"phase": "running", "attempt": 2, "best_epoch": 17, "last_exit": {"classification": "cuda_oom"}}

    store.save(state)

    loaded = store.load()
    assert loaded.pop("updated_ts") > 0 and loaded == state
    text = (tmp_path / "state.json").read_text()
    assert text.endswith("}\n")


@pytest.mark.parametrize("content", [None, "", "{\"phase\": \"runn", "garbage", "[1, 2, 3]", "null", "42"])
def test_state_load_of_missing_or_garbage_is_empty(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_text(content)

    assert StateStore(path).load() == {}


# --- events.jsonl -----------------------------------------------------------------------------------------------


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


def test_state_a_full_disk_refuses_keeps_the_old_file_and_is_retried(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save({"epoch": 1})
    monkeypatch.setattr("supervisor.state.atomic_write_text", full_disk)
    store.save({"epoch": 2})
    assert store.load()["epoch"] == 1
    monkeypatch.undo()
    store.save({"epoch": 2})
    assert store.load()["epoch"] == 2


def test_state_is_not_rewritten_when_only_the_time_changed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save({"epoch": 1})
    first = (tmp_path / "state.json").stat().st_mtime_ns, store.load()["updated_ts"]
    store.save({"epoch": 1})
    assert ((tmp_path / "state.json").stat().st_mtime_ns, store.load()["updated_ts"]) == first
    store.save({"epoch": 2})
    assert store.load()["epoch"] == 2
