"""Small pure rules the runner applies to what its sensors saw, each unit-tested without a process or a clock.

The Decider (lifecycle.py) owns the run's states; these decide the facts it is fed: which alarm about a running
attempt becomes an Abort or a Recycle, whether a --c really resumed where it should, how long a cooperative save
may take, when a full disk is news, and what a new supervisor carries over from the previous one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

from supervisor.core.lifecycle import LoopState
from supervisor.core.messages import Abort, Record, Recycle
from supervisor.core.remedies import Remedies


def alarm_event(kind: str, message: str, fields: Mapping[str, Any] | None = None) -> Union[Abort, Recycle]:
    """An alarm about the running attempt: a divergence gives up (resuming repeats it); a stall or a finished trainer
    that does not exit is stopped and its end counted as that kind."""
    if kind == "diverged":
        return Abort(kind, message)
    return Recycle(kind, message, dict(fields or {}))


def attempt_phase(watched: str, final_checkpoint: bool) -> str:
    """Where an attempt ended: `validation` once checkpoint_final.pth exists (nnU-Net writes it right before the
    final validation, and then the relaunch is --val), else `training` once an epoch began, else `startup`. The
    log's "Training done." alone is not enough: the final checkpoint's save may be what failed."""
    if final_checkpoint:
        return "validation"
    return "training" if watched in ("training", "validation") else "startup"


def resume_check(attempt: int, expect_epoch: int | None, saw_no_checkpoint: bool,
                 first_epochs: Sequence[int]) -> tuple[bool, Abort | None]:
    """Did a --c launch resume where the verified checkpoint said? Returns (settled, abort).

    nnU-Net's --c quietly starts from scratch when it finds no checkpoint (it only prints a warning), and a trainer
    may load an older file than the one verified; both would silently throw epochs away.
    """
    expect = expect_epoch or 0
    if saw_no_checkpoint:
        return True, Abort("fresh_start_detected", f"attempt {attempt} was launched with --c to resume epoch {expect}, "
                                                   "but nnU-Net found no checkpoint and started from scratch")
    if not first_epochs:
        return False, None  # not known yet: no epoch started
    if min(first_epochs) < expect:
        return True, Abort("epoch_regression", f"attempt {attempt} resumed at epoch {min(first_epochs)}, below the "
                                               f"verified checkpoint's epoch {expect}")
    return True, None


# What a platform must allow a cooperative trainer between the stop signal and its exit, before the run is known:
# after the training step in flight (seconds on a GPU, for nnU-Net's 3D networks), or at the end of the epoch's
# validation steps when the stop came there, plus a save of some hundred MB (seconds); at the epoch end
# (save_on_stop: epoch) the rest of an epoch (minutes).
STEP_SAVE_S = 120.0
EPOCH_SAVE_S = 900.0


def save_allowance_s(enabled: bool, save_on_stop: str, configured: Union[str, float]) -> float:
    """Seconds a platform's stop deadline (systemd's TimeoutStopSec, SLURM's --signal lead, a pod's grace period)
    must leave for the cooperative save; 0 without cooperative mode (nnU-Net is stopped, nothing saved)."""
    if not enabled:
        return 0.0
    if configured != "auto":
        return float(configured)
    return STEP_SAVE_S if save_on_stop == "step" else EPOCH_SAVE_S


STOP_MARGIN_S = 60.0  # beyond the save and the tree's stop: the supervisor's own exit (state, events, lock)


def stop_deadline_s(stop_grace_s: float, enabled: bool, save_on_stop: str, configured: Union[str, float]) -> int:
    """How long a platform must wait between its stop signal and its SIGKILL (systemd's TimeoutStopSec, a pod's
    terminationGracePeriodSeconds, SLURM's --signal lead): the cooperative save, then the tree's SIGTERM grace, then
    the supervisor's own exit."""
    return int(stop_grace_s + save_allowance_s(enabled, save_on_stop, configured) + STOP_MARGIN_S)


def save_timeout_s(configured: Union[str, float], epoch_times: Sequence[float]) -> float:
    """How long a cooperative trainer may take to reach its epoch end and save: the rest of an epoch, generously."""
    if configured != "auto":
        return float(configured)
    return 2 * max(epoch_times) + 60 if epoch_times else 600.0


@dataclass
class DiskWatch:
    """A full disk is news twice: when it is first seen and when space is back (not at every look in between)."""

    said: bool = False

    def observe(self, free: int, needed: int, path: str) -> list[Record]:
        if free < needed and not self.said:
            self.said = True
            return [Record("disk_full", {"free_bytes": free, "needed_bytes": needed, "path": path})]
        if free >= needed and self.said:
            self.said = False
            return [Record("disk_space", {"free_bytes": free, "needed_bytes": needed})]
        return []


def carried_over(previous: Mapping[str, Any], slurm_job: str | None) -> LoopState:
    """A new supervisor's start: attempt numbers always continue (attempt-N.log); inside one SLURM job the restart
    budget does too, across its requeues (a requeue is not a fresh start of the job)."""
    remedies = Remedies.from_document(previous.get("remedies"))  # a remedy that worked stays for the whole run
    state = LoopState(attempt=_count(previous.get("attempt")), remedies=remedies)
    if slurm_job is not None and previous.get("slurm_job_id") == slurm_job:
        state = replace(state, restarts=_count(previous.get("restarts")))
    return state


def _count(value: object) -> int:
    """A non-negative count from state.json, 0 where it is missing or mistyped."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass
class Every:
    """Rate limit for a periodic look (the battery): due at once, then every `interval_s`."""

    interval_s: float
    last: float | None = None

    def due(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.interval_s:
            return False
        self.last = now
        return True
