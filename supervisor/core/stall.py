"""When a silent trainer counts as stalled: a deadline that every sign of progress pushes out.

nnU-Net writes its training log once per epoch and prints to stdout during the final validation; a crash-only
loop never notices a trainer that stopped making progress (a dataloader deadlock, a SIGSTOPped or D-state
process, a stuck DDP step). `StallWatch` is pure: fed signs of progress and the monotonic time by the daemon's
attempt watch, it says when the silence has lasted too long for the phase the trainer is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# a training's phases, then a preprocessing's (fingerprint and planning report nothing until done: the startup
# allowance; each case written is progress, like an epoch)
AttemptPhase = Literal["startup", "training", "validation", "fingerprint", "planning", "preprocessing", "prediction",
                       "combining"]
PATIENT = ("startup", "fingerprint", "planning")
RECENT_EPOCHS = 20  # epoch times remembered (state.json) for the auto timeout


@dataclass(frozen=True)
class StallRules:
    """Allowances, in seconds; stall_timeout_s None means auto (learned from this run's epoch times)."""

    startup_grace_s: float = 900.0  # launch -> first epoch (imports, unpacking, torch.compile)
    stall_timeout_s: float | None = None
    floor_s: float = 120.0  # auto never goes below this
    # auto = factor x the longest recent epoch: room for an epoch twice as slow as any of the last 20, while a
    # hang is still noticed within about 3x the typical epoch (bench/hang_detect.py)
    auto_factor: float = 2.0
    validation_grace_s: float = 3600.0  # silence allowed during the final validation (one big case)


@dataclass
class StallWatch:
    """When the current attempt counts as stalled: a deadline that every sign of progress pushes out."""

    rules: StallRules
    launched_at: float
    epoch_times: list[float] = field(default_factory=list)  # recent epochs, this run (carried across attempts)
    phase: AttemptPhase = "startup"
    last_progress: float = 0.0
    last_what: str = "launch"
    # cooperative mode: the longest silence between two heartbeats of the trainer (iterations, epoch ends with
    # their saves), once an epoch end is included; the auto timeout then scales with it instead of whole epochs
    beat_gap_s: float | None = None
    unit: str = "epoch"  # what epoch_times measure, in the stall's words ("gap between cases" for preprocessing)

    def __post_init__(self) -> None:
        self.last_progress = self.launched_at

    def timeout_s(self) -> float:
        """The allowed silence in the current phase."""
        if self.phase in PATIENT:
            return self.rules.startup_grace_s
        if self.phase == "validation":
            return self.rules.validation_grace_s  # exactly as configured: the floor is for `auto` only
        return self.training_timeout_s()

    def training_timeout_s(self) -> float:
        if self.rules.stall_timeout_s is not None:
            return self.rules.stall_timeout_s
        if self.beat_gap_s is not None:
            return max(self.rules.floor_s, self.rules.auto_factor * self.beat_gap_s)
        if not self.epoch_times:
            return max(self.rules.floor_s, self.rules.startup_grace_s)  # nothing learned yet: be patient
        return max(self.rules.floor_s, self.rules.auto_factor * max(self.epoch_times[-RECENT_EPOCHS:]))

    def deadline(self) -> float:
        return self.last_progress + self.timeout_s()

    def progress(self, now: float, what: str, phase: AttemptPhase | None = None) -> None:
        """A sign of life: an epoch started or ended, a checkpoint or validation output was written."""
        self.last_progress, self.last_what = now, what
        if phase is not None:
            self.phase = phase

    def epoch_ended(self, now: float, seconds: float, first_of_attempt: bool) -> None:
        # The first epoch of an attempt carries warm-up (compile, workers, cache): not a measure of the pace,
        # unless it is all we have.
        if not first_of_attempt or not self.epoch_times:
            self.epoch_times = [*self.epoch_times, seconds][-RECENT_EPOCHS:]
        self.progress(now, "epoch end", "training")

    def paced(self, now: float, seconds: float, what: str, phase: AttemptPhase) -> None:
        """A unit of work done that measures the pace (a preprocessed case: the time since the one before)."""
        self.epoch_times = [*self.epoch_times, seconds][-RECENT_EPOCHS:]
        self.progress(now, what, phase)

    def stalled(self, now: float) -> str | None:
        """None, or why this attempt counts as hung."""
        silent = now - self.last_progress
        if silent < self.timeout_s():
            return None
        unit = self.unit if self.beat_gap_s is None else "gap between heartbeats"
        learned = ("" if self.phase not in ("training", "preprocessing", "prediction", "combining")
                   or self.rules.stall_timeout_s is not None
                   else f" (auto: {self.rules.auto_factor:g} x the longest recent {unit}, at least "
                        f"{self.rules.floor_s:g} s)")
        return (f"no progress for {silent:.0f} s in the {self.phase} phase (allowed {self.timeout_s():.0f} s"
                f"{learned}); last sign of life: {self.last_what}")
