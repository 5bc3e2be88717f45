"""Cooperative mode, inside the trainer process: atomic and frequent saves, save-on-request, a heartbeat.

`install(trainer, settings)` wraps methods of one nnU-Net trainer *instance* (so whatever class the run uses,
stock or custom, keeps its own overrides: the wrappers call the bound methods they replace):

- save_checkpoint: every save goes to a hidden temporary file in the same folder, is fsynced, then
  `os.replace`d over the target and the folder fsynced. A crash at any instant leaves the old file whole.
- on_epoch_end: afterwards, checkpoint_latest.pth is saved every `save_every_epochs` epochs and/or every
  `save_every_s` seconds (whatever the trainer's own `save_every`); then a pending stop request is honoured.
- stop requests (SIGTERM, SIGUSR1 from the supervisor): the safe point is the end of the current epoch, the only
  point where nnU-Net's checkpoint format (epoch counter, optimizer, logger with the EMA dice, LR from the epoch)
  describes the state exactly. Save there, exit 75. Before the first epoch and after training (the final
  validation, which a resume redoes) nothing would be lost, so it exits at once.
- train_step / validation_step: a heartbeat file, at most once a second, so the supervisor sees
  iteration-level progress.
- a save that fails for lack of space leaves the old checkpoint intact, says so and exits 74; the supervisor
  waits for space before it relaunches.
- _set_batch_size_and_oversample: with NNUNET_SUPERVISE_BATCH_SIZE set (a remedy after a CUDA OOM that the user
  opted in to), the batch size the plans give is replaced; the plans, the results folder and the checkpoints stay.

No torch import here: the trainer imports it; this module only orchestrates (and is unit-tested with a fake).
It imports nothing of the daemon (`supervisor.trainer.protocol` and `supervisor.atomic` only).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from supervisor.atomic import atomic_replace, atomic_write_text
from supervisor.trainer.protocol import (
    BATCH_SIZE_VAR,
    EXIT_DISK_FULL,
    EXIT_STOPPED,
    HEARTBEAT_VAR,
    MARK,
    SAVE_EVERY_EPOCHS_VAR,
    SAVE_EVERY_S_VAR,
)

TMP_PREFIX = "."  # temp_path()'s naming, to find a killed save's leftovers
TMP_INFIX = ".tmp-"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class Settings:
    save_every_epochs: int | None = 1
    save_every_s: float | None = None
    heartbeat: Path | None = None
    heartbeat_min_interval_s: float = 1.0
    exit_grace_s: float = 60.0  # after a clean-exit request, os._exit if threads keep the process alive
    batch_size: int | None = None  # a remedy: the batch size instead of the plans'

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        every = env.get(SAVE_EVERY_EPOCHS_VAR, "1")
        seconds = env.get(SAVE_EVERY_S_VAR, "")
        beat = env.get(HEARTBEAT_VAR, "")
        batch = env.get(BATCH_SIZE_VAR, "")
        return cls(save_every_epochs=int(every) if every and int(every) > 0 else None,
                   save_every_s=float(seconds) if seconds else None, heartbeat=Path(beat) if beat else None,
                   batch_size=int(batch) if batch.isdigit() and int(batch) > 0 else None)


def say(message: str) -> None:
    print(f"{MARK} {message}", flush=True)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when torch's zip writer wraps it in a RuntimeError ('file write failed')."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if "file write failed" in text or "unexpected pos" in text:  # PytorchStreamWriter on a full disk
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def remove_stale_temps(folder: Path) -> list[Path]:
    """Half-written temporaries left by a killed save (the real files beside them are whole)."""
    gone = []
    for p in folder.glob(f"{TMP_PREFIX}checkpoint_*.pth{TMP_INFIX}*"):
        pid = p.name.rsplit(TMP_INFIX, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


class DiskFull(Exception):
    pass


def atomic_save(save: Callable[[str], Any], target: Path) -> None:
    """Run `save(tmp)` then fsync + replace + fsync the folder; on any failure remove tmp, target untouched.

    A save that writes nothing (checkpointing disabled, a trainer that writes elsewhere) moves nothing."""
    try:
        atomic_replace(target, lambda tmp: save(str(tmp)))
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(f"saving {target.name} failed: {exc}") from exc
        raise


class Cooperation:
    """The state behind the wrappers of one trainer instance."""

    def __init__(self, trainer: Any, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], None] = sys.exit) -> None:
        self.trainer, self.settings, self.clock, self._exit = trainer, settings, clock, exit
        self.phase = "startup"  # startup -> training -> validation
        self.stop_requested: str | None = None
        self.main_pid = os.getpid()
        self.last_save_epoch: int | None = None  # the checkpoint_latest's current_epoch (epochs completed)
        self.last_save_at = clock()
        self.last_beat = 0.0
        self.last_event = clock()
        self.max_gap_s = 0.0
        self.iteration = 0

    # ---- wrappers ----

    def install(self) -> None:
        t = self.trainer
        orig_save, orig_end = t.save_checkpoint, t.on_epoch_end
        orig_start, orig_train_end = t.on_epoch_start, t.on_train_end
        orig_train_step, orig_val_step = t.train_step, t.validation_step
        if self.settings.batch_size is not None:
            orig_batch = t._set_batch_size_and_oversample

            def set_batch_size_and_oversample() -> None:
                orig_batch()
                before, t.batch_size = t.batch_size, self.settings.batch_size
                say(f"batch size {self.settings.batch_size} instead of {before} (the supervisor's remedy after a CUDA "
                    f"out-of-memory, which you opted in to: remedies.batch_size)")

            t._set_batch_size_and_oversample = set_batch_size_and_oversample

        def save_checkpoint(filename: str) -> None:
            target = Path(filename)
            try:
                atomic_save(orig_save, target)
            except DiskFull as exc:
                self.disk_full(str(exc), target)
                return
            if target.name == "checkpoint_latest.pth":
                self.last_save_epoch, self.last_save_at = int(t.current_epoch) + 1, self.clock()

        def on_epoch_start() -> None:
            self.phase, self.iteration = "training", 0
            orig_start()
            self.beat(force=True)

        def on_epoch_end() -> None:
            orig_end()  # the trainer's own (and any subclass's) epoch end; current_epoch is now the next one
            self.after_epoch()

        def on_train_end() -> None:
            self.phase = "validation"  # from here a stop loses nothing: --c redoes the final validation
            orig_train_end()
            if self.stop_requested:
                self.leave(f"stop requested ({self.stop_requested}) after checkpoint_final.pth was saved")

        def train_step(batch: Any) -> Any:
            out = orig_train_step(batch)
            self.iteration += 1
            self.beat()
            return out

        def validation_step(batch: Any) -> Any:
            out = orig_val_step(batch)
            self.beat()
            return out

        t.save_checkpoint, t.on_epoch_end, t.on_epoch_start = save_checkpoint, on_epoch_end, on_epoch_start
        t.on_train_end, t.train_step, t.validation_step = on_train_end, train_step, validation_step
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    # ---- behaviour ----

    def after_epoch(self) -> None:
        t = self.trainer
        done = int(t.current_epoch)  # epochs completed
        last = done >= int(t.num_epochs)  # on_train_end saves checkpoint_final right after
        every, seconds = self.settings.save_every_epochs, self.settings.save_every_s
        since = done - (self.last_save_epoch or 0)
        due = (every is not None and since >= every) or \
            (seconds is not None and self.clock() - self.last_save_at >= seconds)
        # a stop always saves; otherwise when due, except at the last epoch (checkpoint_final follows)
        if self.last_save_epoch != done and (self.stop_requested or (due and not last)):
            self.save_latest()
        self.beat(force=True)
        if self.stop_requested:
            self.leave(f"stop requested ({self.stop_requested}); checkpoint_latest.pth holds epoch {done}")

    def save_latest(self) -> None:
        t = self.trainer
        # nnU-Net's own trick (on_train_end): save_checkpoint stores current_epoch + 1
        t.current_epoch -= 1
        try:
            t.save_checkpoint(os.path.join(t.output_folder, "checkpoint_latest.pth"))
        finally:
            t.current_epoch += 1

    def disk_full(self, why: str, target: Path) -> None:
        say(f"disk full: {why}; the previous {target.name} is intact. Exiting {EXIT_DISK_FULL} so the supervisor "
            f"can wait for space")
        self.leave_now(EXIT_DISK_FULL)

    def beat(self, force: bool = False) -> None:
        now = self.clock()
        if self.phase != "startup":
            self.max_gap_s = max(self.max_gap_s, now - self.last_event)
        self.last_event = now
        path = self.settings.heartbeat
        if path is None or (not force and now - self.last_beat < self.settings.heartbeat_min_interval_s):
            return
        self.last_beat = now
        body = {"ts": time.time(), "pid": self.main_pid, "phase": self.phase,
                "epoch": int(self.trainer.current_epoch), "iteration": self.iteration,
                "max_gap_s": round(self.max_gap_s, 3)}
        try:
            atomic_write_text(path, json.dumps(body), durable=False)  # once a second: not worth an fsync
        except OSError:
            pass  # a full disk must not stop training; the supervisor falls back to the log

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.main_pid:
            # a forked dataloader worker inherited this handler: it must die as before (multiprocessing's
            # atexit terminates it with SIGTERM)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if self.stop_requested:
            return
        self.stop_requested = name
        if self.phase == "training":
            say(f"{name}: saving at the end of epoch {int(self.trainer.current_epoch)}, then exiting "
                f"{EXIT_STOPPED}")
            return
        self.leave(f"{name} during {self.phase}: nothing to save")

    def leave(self, why: str) -> None:
        say(f"{why}; exiting {EXIT_STOPPED}")
        self.leave_now(EXIT_STOPPED)

    def leave_now(self, code: int) -> None:
        # SystemExit unwinds nnU-Net normally; a non-daemon thread must not keep a saved trainer alive
        timer = threading.Timer(self.settings.exit_grace_s, os._exit, args=(code,))
        timer.daemon = True
        timer.start()
        self._exit(code)


def install(trainer: Any, settings: Settings | None = None) -> Cooperation:
    coop = Cooperation(trainer, settings or Settings.from_env())
    gone = remove_stale_temps(Path(trainer.output_folder))
    if gone:
        say(f"removed {len(gone)} half-written temporary checkpoint(s) of a killed save: "
            f"{', '.join(p.name for p in gone)}")
    coop.install()
    say(f"cooperative mode: atomic saves, checkpoint_latest every "
        f"{coop.settings.save_every_epochs or '-'} epoch(s)"
        f"{f' / {coop.settings.save_every_s:g} s' if coop.settings.save_every_s else ''}, "
        f"save on SIGTERM/SIGUSR1, heartbeat {coop.settings.heartbeat or 'off'}")
    return coop
