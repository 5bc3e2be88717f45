"""The report's numbers from a run's files (nnU-Net training logs + events.jsonl), and its picture."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from click.testing import CliRunner

from supervisor.cli import main
from supervisor.rundir.eventlog import EventLog
from tests.conftest import make_ctx

T0 = datetime(2026, 11, 28, 10, 0, 0).timestamp()


def stamp(t: float) -> str:
    return datetime.fromtimestamp(T0 + t).strftime("%Y-%m-%d %H:%M:%S.%f")


def write_log(path: Path, epochs: list[tuple[int, float, float | None]]) -> None:
    with path.open("w") as f:
        for index, start, end in epochs:
            f.write(f"{stamp(start)}: \n{stamp(start)}: Epoch {index}\n{stamp(start)}: Current learning rate: 0.01\n")
            if end is not None:
                f.write(f"{stamp(end)}: train_loss -0.5\n{stamp(end)}: Epoch time: {end - start:.2f} s\n")


def test_goodput_redone_epochs_restarts_and_failures(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    fold = ctx.layout.fold_dir
    ctx.layout.supervisor_dir.mkdir(parents=True)
    clock = iter([T0, T0 + 40, T0 + 50, T0 + 100, T0 + 100])
    events = EventLog(ctx.layout.events_file, wall=lambda: next(clock))
    events.record("launch", attempt=1)
    events.record("exit", attempt=1, classification="killed_by_signal")  # at 40 s, inside epoch 3
    events.record("launch", attempt=2)  # at 50 s; resumes at epoch 2 (epoch 2 is redone)
    events.record("exit", attempt=2, classification="finished")
    events.record("finished", attempt=2)
    # attempt 1: epochs 0, 1, 2 of 10 s each, then killed in epoch 3; attempt 2 resumes at 2 and finishes 2-4
    write_log(fold / "training_log_a.txt", [(0, 0, 10), (1, 10, 20), (2, 20, 30), (3, 30, None)])
    write_log(fold / "training_log_b.txt", [(2, 60, 70), (3, 70, 80), (4, 80, 90)])
    out = tmp_path / "timeline.png"
    result = CliRunner().invoke(main, ["report", str(ctx.config_path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert numbers["epochs_kept"] == 5 and numbers["epochs_redone"] == 1 and numbers["epochs_interrupted"] == 1
    assert numbers["restarts"] == 1 and numbers["wall_s"] == 100.0
    assert numbers["kept_training_s"] == 50.0 and numbers["goodput"] == 0.5
    assert [f["classification"] for f in numbers["failures"]] == ["killed_by_signal"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    text = CliRunner().invoke(main, ["report", str(ctx.config_path)])
    assert "goodput 50.0%" in text.output and "1 redone, 1 restarts" in text.output


def test_a_run_that_never_trained_has_no_wall_time(tmp_path: Path) -> None:
    from supervisor.observe.report import summary, timeline

    ctx = make_ctx(tmp_path, [])
    numbers = summary(timeline(ctx.layout))
    assert numbers["wall_s"] == 0.0 and numbers["attempts"] == 0 and numbers["goodput"] == 0.0
