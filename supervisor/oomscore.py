"""Make the kernel's OOM killer pick the trainer, not its supervisor.

The supervisor lowers its own /proc/self/oom_score_adj (root, or CAP_SYS_RESOURCE, may), and every process it
starts is set back to the value the supervisor itself was started with: the trainer and its workers must stay the
first choice, and a checkpoint probe or a fold supervisor must not be shielded either. Where it may not lower its own
(an unprivileged user), it raises what it starts by as much instead (raising needs no privilege): the order the
kernel chooses in is the same. The children's value travels in CHILD_VAR, so a fold supervisor started by an
experiment supervisor (and lowered by inheritance) hands its trainer the user's value, not its own.
"""

from __future__ import annotations

import os
from pathlib import Path

SUPERVISOR_SCORE = -500  # between the default 0 and -1000 (never killed): a leaking supervisor can still be chosen
CHILD_VAR = "NNUNET_SUPERVISE_CHILD_OOM_SCORE_ADJ"
MAX_SCORE = 1000


def _read(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


_DONE: dict[Path, str] = {}  # per /proc entry: what protect_self said the first time in this process


def protect_self(score: int = SUPERVISOR_SCORE, proc: Path = Path("/proc/self")) -> str:
    """Lower our own oom_score_adj to `score`; returns what happened, in words (for the log and `check`). Once per
    process: a second call (an experiment's preprocessing, then its folds, in one process) changes nothing, where it
    would raise the children's score a second time."""
    if proc in _DONE:
        return _DONE[proc]
    _DONE[proc] = said = _protect(score, proc)
    return said


def _protect(score: int, proc: Path) -> str:
    current = _read(proc / "oom_score_adj")
    if current is None:
        return "oom_score_adj not available here: the kernel's OOM killer may pick the supervisor"
    base = int(os.environ.get(CHILD_VAR, current))  # an experiment supervisor's fold supervisor: the user's value
    if current <= score:
        os.environ[CHILD_VAR] = str(base)
        return f"oom_score_adj {current} already (the OOM killer picks the trainer first)"
    try:
        (proc / "oom_score_adj").write_text(str(score))
    except OSError:
        raised = min(MAX_SCORE, base - score)
        os.environ[CHILD_VAR] = str(raised)
        return (f"cannot lower oom_score_adj below {current} (no CAP_SYS_RESOURCE); the trainer's tree is raised to "
                f"{raised} instead, so the kernel's OOM killer still picks it before the supervisor")
    os.environ[CHILD_VAR] = str(base)
    return f"oom_score_adj {current} -> {score}: the kernel's OOM killer picks the trainer, not the supervisor"


def unprotect(pid: int, proc_root: Path = Path("/proc")) -> None:
    """Set a process we started to its value: ours as we were started (raising never needs privileges)."""
    base = os.environ.get(CHILD_VAR)
    if base is None:
        return
    try:
        (proc_root / str(pid) / "oom_score_adj").write_text(base)
    except OSError:
        pass  # gone already, or not ours to change


def may_lower(proc: Path = Path("/proc/self")) -> bool:
    """Whether this process could lower its oom_score_adj (for `check`): tried by writing the value it has."""
    current = _read(proc / "oom_score_adj")
    if current is None:
        return False
    if current <= SUPERVISOR_SCORE:
        return True
    try:
        (proc / "oom_score_adj").write_text(str(current - 1))
        (proc / "oom_score_adj").write_text(str(current))
    except OSError:
        return False
    return True
