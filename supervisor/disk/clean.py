"""`nnunet-supervise clean CONFIG [--dry-run] [--quarantine]`: remove what finished folds no longer need.

A fold is cleaned only when it is finished (checkpoint_final.pth and validation/summary.json) and idle: no live
supervisor holds its lock (a real clean takes the lock itself while it removes, so none starts meanwhile) and its
state.json is missing (a fold trained by nnU-Net alone) or names a state the supervisor writes when it has ended
(finished, failed, stopped). A working state keeps the fold (said why); a state.json that is unreadable, or whose
state is missing or none of the supervisor's, is a problem (the fold is kept, exit 1). A fold folder or run directory
(supervisor/) that is a symbolic link is kept whole (said why): its lock cannot be trusted, and what it leads to is
not ours. Nothing goes either while checkpoint_final.pth fails the structural check (the zip, every CRC, data.pkl;
supervisor.checkpoints.verify.structure_verdict, no torch): latest, snapshots and replaced checkpoints are then the
only good copies. Of such a fold it removes, by unlinking regular files:

- checkpoint_latest.pth: superseded by checkpoint_final.pth (nnU-Net's --c and --val load final first, and
  nnUNetv2_predict uses final unless told otherwise); kept while final or best is a symbolic link (it may lead to
  latest) or the same file (a hard link);
- our snapshots (supervisor/snapshots/), the checkpoints we set aside when another replaced them
  (supervisor/replaced/), and the temporaries of atomic writes that never completed (`.NAME.tmp-PID`: kept while
  process PID exists, as its write may be going on);
- with `quarantine`: the damaged files set aside in supervisor/quarantine/ (kept otherwise);
- the configuration's torch.compile cache (.compile-cache/) once every fold folder of the configuration (a symbolic
  link counts, as not idle) is finished and idle, and no process uses it. A prediction sets TORCHINDUCTOR_CACHE_DIR
  to the same cache, and its lock is in its own output folder, which nothing here can find; so a process uses the
  cache when its environment points TORCHINDUCTOR_CACHE_DIR or TRITON_CACHE_DIR into it or it holds a file under it
  open (Linux's /proc/PID/environ and /proc/PID/fd; another user's processes cannot be read and are not seen). A real
  clean removes the cache while it holds the lock of every such fold that has a run directory.

A file with other hard links keeps its data: it counts nothing toward what is freed ("hard link: frees nothing").

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
from supervisor.checkpoints.verify import structure_verdict
from supervisor.context import RunContext
from supervisor.core.lifecycle import Phase
from supervisor.errors import ExitCode, LockedError
from supervisor.layout import RunLayout
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore

if TYPE_CHECKING:  # the experiment imports preflight, which imports this package: a type only
    from supervisor.experiment.context import ExperimentContext

Target = Union[RunContext, "ExperimentContext"]
_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")  # supervisor.atomic.temp_path: .NAME.tmp-PID
ENDED_STATES = tuple(p.value for p in Phase if p.terminal)  # what the fold's supervisor writes when it has ended
WORKING_STATES = tuple(p.value for p in Phase if not p.terminal)
CACHE_VARS = (b"TORCHINDUCTOR_CACHE_DIR=", b"TRITON_CACHE_DIR=")  # supervisor.command.build_env sets both
HARD_LINK = " (hard link: frees nothing)"

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
    if not os.path.lexists(layout.state_file):
        return None, None  # never supervised (nnU-Net alone), or its run directory gone: the lock said the rest
    reading = StateStore(layout.state_file).read()
    if reading.damaged:
        return None, (f"{layout.state_file} is damaged ({reading.damaged}): cannot tell whether {layout.fold_dir} is "
                      "in progress, so nothing of it was touched (`nnunet-supervise status` says more; the next `run` "
                      "sets the file aside and rebuilds it)")
    state = reading.data.get("state")
    if state in ENDED_STATES:
        return None, None
    if state in WORKING_STATES:
        return (f"state.json says {state!r} but no supervisor holds the lock (one was killed? its trainer may still "
                "run): left alone; `nnunet-supervise status` says more, `run` settles it"), None
    said = (f"its state is {state!r}" if "state" in reading.data
            else next((d for d in reading.dropped if d.startswith("state is ")), "it has no state field"))
    return None, (f"{layout.state_file}: {said}, not a state the supervisor writes ({', '.join(ENDED_STATES)} once "
                  f"it has ended, {', '.join(WORKING_STATES)} while it works): cannot tell whether {layout.fold_dir} "
                  "is in progress, so nothing of it was touched (`nnunet-supervise status` says more)")


def _pid_alive(pid: int) -> bool:
    """Whether a process pid exists (another user's too: PermissionError); a reused pid counts, to be safe."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):  # not a pid this system can have
        return False
    return True


def _entry(path: Path, why: str, out: list[Entry], result: CleanResult) -> None:
    """path among what goes (out), unless it is the temporary of a write whose process is alive (then kept)."""
    m = _TEMP.match(path.name)
    if m and _pid_alive(int(m.group(1))):
        result.kept.append(Entry(path, _size(path), f"the temporary of a write by pid {m.group(1)}, which is alive: "
                                                    "its write may be going on"))
        return
    out.append(Entry(path, _size(path), why))


def _count_links(entries: list[Entry]) -> list[Entry]:
    """A file with other hard links keeps its data when this name goes: it frees nothing, unless every one of its
    names is among entries (then the first frees it, the others are counted there)."""
    names: dict[tuple[int, int], list[int]] = {}
    links: dict[tuple[int, int], int] = {}
    for i, e in enumerate(entries):
        try:
            st = os.lstat(e.path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            names.setdefault((st.st_dev, st.st_ino), []).append(i)
            links[(st.st_dev, st.st_ino)] = st.st_nlink
    out = list(entries)
    for key, idx in names.items():
        every = len(idx) >= links[key]
        for n, i in enumerate(idx):
            if every and n == 0:
                continue
            reason = (f" (hard link of {entries[idx[0]].path.name}: its bytes are counted there)" if every
                      else HARD_LINK)
            out[i] = replace(out[i], bytes=0, reason=out[i].reason + reason)
    return out


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
    final, best = layout.checkpoint("checkpoint_final.pth"), layout.checkpoint("checkpoint_best.pth")
    linked = [p for p in (final, best) if os.path.islink(p)]
    if linked:  # it may lead to any of latest, a snapshot, a replaced checkpoint: removing one would break it
        result.kept.extend(Entry(p, 0, f"a symbolic link (to {_target(p)}): nothing of this fold is removed, since "
                                       "what it leads to may be among what clean removes") for p in linked)
        return out
    if os.path.islink(latest):
        result.kept.append(Entry(latest, 0, "a symbolic link: not followed, not removed"))
    elif _is_file(latest):
        tied = _tied(latest, (final, best))
        if tied:
            result.kept.append(Entry(latest, _size(latest), tied))
        else:
            out.append(Entry(latest, _size(latest), LATEST_WHY))
    for p in _temps(fold):
        if p.name.startswith(".checkpoint_"):
            _entry(p, TEMP_WHY, out, result)
    if os.path.islink(best):
        result.kept.append(Entry(best, 0, f"a symbolic link (to {_target(best)}): not followed, not removed"))
    elif _size(best):
        result.kept.append(Entry(best, _size(best), BEST_WHY))
    if os.path.islink(sup):  # judged before the lock (_clean_fold); swapped in since
        result.kept.append(Entry(sup, 0, "the run directory is a symbolic link: not followed"))
        return out
    if not _is_dir(sup):
        return out
    for p in _temps(sup):
        _entry(p, TEMP_WHY, out, result)
    for name, why in (("snapshots", SNAPSHOT_WHY), ("replaced", REPLACED_WHY)):
        folder = sup / name
        if os.path.islink(folder):
            result.kept.append(Entry(folder, 0, "a symbolic link: not followed"))
        elif _is_dir(folder):
            for p in _files(folder):
                _entry(p, TEMP_WHY if _TEMP.match(p.name) else why, out, result)
            result.kept += [Entry(p, 0, "a symbolic link: not followed, not removed") for p in _links(folder)]
    q = layout.quarantine_dir
    if os.path.islink(q):
        result.kept.append(Entry(q, 0, "a symbolic link: not followed"))
    elif _is_dir(q):
        files = list(_files(q))
        if quarantine:
            for p in files:
                _entry(p, QUARANTINE_WHY, out, result)
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
    return _count_links(out)


def _target(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return "?"


def _tied(latest: Path, others: tuple[Path, ...]) -> str | None:
    """Why checkpoint_latest.pth must stay for final's or best's sake: one is a symbolic link (it may lead to latest,
    now or once retargeted) or the same file as latest (a hard link). None when neither is."""
    try:
        own = os.lstat(latest)
    except OSError:
        return None
    for p in others:
        if os.path.islink(p):
            return (f"{p.name} is a symbolic link (to {_target(p)}): removing checkpoint_latest.pth could break "
                    "it")
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return f"{p.name} is the same file (a hard link of it)"
    return None


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


def _take_lock(layout: RunLayout) -> tuple[RunLock | None, str | None, str | None]:
    """(the fold's lock, taken; why it could not be: the fold is in progress; a problem) for a real clean. A fold
    without a run directory has no lock to take (None, None, None): nnU-Net alone takes none either."""
    if not _is_dir(layout.supervisor_dir):
        return None, None, None
    if os.path.islink(layout.lock_file):
        return None, None, (f"{layout.lock_file} is a symbolic link: not followed, and without the fold's lock nothing "
                            f"of {layout.fold_dir} was removed")
    lock = RunLock(layout.lock_file)
    try:
        lock.acquire()  # no supervisor starts on this fold while files go
    except LockedError as exc:
        return None, f"in progress: {exc}", None
    except OSError as exc:
        return None, None, (f"cannot take the lock {layout.lock_file} ({exc.strerror or exc}): nothing of "
                            f"{layout.fold_dir} was removed")
    return lock, None, None


def _linked(layout: RunLayout) -> str | None:
    """Why a fold is kept whole for a symbolic link: its folder or its run directory is one."""
    if os.path.islink(layout.fold_dir):
        return (f"a symbolic link (to {_target(layout.fold_dir)}): not followed, nothing of it or of what it leads to "
                "is removed")
    if os.path.islink(layout.supervisor_dir):
        return (f"its run directory {layout.supervisor_dir} is a symbolic link (to {_target(layout.supervisor_dir)}): "
                "not followed, and without the fold's own lock nothing of it is removed")
    return None


def _clean_fold(layout: RunLayout, dry_run: bool, quarantine: bool, result: CleanResult,
                locks: list[RunLock]) -> bool:
    """Clean one fold; True when it is finished and idle (it counts towards its configuration's compile cache). Its
    lock, taken in a real clean, stays in locks (clean releases it once the cache is settled)."""
    linked = _linked(layout)
    if linked:
        result.kept.append(Entry(layout.fold_dir, 0, linked))
        return False
    if not _is_dir(layout.fold_dir):
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
    if not dry_run:
        lock, why, problem = _take_lock(layout)
        if problem:
            result.problems.append(problem)
            return False
        if why:
            result.kept.append(Entry(layout.fold_dir, 0, why))
            return False
    idle = False
    try:
        verdict = structure_verdict(layout.checkpoint("checkpoint_final.pth"))  # under the lock: as it stays
        if not verdict.structure_ok:
            result.kept.append(Entry(layout.fold_dir, 0, f"checkpoint_final.pth does not pass the structural check "
                                                         f"({verdict.reason()}): its fallbacks are kept"))
            return False
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
        idle = True
    finally:
        if lock is not None:
            if idle:
                locks.append(lock)
            else:
                lock.release()
    return True


def _other_idle(layout: RunLayout, dry_run: bool, locks: list[RunLock]) -> bool:
    """Whether another fold of the configuration (not the target's) is finished and idle; in a real clean its lock
    is taken (into locks) so that none starts on it while the cache goes."""
    if _linked(layout) or not _is_dir(layout.fold_dir):
        return False
    why, problem = busy(layout)
    if why or problem or not layout.is_finished():
        return False
    if dry_run:
        return True
    lock, why, problem = _take_lock(layout)
    if why or problem:
        return False
    if lock is not None:
        locks.append(lock)
    return True


def _inside(value: str, roots: set[str]) -> bool:
    return any(value == r or value.startswith(r + os.sep) for r in roots)


def _uses_cache(proc: str, roots: set[str]) -> bool:
    """Whether /proc/PID's environment points a compile cache variable into roots or it holds a file there open."""
    try:
        with open(f"{proc}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        environ = b""
    for item in environ.split(b"\0"):
        for var in CACHE_VARS:
            if item.startswith(var):
                value = os.fsdecode(item[len(var):])
                if os.path.isabs(value) and (_inside(os.path.normpath(value), roots)
                                             or _inside(os.path.realpath(value), roots)):
                    return True
    try:
        fds = os.listdir(f"{proc}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if _inside(os.readlink(f"{proc}/fd/{fd}"), roots):
                return True
        except OSError:
            continue
    return False


def cache_users(cache: Path) -> list[int]:
    """The processes (this one aside) that use a compile cache: their environment points TORCHINDUCTOR_CACHE_DIR or
    TRITON_CACHE_DIR into it (a trainer or a prediction started with it, compiling or not) or they hold a file under
    it open. Read from Linux's /proc; a process this user cannot read (another user's) is not seen, and without /proc
    none is."""
    roots = {os.path.normpath(os.path.abspath(cache)), os.path.realpath(cache)}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    me = os.getpid()
    return sorted(int(n) for n in names if n.isdigit() and int(n) != me and _uses_cache(f"/proc/{n}", roots))


def _clean_cache(model_dir: Path, layouts: list[RunLayout], idle: dict[Path, bool], dry_run: bool,
                 result: CleanResult, locks: list[RunLock]) -> None:
    """The configuration's .compile-cache/, when every fold of it (the target's and any other there, a symbolic link
    too) is finished and idle and no process uses it; removed while the folds' locks are held."""
    cache = model_dir / ".compile-cache"
    if os.path.islink(cache):
        result.kept.append(Entry(cache, 0, "a symbolic link: not followed"))
        return
    files = list(_files(cache)) if _is_dir(cache) else []
    if not files:
        return
    size = sum(_size(p) for p in files)
    folds = {layout.fold_dir for layout in layouts}
    try:
        folds |= {Path(e.path) for e in os.scandir(model_dir) if e.name.startswith("fold_")
                  and (e.is_symlink() or e.is_dir(follow_symlinks=False))}
    except OSError:
        pass
    waiting = []
    for f in sorted(folds):
        if f not in idle:  # another fold of the configuration, not the target's: judged the same way
            idle[f] = _other_idle(replace(layouts[0], fold=f.name[len("fold_"):]), dry_run, locks)
        if not idle[f]:
            waiting.append(f.name + (" (a symbolic link)" if os.path.islink(f) else ""))
    if waiting or not folds:
        result.kept.append(Entry(cache, size, f"a fold of this configuration is not finished, is in progress or "
                                              f"was kept ({', '.join(waiting) or 'no fold yet'}): its cache may "
                                              "still be used",
                                 len(files)))
        return
    users = cache_users(cache)
    if users:
        result.kept.append(Entry(cache, size, f"in use by {', '.join(f'pid {p}' for p in users)} (its environment "
                                              "names the cache or it holds a file of it open: a prediction, a "
                                              "trainer)", len(files)))
        return
    entries = _count_links([Entry(p, _size(p), CACHE_WHY) for p in files])
    if dry_run:
        result.removed.append(Entry(cache, sum(e.bytes for e in entries), CACHE_WHY, len(files)))
        return
    sub = CleanResult(dry_run=False)
    _remove(entries, sub)
    result.problems += sub.problems
    result.kept += sub.kept
    if sub.removed:
        result.removed.append(Entry(cache, sum(e.bytes for e in sub.removed), CACHE_WHY, len(sub.removed)))
    _prune([Path(root) for root, _, _ in os.walk(cache, followlinks=False)])


def clean(target: Target, dry_run: bool = False, quarantine: bool = False) -> CleanResult:
    """Clean every finished, idle fold of a run (its one fold) or an experiment (its cells); see the module's words.
    The dry run removes nothing and lists the same files with the same total. The folds' locks are held until their
    configurations' caches are settled."""
    result = CleanResult(dry_run)
    layouts = _folds(target)
    idle: dict[Path, bool] = {}
    by_model: dict[Path, list[RunLayout]] = {}
    locks: list[RunLock] = []
    try:
        for layout in layouts:
            idle[layout.fold_dir] = _clean_fold(layout, dry_run, quarantine, result, locks)
            by_model.setdefault(layout.fold_dir.parent, []).append(layout)
        for model_dir, group in by_model.items():
            _clean_cache(model_dir, group, idle, dry_run, result, locks)
    finally:
        for lock in locks:
            lock.release()
    return result


def clean_command(target: Target, dry_run: bool, quarantine: bool, say: Callable[[str], object] = print) -> int:
    """`nnunet-supervise clean`: clean, print what was (or would be) removed and kept; 0 done (or nothing to do), 1
    when something could not be judged or removed (said on its line; nothing of such a fold was touched)."""
    result = clean(target, dry_run, quarantine)
    say(render(result))
    return int(ExitCode.GAVE_UP) if result.problems else int(ExitCode.FINISHED)
