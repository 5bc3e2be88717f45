"""`clean`: only finished, idle folds; never final, best, validation, logs; quarantine only when asked; no link
followed; a dry run removes nothing and says the same."""

from __future__ import annotations

import json
import os
import pickle
import select
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.checkpoints.verify import structure_verdict
from supervisor.context import RunContext
from supervisor.disk import clean as clean_module
from supervisor.disk.clean import BEST_WHY, LATEST_WHY, CleanResult, Entry, clean, clean_command, render
from supervisor.experiment.context import ExperimentContext
from supervisor.layout import RunLayout
from supervisor.rundir.lock import RunLock
from tests.conftest import REPO
from tests.unit.disk.conftest import finish as finish_files

DEADLINE_S = 60.0
HOLD_LOCK = """
import sys
from pathlib import Path
from supervisor.rundir.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("ready", flush=True)
sys.stdin.read()
"""


def write_checkpoint(path: Path, epoch: int = 1000) -> None:
    """A zip shaped as torch.save writes one, as far as the structural check reads it (stored members, a data.pkl
    holding a dict): what the daemon accepts without torch."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"current_epoch": epoch, "trainer_name": "nnUNetTrainer"}, 2))
        zf.writestr("archive/version", "3\n")


def finish(layout: RunLayout, checkpoint_bytes: int = 1000, summary: bool = True) -> None:
    """The conftest's finished fold, its checkpoint_final.pth one that passes the structural check."""
    finish_files(layout, checkpoint_bytes, summary)
    write_checkpoint(layout.checkpoint("checkpoint_final.pth"))
    assert structure_verdict(layout.checkpoint("checkpoint_final.pth")).structure_ok


def dead_pid() -> int:
    """The pid of a process that has ended (reaped): nobody writes a temporary under it."""
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=DEADLINE_S)
    return proc.pid


@contextmanager
def child(code: str, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """A live Python child that runs code, prints "ready" and waits until the block ends; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE_S)
        assert ready and proc.stdout.readline().strip() == "ready", proc.communicate(timeout=DEADLINE_S)[1]
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=DEADLINE_S)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def lock_held_elsewhere(lock_file: Path) -> Iterator[None]:
    """Another process holds the fold's lock (a real flock) until the block ends."""
    with child(HOLD_LOCK, str(lock_file)):
        yield


def ours(layout: RunLayout) -> dict[str, Path]:
    """Our leftovers of a finished fold: a snapshot, a replaced checkpoint, temporaries, a quarantined file."""
    sup = layout.supervisor_dir
    pid = dead_pid()
    files = {
        "snapshot": sup / "snapshots" / "checkpoint_latest.epoch000007.pth",
        "replaced": sup / "replaced" / "checkpoint_latest.20260101-000000.pth",
        "temp": layout.fold_dir / f".checkpoint_latest.pth.tmp-{pid}",
        "state_temp": sup / f".state.json.tmp-{pid}",
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


# ---- links: a fold folder, a run directory, final or best leading to latest ----


def test_a_symlinked_fold_folder_is_not_followed(tmp_path: Path, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    elsewhere = replace(ctx.layout, results=tmp_path / "elsewhere")  # a finished fold, somewhere else
    finish(elsewhere)
    leftovers = ours(elsewhere)
    ctx.layout.fold_dir.parent.mkdir(parents=True)
    ctx.layout.fold_dir.symlink_to(elsewhere.fold_dir, target_is_directory=True)
    before = snapshot(elsewhere.fold_dir)
    for dry in (True, False):
        result = clean(ctx, dry_run=dry, quarantine=True)
        assert not result.removed and not result.problems
        assert "symbolic link" in next(e.reason for e in result.kept if e.path == ctx.layout.fold_dir)
    assert snapshot(elsewhere.fold_dir) == before and leftovers["snapshot"].is_file()


def test_a_symlinked_run_directory_keeps_the_whole_fold(tmp_path: Path,
                                                        run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    ours(ctx.layout)
    moved = tmp_path / "run-dir-elsewhere"
    ctx.layout.supervisor_dir.rename(moved)
    ctx.layout.supervisor_dir.symlink_to(moved, target_is_directory=True)
    before = snapshot(ctx.layout.fold_dir), snapshot(moved)
    result = clean(ctx, quarantine=True)
    assert not result.removed and not result.problems
    why = next(e.reason for e in result.kept if e.path == ctx.layout.fold_dir)
    assert "run directory" in why and "symbolic link" in why
    assert (snapshot(ctx.layout.fold_dir), snapshot(moved)) == before
    assert not (moved / "supervisor.lock").exists()  # nothing was written through the link either


@pytest.mark.parametrize(("name", "how"), [("checkpoint_best.pth", "symlink"), ("checkpoint_final.pth", "symlink"),
                                           ("checkpoint_best.pth", "hardlink"), ("checkpoint_final.pth", "hardlink")])
def test_latest_stays_while_final_or_best_leads_to_it(name: str, how: str,
                                                      run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    latest, linked = ctx.layout.checkpoint("checkpoint_latest.pth"), ctx.layout.checkpoint(name)
    write_checkpoint(latest)  # final may lead to it: then it is what the structural check reads
    linked.unlink()
    if how == "symlink":
        linked.symlink_to("checkpoint_latest.pth")
    else:
        os.link(latest, linked)
    content = latest.read_bytes()
    result = clean(ctx)
    assert latest.is_file() and linked.read_bytes() == content
    assert latest not in {e.path for e in result.removed} and not result.problems
    if how == "symlink":  # a link may lead anywhere clean would remove: the whole fold stays
        assert not result.removed
        assert "nothing of this fold is removed" in next(e.reason for e in result.kept if e.path == linked)
    else:
        assert name in next(e.reason for e in result.kept if e.path == latest)


def test_a_final_or_best_linked_into_our_snapshots_or_replaced_keeps_what_they_lead_to(
        run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    leftovers = ours(ctx.layout)
    final, best = ctx.layout.checkpoint("checkpoint_final.pth"), ctx.layout.checkpoint("checkpoint_best.pth")
    write_checkpoint(leftovers["replaced"])
    final.unlink()
    final.symlink_to(leftovers["replaced"])
    best.unlink(missing_ok=True)
    best.symlink_to(leftovers["snapshot"])
    result = clean(ctx, quarantine=True)
    assert not result.removed and final.resolve().is_file() and best.resolve().is_file()


# ---- a damaged checkpoint_final.pth keeps its fallbacks ----


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_final_keeps_latest_snapshots_and_replaced(damage: str,
                                                             run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    leftovers = ours(ctx.layout)
    final = ctx.layout.checkpoint("checkpoint_final.pth")
    final.write_bytes(b"c" * 1000 if damage == "garbage" else final.read_bytes()[:-30])
    before = snapshot(ctx.layout.fold_dir)
    for dry in (True, False):
        result = clean(ctx, dry_run=dry, quarantine=True)
        assert not result.removed
        why = next(e.reason for e in result.kept if e.path == ctx.layout.fold_dir)
        assert why.startswith("checkpoint_final.pth does not pass the structural check (")
        assert why.endswith("): its fallbacks are kept")
    after = snapshot(ctx.layout.fold_dir)
    after.pop("supervisor/supervisor.lock")  # the real clean judged final under the fold's lock
    assert after == before and leftovers["snapshot"].is_file()


# ---- state.json: only a known ended state (or none) is idle ----


@pytest.mark.parametrize("doc", [{"state": 7, "pid": os.getpid()}, {"state": "Running", "pid": os.getpid()},
                                 {"pid": os.getpid()}, {"state": None}, {"state": "paused"}])
def test_an_unknown_state_is_a_problem_not_idle(doc: dict[str, object],
                                                run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    ours(ctx.layout)
    ctx.layout.state_file.write_text(json.dumps(doc))
    before = snapshot(ctx.layout.fold_dir)
    for dry in (True, False):
        said: list[str] = []
        assert clean_command(ctx, dry_run=dry, quarantine=True, say=said.append) == 1
        assert "would remove /" not in said[0] and "removed /" not in said[0]
        problem = next(line for line in said[0].splitlines() if line.startswith("problem: "))
        assert "state.json" in problem and "nothing of it was touched" in problem
    assert snapshot(ctx.layout.fold_dir) == before


@pytest.mark.parametrize("doc", [None, {"state": "finished"}, {"state": "failed"}, {"state": "stopped"}])
def test_no_state_or_an_ended_one_is_idle(doc: dict[str, object] | None,
                                          run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    if doc is None:
        ctx.layout.state_file.unlink()  # trained by nnU-Net alone, or the run directory's state gone
    else:
        ctx.layout.state_file.write_text(json.dumps(doc))
    result = clean(ctx)
    assert not result.problems and ctx.layout.checkpoint("checkpoint_latest.pth") in {e.path for e in result.removed}


# ---- the compile cache ----


def make_cache(model_dir: Path) -> Path:
    cache = model_dir / ".compile-cache"
    (cache / "inductor" / "ab").mkdir(parents=True)
    (cache / "inductor" / "ab" / "kernel.py").write_bytes(b"k" * 200)
    (cache / "triton").mkdir()
    (cache / "triton" / "x.so").write_bytes(b"t" * 100)
    return cache


def test_a_symlinked_fold_of_the_configuration_keeps_the_cache(tmp_path: Path,
                                                               run_config: Callable[..., RunContext]) -> None:
    ctx = run_config(fold=0)
    finish(ctx.layout)
    cache = make_cache(ctx.layout.fold_dir.parent)
    elsewhere = tmp_path / "fold_1-on-another-disk"  # training there, with this configuration's cache
    elsewhere.mkdir()
    (elsewhere / "checkpoint_latest.pth").write_bytes(b"c")
    (ctx.layout.fold_dir.parent / "fold_1").symlink_to(elsewhere, target_is_directory=True)
    result = clean(ctx)
    assert (cache / "triton" / "x.so").is_file() and cache not in {e.path for e in result.removed}
    assert "fold_1" in next(e.reason for e in result.kept if e.path == cache)


CACHE_USER = """
import os, sys
handle = open(sys.argv[1], "rb") if sys.argv[1] != "-" else None
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.process
@pytest.mark.parametrize("how", ["open file", "environment"])
def test_the_cache_stays_while_a_process_uses_it(how: str, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config(fold=0)
    finish(ctx.layout)
    cache = make_cache(ctx.layout.fold_dir.parent)
    env = dict(os.environ)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("TRITON_CACHE_DIR", None)
    if how == "environment":  # a prediction (or a trainer) started with the configuration's cache, not compiling now
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    arg = str(cache / "triton" / "x.so") if how == "open file" else "-"
    with child(CACHE_USER, arg, env=env) as pid:
        for dry in (True, False):
            result = clean(ctx, dry_run=dry)
            assert cache not in {e.path for e in result.removed}
            assert f"pid {pid}" in next(e.reason for e in result.kept if e.path == cache)
        assert (cache / "triton" / "x.so").is_file() and (cache / "inductor" / "ab" / "kernel.py").is_file()
    result = clean(ctx)  # the user has ended
    assert cache in {e.path for e in result.removed} and not cache.exists()


def test_the_cache_goes_while_the_folds_locks_are_held(monkeypatch: pytest.MonkeyPatch,
                                                       run_config: Callable[..., RunContext]) -> None:
    ctx, other = run_config(fold=0), run_config(fold=1)
    finish(ctx.layout)
    finish(other.layout)  # another fold of the configuration, finished, not in this run.yaml
    cache = make_cache(ctx.layout.fold_dir.parent)
    held: list[tuple[bool, bool]] = []
    real = clean_module._remove

    def spy(entries: list[Entry], result: CleanResult) -> None:
        if any(cache in e.path.parents for e in entries):  # a second fd's flock conflicts with ours: "elsewhere"
            held.append((RunLock(ctx.layout.lock_file).is_held_elsewhere(),
                         RunLock(other.layout.lock_file).is_held_elsewhere()))
        real(entries, result)

    monkeypatch.setattr(clean_module, "_remove", spy)
    result = clean(ctx)
    assert cache in {e.path for e in result.removed} and not cache.exists()
    assert held == [(True, True)]
    assert not RunLock(ctx.layout.lock_file).is_held_elsewhere()  # released after
    assert not RunLock(other.layout.lock_file).is_held_elsewhere()


# ---- temporaries of live writers; hard links ----


def test_the_temporary_of_a_live_writer_stays(run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    mine = ctx.layout.fold_dir / f".checkpoint_latest.pth.tmp-{os.getpid()}"  # this process: alive
    init = ctx.layout.supervisor_dir / ".state.json.tmp-1"  # pid 1 is alive (another user's: PermissionError)
    gone = ctx.layout.supervisor_dir / f".events.jsonl.tmp-{dead_pid()}"
    for p in (mine, init, gone):
        p.write_bytes(b"t" * 50)
    result = clean(ctx)
    assert mine.is_file() and init.is_file() and not gone.exists()
    kept = {e.path: e.reason for e in result.kept}
    assert f"pid {os.getpid()}" in kept[mine] and "alive" in kept[mine] and "pid 1" in kept[init]
    assert gone in {e.path for e in result.removed}


def test_a_hard_linked_file_frees_nothing(tmp_path: Path, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    finish(ctx.layout)
    leftovers = ours(ctx.layout)
    os.link(ctx.layout.checkpoint("checkpoint_latest.pth"), tmp_path / "my-copy.pth")  # the user's copy stays
    leftovers["replaced"].unlink()
    os.link(leftovers["snapshot"], leftovers["replaced"])  # both links go: their 500 bytes are freed, once
    dry = clean(ctx, dry_run=True)
    result = clean(ctx)
    for r in (dry, result):
        entries = {e.path: e for e in r.removed}
        latest = entries[ctx.layout.checkpoint("checkpoint_latest.pth")]
        assert latest.bytes == 0 and latest.reason.endswith("(hard link: frees nothing)")
        assert r.freed == 500 + 2 * 500  # the snapshot/replaced pair once, the two temporaries
    assert "(0 B): " + LATEST_WHY + " (hard link: frees nothing)" in render(result)
    assert (tmp_path / "my-copy.pth").stat().st_size == 1000
