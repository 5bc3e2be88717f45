"""Training as a stage of the engine: one fold of `nnUNetv2_train`.

Its command is nnU-Net's (or the cooperative shim's) with --c, --val or -pretrained_weights as the resume plan says;
its progress the training log's epochs, the checkpoints it writes and the final validation's cases; "done" is
checkpoint_final.pth with validation/summary.json; before each relaunch its checkpoints are verified (ahead, while
the previous attempt trained) and its setup compared with the checkpoint's; its causes and remedies are the ladder's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.checkpoints import prepare
from supervisor.command import build_argv, build_env, trainer_command
from supervisor.config import Config
from supervisor.context import RunContext
from supervisor.core.lifecycle import TRAINING_WORDS, Words
from supervisor.core.messages import Begin, ChildExited, DiskChecked, Record, Spawn, StopRequested
from supervisor.core.remedies import Ladder
from supervisor.core.rules import save_timeout_s
from supervisor.layout import RunFiles
from supervisor.observe.progress import checkpoint_age_s, status_line
from supervisor.stages.stage import Look, PrepareJob
from supervisor.stages.training.launching import Launcher, VerifiedAhead
from supervisor.stages.training.remedying import fitted_env, ladder_for
from supervisor.stages.training.sensors import Sensors

if TYPE_CHECKING:
    from supervisor.daemon.process import ProcessOps


class TrainingStage:
    """One fold's training, for the engine (supervisor.daemon.runner)."""

    name = "training"
    words: Words = TRAINING_WORDS

    def __init__(self, ctx: RunContext, ops: ProcessOps, post: Callable[[object], object],
                 sized: dict[str, str] | None = None) -> None:
        self.ctx, self.layout = ctx, ctx.layout
        self.config: Config = ctx.config
        self.config_path: Path = ctx.config_path
        self.files: RunFiles = ctx.layout
        # nnU-Net's process counts fitted to what this process is given (affinity, cgroup, SLURM), once: the
        # allocation does not change under a running supervisor
        self.sized = fitted_env(ctx) if sized is None else sized
        self.ladder: Ladder | None = ladder_for(ctx, sized=self.sized)
        self.sensors = Sensors(ctx, ops, [])
        self.launcher = Launcher(ctx, post)
        self._logs_before: set[Path] = set()

    @property
    def work_dir(self) -> Path:
        return self.layout.fold_dir

    @property
    def attempt(self) -> int:
        return self.sensors.attempt

    # ---- the run ----

    def remember(self, previous: dict[str, Any]) -> None:
        self.launcher.remember(previous)
        self.sensors.carry_epoch_times(previous.get("epoch_times"))

    def begin(self) -> Begin:
        return self.sensors.begin(self.launcher.memory.had_checkpoints)

    def start(self) -> None:
        self.launcher.start()

    def stop(self) -> None:
        self.launcher.stop()

    def news(self, item: object) -> None:
        if isinstance(item, VerifiedAhead):
            self.launcher.verified(item.verdicts)

    # ---- before a launch ----

    def preparing(self) -> None:
        self.launcher.start_verifying()

    def prepare(self, resume: bool, gpu_wait: Callable[[], object],
                remedies: tuple[tuple[str, str], ...]) -> PrepareJob:
        return self.launcher.work(resume, gpu_wait, remedies)

    def applied(self, outcome: Any) -> list[Record]:
        assert isinstance(outcome, prepare.Outcome)
        self.launcher.applied(outcome)
        return list(outcome.records)

    def command(self, spawn: Spawn) -> tuple[list[str], dict[str, str]]:
        self._logs_before = set(self.layout.training_logs())  # the attempt's own training log is the new one
        argv = build_argv(self.ctx, trainer_command(self.ctx), spawn.resume, spawn.pretrained, spawn.validate)
        return argv, {**build_env(self.ctx, spawn.attempt), **self.launcher.trust_env()}

    # ---- while it runs ----

    def launched(self, spawn: Spawn, pid: int, now: float) -> None:
        resumed = spawn.resume and not spawn.validate
        self.sensors.launched(spawn.attempt, self._logs_before, now, self.launcher.expect_epoch if resumed else None,
                              pid, validate=spawn.validate,
                              resumed_from=self.launcher.resumed_from if spawn.resume else None)

    def look(self, now: float) -> Look:
        look = self.sensors.look(now)
        if self.sensors.written:
            self.launcher.written(self.sensors.written)  # verified in the background, ahead of any relaunch
            self.sensors.written = []
        return look

    def stall_deadline(self) -> float | None:
        return self.sensors.stall_deadline()

    def stall_dump_path(self) -> Path:
        return self.sensors.stall_dump_path()

    def main_exited(self) -> None:
        self.sensors.main_exited()

    def settle(self, returncode: int) -> None:
        pass  # what a fold leaves is read in exited (the log's tail, the checkpoints' headers): fast

    def exited(self, returncode: int) -> ChildExited:
        return self.sensors.exited(returncode)

    def drain(self) -> list[Record]:
        return []

    def stop_request(self, ev: StopRequested) -> StopRequested:
        """Cooperative mode: the trainer saves at its epoch end first, given the time an epoch takes here."""
        if not self.config.cooperative.enabled:
            return ev
        return StopRequested(ev.reason, save_timeout_s(self.config.cooperative.stop_timeout_s,
                                                       self.sensors.recent_epoch_times()))

    def disk(self) -> tuple[list[Record], DiskChecked]:
        return self.sensors.disk()

    # ---- what it says ----

    def facts(self, now: float, running: bool) -> dict[str, Any]:
        s, memory = self.sensors, self.launcher.memory
        return {"epoch": s.epoch_now, "num_epochs": s.total_epochs(), "epoch_times": s.recent_epoch_times(),
                "attempt_status": s.attempt_status(now) if running else None,
                "verified_epoch": memory.verified_epoch, "warm_start_weights": memory.warm_weights,
                "fold_dir": str(self.layout.fold_dir), "verified_ahead": self.launcher.verified_ahead}

    def status(self, state: str, attempt: int, facts: dict[str, Any], wall_now: float) -> tuple[str, dict[str, Any]]:
        age = checkpoint_age_s(self.layout.fold_dir, wall_now)
        epoch, total = facts.get("epoch"), facts.get("num_epochs")
        fields = {"epoch": epoch, "num_epochs": total, "checkpoint_age_s": age, "epoch_times": facts.get("epoch_times")}
        return status_line(state, attempt, epoch, total, age), fields

    def gpu_request(self) -> tuple[str, str | None, int] | None:
        nn = self.config.nnunet
        return nn.device, nn.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES")), nn.num_gpus
