"""What the supervisor reads about the running attempt: epochs, losses, silence, a finish it does not leave.

One `AttemptWatch` per launch. The sensors poll it on every tick and whenever files change; it answers with
at most one alarm per attempt: the attempt stalled, lingers after finishing, or diverged. It also notes which
checkpoints were (re)written, for the verification ahead.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.classify import SHM_ERROR
from supervisor.core.stall import RECENT_EPOCHS, AttemptPhase, StallRules, StallWatch
from supervisor.fileread import read_bytes
from supervisor.layout import CHECKPOINT_NAMES, RunLayout
from supervisor.stages.training.traininglog import LogFollower, LogProgress, read_tail


@dataclass(frozen=True)
class Alarm:
    """Something is wrong with the running attempt."""

    kind: str  # "stall" | "lingering" | "diverged" | "shm_exhausted"
    message: str


# Workers that cannot put a batch into a full /dev/shm print torch's error and the trainer waits for ever (nnU-Net
# sees live workers, so it never says they died): that many seconds without progress after the error is a hang.
SHM_HANG_S = 30.0
_SHM_RE = re.compile(SHM_ERROR, re.MULTILINE)


class AttemptWatch:
    """Progress of one attempt, from the training logs it created, its attempt log and the fold folder."""

    def __init__(self, layout: RunLayout, attempt: int, logs_before: set[Path], rules: StallRules,
                 launched_at: float, epoch_times: list[float], linger_grace_s: float, nan_loss_epochs: int,
                 heartbeat: Path | None = None, phase: AttemptPhase = "startup") -> None:
        self.layout, self.attempt, self._logs_before = layout, attempt, logs_before
        self.heartbeat = heartbeat  # cooperative mode: the trainer's heartbeat file
        self._beat = _stamp(heartbeat) if heartbeat else None  # an earlier attempt's last beat is not news
        self.stall = StallWatch(rules, launched_at, list(epoch_times), phase=phase)
        self.linger_grace_s, self.nan_loss_epochs = linger_grace_s, nan_loss_epochs
        self.followers: dict[Path, LogFollower] = {}
        self._epoch: int | None = None
        self._ended = 0  # epoch ends seen in this attempt
        self._marks: tuple[object, ...] = ()
        self._validation_marks: tuple[object, ...] = ()
        self._finished_since: float | None = None
        self.alarmed = False  # one alarm per attempt: the lifecycle is already stopping it
        self.written: list[Path] = []  # checkpoints (re)written since the sensors last looked

    def logs(self) -> list[LogProgress]:
        """Poll the training logs this attempt created (nnU-Net starts a new one per start)."""
        for path in self.layout.training_logs():
            if path not in self._logs_before and path not in self.followers:
                self.followers[path] = LogFollower(path)
        return [f.poll() for f in self.followers.values()]

    def poll(self, now: float) -> Alarm | None:
        progress = self.logs()
        self._feed_stall(now, progress)
        if self.alarmed:
            return None
        alarm = self._alarm(now, progress)
        self.alarmed = alarm is not None
        return alarm

    def _alarm(self, now: float, progress: list[LogProgress]) -> Alarm | None:
        if self.layout.is_finished():
            self._finished_since = self._finished_since if self._finished_since is not None else now
            if now - self._finished_since >= self.linger_grace_s:
                return Alarm("lingering", f"training and validation finished {now - self._finished_since:.0f} s "
                                            "ago but the trainer has not exited")
            return None  # finished: silence is expected now, not a stall
        nans = max((p.nan_loss_epochs for p in progress), default=0)
        if self.nan_loss_epochs and nans >= self.nan_loss_epochs:
            return Alarm("diverged", f"train_loss was nan for {nans} epochs in a row: the training diverged. "
                                       "Resuming from the same checkpoint repeats it; check the data (NaNs, "
                                       "empty labels, intensities) or lower the learning rate")
        silent = now - self.stall.last_progress
        if silent >= SHM_HANG_S:
            m = _SHM_RE.search(read_tail(self.layout.attempt_log(self.attempt), 64 * 1024))
            if m is not None:
                return Alarm("shm_exhausted", f"nnU-Net's augmentation workers cannot hand over batches through "
                                              f"/dev/shm ('{m.group(0)}') and nothing progressed for {silent:.0f} s")
        why = self.stall.stalled(now)
        return Alarm("stall", why) if why else None

    def _feed_stall(self, now: float, progress: list[LogProgress]) -> None:
        for p in progress:
            if p.current_epoch is not None and p.current_epoch != self._epoch:
                self._epoch = p.current_epoch
                self.stall.progress(now, f"epoch {p.current_epoch} started", "training")
            for seconds in p.epoch_times[self._ended:]:
                self._ended += 1
                self.stall.epoch_ended(now, seconds, first_of_attempt=self._ended == 1)
            if p.training_done and self.stall.phase != "validation":
                self.stall.progress(now, "training done, final validation", "validation")
        self._feed_heartbeat(now)
        marks = tuple(_stamp(self.layout.checkpoint(n)) for n in CHECKPOINT_NAMES)
        if marks != self._marks:
            if self._marks:
                self.stall.progress(now, "checkpoint written")
                self.written += [self.layout.checkpoint(n) for n, old, new in zip(CHECKPOINT_NAMES, self._marks, marks,
                                                                                  strict=True)
                                 if new is not None and new != old]
            self._marks = marks
        if self.stall.phase == "validation":
            # Only the validation's own progress counts: a case started (nnU-Net logs "predicting <case>") or an
            # export written (validation/, predicted_next_stage/). Arbitrary output (a warning printed in a loop by
            # a deadlocked trainer) does not.
            seen = (sum(p.validation_cases for p in progress), *(_entries(self.layout.fold_dir / name)
                                                                 for name in ("validation", "predicted_next_stage")))
            if seen != self._validation_marks:
                if self._validation_marks:
                    self.stall.progress(now, "validation output")
                self._validation_marks = seen

    def _feed_heartbeat(self, now: float) -> None:
        """Cooperative mode: a fresh heartbeat file is progress at iteration granularity (a stat per poll)."""
        if self.heartbeat is None:
            return
        stamp = _stamp(self.heartbeat)
        if stamp is None or stamp == self._beat:
            return
        self._beat = stamp
        try:
            beat = json.loads(read_bytes(self.heartbeat, 64 << 10, "heartbeat file"))
            epoch, iteration, phase = int(beat["epoch"]), int(beat["iteration"]), str(beat["phase"])
            gap = float(beat["max_gap_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # mid-replace or foreign: the next one will do
        if phase == "training":
            self.stall.progress(now, f"heartbeat (epoch {epoch}, iteration {iteration})", "training")
            if self._ended >= 1 and gap > 0:  # an epoch end (with its saves) is part of the learned gap
                self.stall.beat_gap_s = gap

    def status(self, now: float) -> dict[str, object]:
        """For state.json: what a person glancing at the run wants to know."""
        last = max(self.followers.values(), key=lambda f: f.path.name).progress if self.followers else None
        return {"phase": self.stall.phase, "epoch_times": self.stall.epoch_times[-RECENT_EPOCHS:],
                "stall_timeout_s": round(self.stall.timeout_s(), 1),
                # a wall-clock time rather than "silent for N s": state.json then changes only on news
                "last_progress_at": round(time.time() - (now - self.stall.last_progress)),
                "train_loss": _finite(last.train_loss if last else None),
                "val_loss": _finite(last.val_loss if last else None), "pseudo_dice": last.pseudo_dice if last else None}


def _finite(x: float | None) -> float | str | None:
    """JSON has no nan: say it in words."""
    return x if x is None or math.isfinite(x) else str(x)


def _entries(folder: Path) -> tuple[int, int]:
    """How many files a folder (and its subfolders, one level: predicted_next_stage/<config>/) holds, and its
    newest mtime: grows as nnU-Net's export pool writes cases."""
    count, newest = 0, 0
    try:
        for entry in os.scandir(folder):
            count += 1
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
            if entry.is_dir(follow_symlinks=False):
                for sub in os.scandir(entry.path):
                    count += 1
                    newest = max(newest, sub.stat(follow_symlinks=False).st_mtime_ns)
    except OSError:
        pass
    return count, newest


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return None
