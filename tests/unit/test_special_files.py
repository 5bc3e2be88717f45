"""A FIFO, a socket, /dev/zero, a directory or a 2 GB sparse file where a checkpoint, a config or our state is
expected: a clear verdict within seconds, never a hang (each command runs with a deadline)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, make_ctx

pytestmark = pytest.mark.process
DEADLINE_S = 60


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, killed (and the test failed) if it hangs."""
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True,
                          timeout=DEADLINE_S, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    fifo, sock, zero, folder, sparse = (tmp_path / n for n in ("fifo", "sock", "zero", "folder", "sparse"))
    os.mkfifo(fifo)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    zero.symlink_to("/dev/zero")
    folder.mkdir()
    with open(sparse, "wb") as f:
        f.truncate(2 << 30)  # 2 GB of nothing, taking no disk
    yield {"fifo": fifo, "socket": sock, "zero": zero, "folder": folder, "sparse": sparse}
    server.close()


@pytest.mark.parametrize(("name", "says"), [
    ("fifo", "is a FIFO (named pipe), not a checkpoint file"),
    ("socket", "is a socket, not a checkpoint file"),
    ("zero", "is a character device (/dev/zero), not a checkpoint file"),
    ("sparse", "not a readable zip archive"),
])
def test_verify_says_what_the_file_is(specials: dict[str, Path], name: str, says: str) -> None:
    for args in ([], ["--json"]):
        r = cli("verify", str(specials[name]), *args)
        assert r.returncode == 1 and says in r.stdout and "Traceback" not in r.stderr


def test_verify_of_a_folder_is_refused_as_usage(specials: dict[str, Path]) -> None:
    r = cli("verify", str(specials["folder"]))
    assert r.returncode == 2 and "is a directory" in r.stderr


@pytest.mark.parametrize("name", ["fifo", "zero", "sparse", "socket"])
def test_a_config_that_is_not_a_regular_small_file_is_a_config_error(specials: dict[str, Path], name: str) -> None:
    r = cli("check", str(specials[name]))
    assert r.returncode == 2 and "invalid config" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("target", ["state.json", "events.jsonl", "supervisor.lock", "heartbeat.json"])
def test_status_with_a_fifo_for_one_of_our_files_answers(tmp_path: Path, target: str) -> None:
    ctx = make_ctx(tmp_path, [])
    ctx.layout.supervisor_dir.mkdir(parents=True)
    os.mkfifo(ctx.layout.supervisor_dir / target)
    for args in ([], ["--json"]):
        r = cli("status", str(ctx.config_path), *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr


def test_status_with_a_fifo_for_a_checkpoint_and_the_training_log_answers(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    ctx.layout.fold_dir.mkdir(parents=True)
    os.mkfifo(ctx.layout.fold_dir / "checkpoint_latest.pth")
    os.mkfifo(ctx.layout.fold_dir / "debug.json")
    os.mkfifo(ctx.layout.fold_dir / "training_log_2026_1_1_00_00_00.txt")
    for command in (["status"], ["status", "--json"], ["report"], ["report", "--json"]):
        r = cli(command[0], str(ctx.config_path), *command[1:])
        assert r.returncode == 0 and "Traceback" not in r.stderr
