"""Read epoch progress from nnU-Net's training_log_*.txt, incrementally and without torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.fileread import open_regular

# nnU-Net writes "<timestamp>: Epoch 12" when an epoch starts and "<timestamp>: Epoch time: 2.5 s" when it ends.
EPOCH_START = re.compile(r": Epoch (\d+)\s*$")
EPOCH_END = re.compile(r": Epoch time: ([0-9.]+) s\s*$")
TRAINING_DONE = re.compile(r": Training done\.\s*$")
VALIDATION_DONE = re.compile(r": Validation complete\s*$")
# The final validation logs "predicting <case>" as it starts each case (nnUNetTrainer.perform_actual_validation).
VALIDATION_CASE = re.compile(r": predicting \S+\s*$")
# Per epoch: "train_loss -0.4567", "val_loss -0.5", "Pseudo dice [0.81, 0.75]" (np.round'ed; nan stays "nan").
TRAIN_LOSS = re.compile(r": train_loss (\S+)\s*$")
VAL_LOSS = re.compile(r": val_loss (\S+)\s*$")
MAX_CHUNK = 64 << 20  # read at most this much per poll (a log that grew by gigabytes is read over several polls)
PSEUDO_DICE = re.compile(r": Pseudo dice (\[.*\])\s*$")


_NUMBER = re.compile(r"nan|[-+]?inf|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _number(text: str) -> float | None:
    """The number in "-0.4567", "nan" or numpy 2's "np.float32(-0.4567)"."""
    m = _NUMBER.search(re.sub(r"np\.\w+\(", "", text))
    return float(m.group(0)) if m else None


@dataclass
class LogProgress:
    """What one training log says so far."""

    first_epoch: int | None = None  # the epoch this trainer start began at (its resume point)
    current_epoch: int | None = None  # the epoch being trained now
    epochs_completed: int = 0  # nnU-Net's own count: epoch N finished means N + 1 completed
    epoch_times: list[float] = field(default_factory=list)
    training_done: bool = False
    validation_done: bool = False
    validation_cases: int = 0  # cases the final validation started
    train_loss: float | None = None
    val_loss: float | None = None
    pseudo_dice: str | None = None
    nan_loss_epochs: int = 0  # consecutive epochs whose train_loss was nan (divergence)

    def feed_line(self, line: str) -> None:
        if m := EPOCH_START.search(line):
            self.current_epoch = int(m.group(1))
            if self.first_epoch is None:
                self.first_epoch = self.current_epoch
        elif m := EPOCH_END.search(line):
            self.epoch_times.append(float(m.group(1)))
            if self.current_epoch is not None:
                self.epochs_completed = max(self.epochs_completed, self.current_epoch + 1)
        elif TRAINING_DONE.search(line):
            self.training_done = True
        elif VALIDATION_DONE.search(line):
            self.validation_done = True
        elif self.training_done and VALIDATION_CASE.search(line):
            self.validation_cases += 1
        elif m := TRAIN_LOSS.search(line):
            self.train_loss = _number(m.group(1))
            nan = self.train_loss is not None and self.train_loss != self.train_loss
            self.nan_loss_epochs = self.nan_loss_epochs + 1 if nan else 0
        elif m := VAL_LOSS.search(line):
            self.val_loss = _number(m.group(1))
        elif m := PSEUDO_DICE.search(line):
            self.pseudo_dice = m.group(1)


class LogFollower:
    """Tail one log file: each poll() parses only the complete lines added since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.progress = LogProgress()
        self._offset = 0
        self._partial = b""

    def poll(self) -> LogProgress:
        try:
            with open_regular(self.path) as f:
                size = f.seek(0, 2)
                if size < self._offset:  # rewritten shorter (a capped log, a copy put back): read it again
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                chunk = f.read(MAX_CHUNK)
        except OSError:  # gone, or not a regular file (a FIFO put in its place must not block the supervisor)
            return self.progress
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for its newline
        for raw in lines:
            self.progress.feed_line(raw.decode("utf-8", "replace"))
        return self.progress


def read_progress(path: Path) -> LogProgress:
    """Parse a whole log file once."""
    return LogFollower(path).poll()


def read_tail(path: Path, max_bytes: int = 64 * 1024) -> str:
    """The last max_bytes of a file as text ('' if it does not exist)."""
    try:
        with open_regular(path) as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            return f.read(max_bytes).decode("utf-8", "replace")
    except OSError:  # missing, or not a regular file
        return ""
