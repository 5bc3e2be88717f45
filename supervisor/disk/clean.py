"""`nnunet-supervise clean CONFIG [--dry-run] [--quarantine]`: remove what finished folds no longer need.

A fold is cleaned only when it is finished (checkpoint_final.pth and validation/summary.json) and idle: no live
supervisor holds its lock (a real clean takes the lock itself while it removes, so none starts meanwhile) and its
state.json does not say it is being supervised. Of such a fold it removes, by unlinking regular files:

- checkpoint_latest.pth: superseded by checkpoint_final.pth (nnU-Net's --c and --val load final first, and
  nnUNetv2_predict uses final unless told otherwise);
- our snapshots (supervisor/snapshots/), the checkpoints we set aside when another replaced them
  (supervisor/replaced/), and the temporaries of atomic writes that never completed (`.NAME.tmp-PID`);
- with `quarantine`: the damaged files set aside in supervisor/quarantine/ (kept otherwise);
- the configuration's torch.compile cache (.compile-cache/) once every fold of the configuration is finished.

It never removes checkpoint_final.pth, checkpoint_best.pth (`nnUNetv2_predict -chk checkpoint_best.pth`,
nnUNetv2_export_model_to_zip), validation/, debug.json, progress.png, any log (they are the history), the weights a
fold was warm-started from, nor anything of a fold in progress; it never follows a symbolic link and removes no folder
but an emptied one of its own. The cooperative trainer's records (supervisor/written.json) stay: a record vouches for
a file only while it is those very bytes (size and every CRC), so an entry of a removed file can vouch for nothing.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

from supervisor.checkpoints.space import human
from supervisor.context import RunContext
from supervisor.disk.estimate import WORKING_STATES
from supervisor.errors import ExitCode, LockedError
from supervisor.layout import RunLayout
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore

if TYPE_CHECKING:  # the experiment imports preflight, which imports this package: a type only
    from supervisor.experiment.context import ExperimentContext

Target = Union[RunContext, "ExperimentContext"]
_TEMP = re.compile(r"^\..+\.tmp-\d+$")  # supervisor.atomic.temp_path: .NAME.tmp-PID

LATEST_WHY = ("superseded by checkpoint_final.pth (nnU-Net's --c and --val load final first; nnUNetv2_predict uses "
              "final unless -chk names another)")
SNAPSHOT_WHY = "our snapshot of an earlier checkpoint_latest.pth (the fold is finished)"
REPLACED_WHY = "a checkpoint we set aside when another replaced it (the fold is finished)"
TEMP_WHY = "the temporary of an atomic write that never completed (nobody writes this fold)"
QUARANTINE_WHY = "set aside as damaged (removed with --quarantine)"
CACHE_WHY = "torch.compile's cache of this configuration (every fold of it finished; a new training compiles anew)"
BEST_WHY = ("kept: `nnUNetv2_predict -chk checkpoint_best.pth` and nnUNetv2_export_model_to_zip use it; remove it "
            "yourself if you never will")


@dataclass(frozen=True)
class Entry:
    """A path removed (or, in a dry run, to be removed) or kept, its size, and why."""

    path: Path
    bytes: int
    reason: str
    files: int = 1  # a folder (the compile cache): the files in it


@dataclass
class CleanResult:
    """What `clean` removed (or would remove), what it kept and why, and what it could not do."""

    dry_run: bool
    removed: list[Entry] = field(default_factory=list)
    kept: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.removed)

    @property
    def files(self) -> int:
        return sum(e.files for e in self.removed)


def render(result: CleanResult) -> str:
    """The result for a person: each path on a line with its reason, then the total."""
    lines = []
    verb = "would remove" if result.dry_run else "removed"
    for e in result.removed:
        count = f", {e.files} files" if e.files != 1 else ""
        lines.append(f"{verb} {e.path} ({human(e.bytes)}{count}): {e.reason}")
    for e in result.kept:
        size = f" ({human(e.bytes)})" if e.bytes else ""
        lines.append(f"kept {e.path}{size}: {e.reason}")
    for p in result.problems:
        lines.append(f"problem: {p}")
    if result.dry_run:
        lines.append(f"--dry-run: would remove {result.files} file(s), would free {human(result.freed)}; nothing was "
                     "removed")
    else:
        lines.append(f"removed {result.files} file(s), freed {human(result.freed)}")
    return "\n".join(lines)


# ---- judging a fold ----


def _folds(target: Target) -> list[RunLayout]:
    if isinstance(target, RunContext):
        return [target.layout]
    return [target.fold_layout(c) for c in target.cells]  # an experiment: every cell


def _is_dir(path: Path) -> bool:
    """A real folder (a symbolic link to one is not followed)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def busy(layout: RunLayout) -> tuple[str | None, str | None]:
    """(why the fold counts as in progress, a problem that keeps it from being judged): None, None when idle."""
    lock = RunLock(layout.lock_file)
    if lock.is_held_elsewhere():
        holder = lock.holder() or {}
        return f"in progress: a live supervisor (pid {holder.get('pid', '?')}) holds its lock", None
    reading = StateStore(layout.state_file).read()
    if reading.damaged:
        return None, (f"{layout.state_file} is damaged ({reading.damaged}): cannot tell whether {layout.fold_dir} is "
                      "in progress, so nothing of it was touched (`nnunet-supervise status` says more; the next `run` "
                      "sets the file aside and rebuilds it)")
    state = reading.data.get("state")
    if state in WORKING_STATES:
        return (f"state.json says {state!r} but no supervisor holds the lock (one was killed? its trainer may still "
                "run): left alone; `nnunet-supervise status` says more, `run` settles it"), None
    return None, None


def _temps(folder: Path) -> Iterator[Path]:
    try:
        for e in os.scandir(folder):
            if _TEMP.match(e.name) and e.is_file(follow_symlinks=False):
                yield Path(e.path)
    except OSError:
        return


def _files(folder: Path) -> Iterator[Path]:
    """Regular files under a real folder, not following links (the links themselves are skipped too)."""
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if _is_dir(Path(root) / d)]
        for n in sorted(names):
            p = Path(root) / n
            try:
                if stat.S_ISREG(os.lstat(p).st_mode):
                    yield p
            except OSError:
                continue


def _links(folder: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        out += [Path(root) / n for n in dirs + names if os.path.islink(Path(root) / n)]
    return out


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _candidates(layout: RunLayout, quarantine: bool, result: CleanResult) -> list[Entry]:
    """What may go of a finished, idle fold; what is kept is said in result.kept."""
    fold, sup = layout.fold_dir, layout.supervisor_dir
    out: list[Entry] = []
    latest = layout.checkpoint("checkpoint_latest.pth")
    if os.path.islink(latest):
        result.kept.append(Entry(latest, 0, "a symbolic link: not followed, not removed"))
    elif _is_file(latest):
        out.append(Entry(latest, _size(latest), LATEST_WHY))
    out += [Entry(p, _size(p), TEMP_WHY) for p in _temps(fold) if p.name.startswith(".checkpoint_")]
    best = layout.checkpoint("checkpoint_best.pth")
    if _size(best):
        result.kept.append(Entry(best, _size(best), BEST_WHY))
    if os.path.islink(sup):
        result.kept.append(Entry(sup, 0, "the run directory is a symbolic link: not followed"))
        return out
    if not _is_dir(sup):
        return out
    out += [Entry(p, _size(p), TEMP_WHY) for p in _temps(sup)]
    for name, why in (("snapshots", SNAPSHOT_WHY), ("replaced", REPLACED_WHY)):
        folder = sup / name
        if os.path.islink(folder):
            result.kept.append(Entry(folder, 0, "a symbolic link: not followed"))
        elif _is_dir(folder):
            out += [Entry(p, _size(p), TEMP_WHY if _TEMP.match(p.name) else why) for p in _files(folder)]
            result.kept += [Entry(p, 0, "a symbolic link: not followed, not removed") for p in _links(folder)]
    q = layout.quarantine_dir
    if os.path.islink(q):
        result.kept.append(Entry(q, 0, "a symbolic link: not followed"))
    elif _is_dir(q):
        files = list(_files(q))
        if quarantine:
            out += [Entry(p, _size(p), QUARANTINE_WHY) for p in files]
            result.kept += [Entry(p, 0, "a symbolic link: not followed, not removed") for p in _links(q)]
        elif files:
            result.kept.append(Entry(q, sum(_size(p) for p in files), f"{len(files)} file(s) set aside as damaged: "
                                                                       "--quarantine removes them", len(files)))
    warm = sup / "warm_start"
    if _is_dir(warm):
        size = sum(_size(p) for p in _files(warm))
        if size:
            result.kept.append(Entry(warm, size, "the weights this fold was warm-started from (events.jsonl names "
                                                 "them): not a superseded state of this fold"))
    return out


def _remove(entries: list[Entry], result: CleanResult) -> None:
    for e in entries:
        try:
            if not stat.S_ISREG(os.lstat(e.path).st_mode):  # swapped for something else meanwhile
                result.kept.append(Entry(e.path, 0, "no longer a regular file: not removed"))
                continue
            e.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            result.problems.append(f"could not remove {e.path}: {exc.strerror or exc}")
            continue
        result.removed.append(e)


def _prune(folders: list[Path]) -> None:
    """Remove our own folders that the removal emptied (deepest first); a folder with anything left stays."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


def _clean_fold(layout: RunLayout, dry_run: bool, quarantine: bool, result: CleanResult) -> bool:
    """Clean one fold; True when it is finished and idle (it counts towards its configuration's compile cache)."""
    if not layout.fold_dir.is_dir():
        return False
    why, problem = busy(layout)
    if problem:
        result.problems.append(problem)
        return False
    if why:
        result.kept.append(Entry(layout.fold_dir, 0, why))
        return False
    if not layout.is_finished():
        result.kept.append(Entry(layout.fold_dir, 0, "not finished (checkpoint_final.pth and validation/summary.json "
                                                     "are not both there): nothing of it is removed"))
        return False
    lock = None
    if not dry_run and _is_dir(layout.supervisor_dir):
        if os.path.islink(layout.lock_file):
            result.problems.append(f"{layout.lock_file} is a symbolic link: not followed, and without the fold's "
                                   f"lock nothing of {layout.fold_dir} was removed")
            return False
        lock = RunLock(layout.lock_file)
        try:
            lock.acquire()  # no supervisor starts on this fold while files go
        except LockedError as exc:
            result.kept.append(Entry(layout.fold_dir, 0, f"in progress: {exc}"))
            return False
        except OSError as exc:
            result.problems.append(f"cannot take the lock {layout.lock_file} ({exc.strerror or exc}): nothing of "
                                   f"{layout.fold_dir} was removed")
            return False
    try:
        entries = _candidates(layout, quarantine, result)
        if dry_run:
            result.removed += entries
        else:
            _remove(entries, result)
            sup = layout.supervisor_dir
            ours = [sup / "snapshots", sup / "replaced"]
            if quarantine and _is_dir(layout.quarantine_dir):
                ours += [Path(root) for root, _, _ in os.walk(layout.quarantine_dir, followlinks=False)]
            _prune(ours)
    finally:
        if lock is not None:
            lock.release()
    return True


def _clean_cache(model_dir: Path, layouts: list[RunLayout], idle: dict[Path, bool], dry_run: bool,
                 result: CleanResult) -> None:
    """The configuration's .compile-cache/, when every fold of it (the target's and any other there) is finished
    and idle."""
    cache = model_dir / ".compile-cache"
    if os.path.islink(cache):
        result.kept.append(Entry(cache, 0, "a symbolic link: not followed"))
        return
    files = list(_files(cache)) if _is_dir(cache) else []
    if not files:
        return
    size = sum(_size(p) for p in files)
    folds = {layout.fold_dir for layout in layouts}
    folds |= {p for p in (model_dir.iterdir() if model_dir.is_dir() else []) if p.name.startswith("fold_")
              and _is_dir(p)}
    waiting = []
    for f in sorted(folds):
        if f not in idle:  # another fold of the configuration, not the target's: judged the same way
            other = replace(layouts[0], fold=f.name[len("fold_"):])
            why, problem = busy(other)
            idle[f] = not why and not problem and other.is_finished()
        if not idle[f]:
            waiting.append(f.name)
    if waiting or not folds:
        result.kept.append(Entry(cache, size, f"a fold of this configuration is not finished or in progress "
                                              f"({', '.join(waiting) or 'no fold yet'}): its cache is in use",
                                 len(files)))
        return
    if dry_run:
        result.removed.append(Entry(cache, size, CACHE_WHY, len(files)))
        return
    sub = CleanResult(dry_run=False)
    _remove([Entry(p, _size(p), CACHE_WHY) for p in files], sub)
    result.problems += sub.problems
    result.kept += sub.kept
    if sub.removed:
        result.removed.append(Entry(cache, sum(e.bytes for e in sub.removed), CACHE_WHY, len(sub.removed)))
    _prune([Path(root) for root, _, _ in os.walk(cache, followlinks=False)])


def clean(target: Target, dry_run: bool = False, quarantine: bool = False) -> CleanResult:
    """Clean every finished, idle fold of a run (its one fold) or an experiment (its cells); see the module's words.
    The dry run removes nothing and lists the same files with the same total."""
    result = CleanResult(dry_run)
    layouts = _folds(target)
    idle: dict[Path, bool] = {}
    by_model: dict[Path, list[RunLayout]] = {}
    for layout in layouts:
        idle[layout.fold_dir] = _clean_fold(layout, dry_run, quarantine, result)
        by_model.setdefault(layout.fold_dir.parent, []).append(layout)
    for model_dir, group in by_model.items():
        _clean_cache(model_dir, group, idle, dry_run, result)
    return result


def clean_command(target: Target, dry_run: bool, quarantine: bool, say: Callable[[str], object] = print) -> int:
    """`nnunet-supervise clean`: clean, print what was (or would be) removed and kept; 0 done (or nothing to do), 1
    when something could not be judged or removed (said on its line; nothing of such a fold was touched)."""
    result = clean(target, dry_run, quarantine)
    say(render(result))
    return int(ExitCode.GAVE_UP) if result.problems else int(ExitCode.FINISHED)
