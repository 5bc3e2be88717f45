"""`report` shows each attempt's start-up split, read back from the cooperative shim's line in its attempt log."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from supervisor.cli import main
from supervisor.observe.report import STARTUP_HEAD_BYTES, parse_startup, read_startup, summary, timeline
from supervisor.rundir.eventlog import EventLog
from supervisor.trainer.cooperative import STARTUP_PREFIX
from tests.conftest import make_ctx

COLD = (f"{STARTUP_PREFIX} imports 4.1 s, trainer 0.8 s, initialize 2.0 s, data+workers 1.2 s, "
        "first step 33.4 s (total 41.5 s)")
WARM = (f"{STARTUP_PREFIX} imports 4.0 s, trainer 0.8 s, initialize 2.1 s, checkpoint 0.3 s, data+workers 1.1 s, "
        "other 0.2 s, first step 6.0 s (total 14.5 s)")


def test_each_attempts_split_from_its_log_in_the_summary_and_the_json(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    sup = ctx.layout.supervisor_dir
    sup.mkdir(parents=True)
    events = EventLog(ctx.layout.events_file)
    for attempt in (1, 2, 3, 10):
        events.record("launch", attempt=attempt)
    (sup / "attempt-1.log").write_text(f"nnU-Net says hello\n{COLD}\nEpoch 0\n")
    (sup / "attempt-2.log").write_text("Traceback: died before its first step\n")  # no line: left out
    (sup / "attempt-3.log").write_text(f"{WARM}\n{COLD}\n")  # the first one counts
    (sup / "attempt-10.log").write_text(f"{COLD}\r\n")
    numbers = summary(timeline(ctx.layout))
    assert [s["attempt"] for s in numbers["startup"]] == [1, 3, 10]  # by number, not by name
    assert numbers["startup"][0] == {"attempt": 1, "total_s": 41.5, "parts": {
        "imports": 4.1, "trainer": 0.8, "initialize": 2.0, "data+workers": 1.2, "first step": 33.4}}
    assert numbers["startup"][1]["parts"]["checkpoint"] == 0.3 and numbers["startup"][1]["total_s"] == 14.5
    result = CliRunner().invoke(main, ["report", str(ctx.config_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["startup"] == numbers["startup"]


def test_no_attempt_logs_no_split(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    assert summary(timeline(ctx.layout))["startup"] == []


def test_a_mangled_line_is_passed_over(tmp_path: Path) -> None:
    assert parse_startup(f"{STARTUP_PREFIX} imports lots, first step 2.0 s (total 3.0 s)\n".encode()) is None
    assert parse_startup(f"{STARTUP_PREFIX} imports 1.0 s (total\n".encode()) is None
    assert parse_startup(f"say {COLD}\n".encode()) is None  # only at a line's start
    assert parse_startup(f"{STARTUP_PREFIX} imports 1.0 s, first step\n{WARM}\n".encode()) == parse_startup(
        WARM.encode())


def test_only_the_logs_head_is_read_and_a_fifo_never_blocks(tmp_path: Path) -> None:
    import os

    late = tmp_path / "attempt-1.log"
    late.write_bytes(b"x" * STARTUP_HEAD_BYTES + f"\n{COLD}\n".encode())
    assert read_startup(late) is None
    fifo = tmp_path / "attempt-2.log"
    os.mkfifo(fifo)
    assert read_startup(fifo) is None
    assert read_startup(tmp_path / "missing.log") is None


def test_a_gzipped_older_attempt_log_is_read_too(tmp_path: Path) -> None:
    import gzip

    ctx = make_ctx(tmp_path, [])
    sup = ctx.layout.supervisor_dir
    sup.mkdir(parents=True)
    with gzip.open(sup / "attempt-2.log.gz", "wb") as f:
        f.write(f"{WARM}\n".encode())
    (sup / "attempt-3.log").write_text(f"{COLD}\n")
    with gzip.open(sup / "attempt-3.log.gz", "wb") as f:  # being compressed: the plain one is read
        f.write(f"{WARM}\n".encode())
    (sup / "attempt-4.log.gz").write_bytes(b"\x1f\x8b not really gzip")
    startup = summary(timeline(ctx.layout))["startup"]
    assert [(s["attempt"], s["total_s"]) for s in startup] == [(2, 14.5), (3, 41.5)]
