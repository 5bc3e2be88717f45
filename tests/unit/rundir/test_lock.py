"""The single-instance lock of a run directory, against real processes."""

from __future__ import annotations

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
from supervisor.rundir.lock import RunLock
from tests.conftest import REPO

pytestmark = pytest.mark.process  # real processes (seconds)

DEADLINE_S = 60.0


# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD_LOCK = """
import sys
from pathlib import Path
from supervisor.rundir.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


# Tries to take the lock once and prints the outcome.
TRY_LOCK = """
import sys
from pathlib import Path
from supervisor.errors import LockedError
from supervisor.rundir.lock import RunLock
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
