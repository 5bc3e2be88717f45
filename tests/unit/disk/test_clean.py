"""`clean`: only finished, idle folds; never final, best, validation, logs; quarantine only when asked; no link
followed; a dry run removes nothing and says the same."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from supervisor.context import RunContext
from supervisor.disk.clean import BEST_WHY, LATEST_WHY, clean, clean_command, render
from supervisor.experiment.context import ExperimentContext
from supervisor.layout import RunLayout
from tests.conftest import REPO
from tests.unit.disk.conftest import finish

DEADLINE_S = 60.0
HOLD_LOCK = """
import sys
from pathlib import Path
from supervisor.rundir.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def lock_held_elsewhere(lock_file: Path) -> Iterator[None]:
    """Another process holds the fold's lock (a real flock) until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_file)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE_S)
        assert ready and proc.stdout.readline().strip() == "locked", proc.communicate(timeout=DEADLINE_S)[1]
        yield
    finally:
        proc.kill()
        proc.wait(timeout=DEADLINE_S)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def ours(layout: RunLayout) -> dict[str, Path]:
    """Our leftovers of a finished fold: a snapshot, a replaced checkpoint, temporaries, a quarantined file."""
    sup = layout.supervisor_dir
    files = {
        "snapshot": sup / "snapshots" / "checkpoint_latest.epoch000007.pth",
        "replaced": sup / "replaced" / "checkpoint_latest.20260101-000000.pth",
        "temp": layout.fold_dir / ".checkpoint_latest.pth.tmp-4242",
        "state_temp": sup / ".state.json.tmp-4242",
        "quarantined": sup / "quarantine" / "checkpoint_best.20260101-000000.pth",
        "reason": sup / "quarantine" / "checkpoint_best.20260101-000000.reason.txt",
    }
    for p in files.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"o" * 500)
    return files


def kept_always(layout: RunLayout) -> list[Path]:
    fold = layout.fold_dir
    return [fold / "checkpoint_final.pth", fold / "checkpoint_best.pth", fold / "validation" / "summary.json",
            fold / "validation" / "tiny_000.nii.gz", fold / "validation" / "tiny_000.npz", fold / "debug.json",
            fold / "progress.png", fold / "training_log_2026_1_1_00_00_00.txt", layout.supervisor_dir / "events.jsonl",
            layout.supervisor_dir / "attempt-1.log", layout.supervisor_dir / "written.json", layout.state_file]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_fold_loses_what_final_supersedes_and_keeps_the_rest(
        run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout, checkpoint_bytes=1000)
    leftovers = ours(ctx.layout)
    result = clean(ctx)
    removed = {e.path for e in result.removed}
    assert ctx.layout.checkpoint("checkpoint_latest.pth") in removed
    assert {leftovers[k] for k in ("snapshot", "replaced", "temp", "state_temp")} <= removed
    assert result.freed == 1000 + 4 * 500
    for p in kept_always(ctx.layout):
        assert p.is_file(), p
    assert leftovers["quarantined"].is_file() and leftovers["reason"].is_file()  # not without --quarantine
    assert not (ctx.layout.supervisor_dir / "snapshots").exists()  # our emptied folder goes
    kept = {e.path: e.reason for e in result.kept}
    assert kept[ctx.layout.checkpoint("checkpoint_best.pth")] == BEST_WHY
    assert "--quarantine" in kept[ctx.layout.quarantine_dir]
    text = render(result)
    assert f"removed {ctx.layout.checkpoint('checkpoint_latest.pth')} (1000 B): {LATEST_WHY}" in text
    assert text.endswith("removed 5 file(s), freed 2.9 KiB")


def test_quarantine_goes_only_with_the_flag(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    leftovers = ours(ctx.layout)
    clean(ctx)
    assert leftovers["quarantined"].is_file()
    result = clean(ctx, quarantine=True)
    assert {e.path for e in result.removed} == {leftovers["quarantined"], leftovers["reason"]}
    assert not ctx.layout.quarantine_dir.exists()
    assert all(p.is_file() for p in kept_always(ctx.layout))


def test_a_dry_run_removes_nothing_and_says_the_same(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    ours(ctx.layout)
    before = snapshot(ctx.layout.fold_dir)
    dry = clean(ctx, dry_run=True, quarantine=True)
    assert snapshot(ctx.layout.fold_dir) == before
    assert render(dry).endswith(f"--dry-run: would remove 7 file(s), would free {dry.freed / 1024:.1f} KiB; "
                                "nothing was removed")
    real = clean(ctx, quarantine=True)
    assert [(e.path, e.bytes) for e in real.removed] == [(e.path, e.bytes) for e in dry.removed]
    assert real.freed == dry.freed


@pytest.mark.process
def test_a_fold_in_progress_is_untouched(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    ours(ctx.layout)
    with lock_held_elsewhere(ctx.layout.lock_file):
        before = snapshot(ctx.layout.fold_dir)  # with the holder's lock file
        for dry in (True, False):
            result = clean(ctx, dry_run=dry, quarantine=True)
            assert not result.removed and not result.problems
            assert next(e.reason for e in result.kept if e.path == ctx.layout.fold_dir).startswith("in progress")
    assert snapshot(ctx.layout.fold_dir) == before


def test_a_fold_whose_state_says_running_is_untouched(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    ctx.layout.state_file.write_text(json.dumps({"state": "running", "pid": 1}))
    result = clean(ctx)
    assert not result.removed and ctx.layout.checkpoint("checkpoint_latest.pth").is_file()
    assert "state.json says 'running'" in render(result)


def test_an_unfinished_fold_is_untouched(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout, summary=False)  # final written, the validation killed before its summary
    ours(ctx.layout)
    before = snapshot(ctx.layout.fold_dir)
    result = clean(ctx, quarantine=True)
    assert not result.removed and snapshot(ctx.layout.fold_dir) == before
    assert "not finished" in render(result)


def test_a_damaged_state_file_is_a_clear_problem_not_a_traceback(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    ctx.layout.state_file.write_bytes(b"{\"state\": \"runn\xff")
    before = snapshot(ctx.layout.fold_dir)
    said: list[str] = []
    assert clean_command(ctx, dry_run=False, quarantine=False, say=said.append) == 1
    assert snapshot(ctx.layout.fold_dir) == before
    assert "problem: " in said[0] and "state.json is damaged" in said[0] and "nothing of it was touched" in said[0]


def test_links_are_not_followed(tmp_path: Path, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.pth").write_bytes(b"m" * 300)
    latest = ctx.layout.checkpoint("checkpoint_latest.pth")
    latest.unlink()
    latest.symlink_to(outside / "mine.pth")
    (ctx.layout.supervisor_dir / "snapshots").symlink_to(outside, target_is_directory=True)
    quarantine = ctx.layout.quarantine_dir
    quarantine.mkdir()
    (quarantine / "link.pth").symlink_to(outside / "mine.pth")
    result = clean(ctx, quarantine=True)
    assert not result.removed
    assert (outside / "mine.pth").read_bytes() == b"m" * 300
    assert latest.is_symlink() and (quarantine / "link.pth").is_symlink()
    assert "symbolic link" in render(result)


def test_the_compile_cache_goes_once_every_fold_of_the_configuration_finished(
        run_config: Callable[..., RunContext]) -> None:
    ctx = run_config(fold=0)
    finish(ctx.layout)
    cache = ctx.layout.fold_dir.parent / ".compile-cache"
    (cache / "inductor" / "ab").mkdir(parents=True)
    (cache / "inductor" / "ab" / "kernel.py").write_bytes(b"k" * 200)
    (cache / "triton").mkdir()
    (cache / "triton" / "x.so").write_bytes(b"t" * 100)
    other = run_config(fold=1)  # another fold of the configuration, still training
    other.layout.fold_dir.mkdir(parents=True)
    (other.layout.fold_dir / "checkpoint_latest.pth").write_bytes(b"c")
    result = clean(ctx)
    assert cache.is_dir() and "fold_1" in render(result)
    finish(other.layout)
    result = clean(ctx)
    entry = next(e for e in result.removed if e.path == cache)
    assert entry.files == 2 and entry.bytes == 300 and not cache.exists()
    assert other.layout.checkpoint("checkpoint_latest.pth").is_file()  # fold 1 is no part of this run.yaml


def test_an_experiment_cleans_its_finished_cells_only(experiment_file: Callable[[str], Path]) -> None:
    exp = ExperimentContext.load(experiment_file(""))
    done = [exp.fold_layout(c) for c in exp.cells if c.fold == 0]
    training = [exp.fold_layout(c) for c in exp.cells if c.fold == 1]
    for layout in done:
        finish(layout)
    for layout in training:
        finish(layout, summary=False)
    said: list[str] = []
    assert clean_command(exp, dry_run=False, quarantine=False, say=said.append) == 0
    assert all(not layout.checkpoint("checkpoint_latest.pth").exists() for layout in done)
    assert all(layout.checkpoint("checkpoint_latest.pth").is_file() for layout in training)
    assert all(layout.checkpoint("checkpoint_final.pth").is_file() for layout in done + training)
    assert said[0].endswith("removed 2 file(s), freed 2.0 KiB")


def test_nothing_to_do_is_exit_0(run_config: Callable[..., RunContext]) -> None:
    said: list[str] = []
    assert clean_command(run_config(), dry_run=True, quarantine=False, say=said.append) == 0
    assert said == ["--dry-run: would remove 0 file(s), would free 0 B; nothing was removed"]
    assert not os.path.exists(run_config().layout.fold_dir)
