"""Cooperative mode, inside the trainer process: atomic and frequent saves, save-on-request, a heartbeat.

`install(trainer, settings)` wraps methods of one nnU-Net trainer *instance* (so whatever class the run uses,
stock or custom, keeps its own overrides: the wrappers call the bound methods they replace):

- save_checkpoint: every save goes to a hidden temporary file in the same folder, is fsynced, then
  `os.replace`d over the target and the folder fsynced. A crash at any instant leaves the old file whole.
- on_epoch_end: afterwards, checkpoint_latest.pth is saved every `save_every_epochs` epochs and/or every
  `save_every_s` seconds (whatever the trainer's own `save_every`); then a pending stop request is honoured.
- stop requests (SIGTERM, SIGUSR1 from the supervisor): the training step in flight is finished, then a checkpoint
  is saved as nnU-Net saves one (the trainer's own save_checkpoint: model, optimizer, grad scaler, logger, epoch)
  with where in the epoch it was added under STEP_KEY (steps done, the steps' losses), atomically, and the process
  exits 75. The resume (load_checkpoint, then the first epoch's on_train_epoch_start) runs only that epoch's
  remaining steps and hands on_train_epoch_end the earlier steps' outputs with its own, so the epoch is logged once,
  with its LR and mean loss as in an uninterrupted run (patches are sampled at random: no data order to replay).
  A stop in the epoch's validation steps saves at the epoch end; before the first epoch and after training (the
  final validation, which a resume redoes) nothing would be lost, so it exits at once.
- snapshot_every_s: at a step boundary at least this often, the checkpoint (with STEP_KEY) is copied to memory
  (the trainer's own save_checkpoint, its torch.save caught) and written from a background thread, atomically;
  the next step waits only for the copy. A hard crash then costs at most that interval plus a step.
- train_step / validation_step: a heartbeat file, at most once a second, so the supervisor sees
  iteration-level progress.
- a save that fails for lack of space leaves the old checkpoint intact, says so and exits 74; the supervisor
  waits for space before it relaunches.
- start-up timing (Startup): the process start, nnU-Net's imports, the trainer's construction, initialize, a
  resume's load_checkpoint, get_dataloaders and the first train_step, as one `start-up:` line in the attempt log at
  the first step (and a "startup" key in the heartbeat from then on); `report` reads the line back.
- _set_batch_size_and_oversample: with NNUNET_SUPERVISE_BATCH_SIZE set (a remedy after a CUDA OOM that the user
  opted in to), the batch size the plans give is replaced; the plans, the results folder and the checkpoints stay.

No torch import here: the trainer imports it, and the shim uses the module it finds loaded (sys.modules) only to
catch the trainer's own torch.save / torch.load calls; it is unit-tested with a fake.
It imports nothing of the daemon (`supervisor.trainer.protocol` and `supervisor.atomic` only).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from supervisor.atomic import atomic_replace, atomic_write_text
from supervisor.trainer.protocol import (
    BATCH_SIZE_VAR,
    CONTEXT_VAR,
    EXIT_DISK_FULL,
    EXIT_STOPPED,
    HEARTBEAT_VAR,
    MARK,
    SAVE_EVERY_EPOCHS_VAR,
    SAVE_EVERY_S_VAR,
    SAVE_ON_STOP_VAR,
    SNAPSHOT_EVERY_S_VAR,
    STEP_KEY,
    WRITTEN_VAR,
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
    snapshot_every_s: float | None = None  # a step-boundary snapshot at least this often (None: none)
    written: Path | None = None  # where each checkpoint written is recorded for the supervisor (None: nowhere)
    context: str = ""  # the supervisor's verification context at the launch, copied into each record
    stop_at_step: bool = True  # a stop saves after the step in flight (False: at the epoch end)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        every = env.get(SAVE_EVERY_EPOCHS_VAR, "1")
        seconds = env.get(SAVE_EVERY_S_VAR, "")
        beat = env.get(HEARTBEAT_VAR, "")
        batch = env.get(BATCH_SIZE_VAR, "")
        snap = env.get(SNAPSHOT_EVERY_S_VAR, "")
        return cls(save_every_epochs=int(every) if every and int(every) > 0 else None,
                   save_every_s=float(seconds) if seconds else None, heartbeat=Path(beat) if beat else None,
                   batch_size=int(batch) if batch.isdigit() and int(batch) > 0 else None,
                   snapshot_every_s=float(snap) if snap and float(snap) > 0 else None,
                   written=Path(env[WRITTEN_VAR]) if env.get(WRITTEN_VAR) else None,
                   context=env.get(CONTEXT_VAR, ""), stop_at_step=env.get(SAVE_ON_STOP_VAR, "step") != "epoch")


def all_finite(torch: Any, obj: Any) -> bool:
    """No NaN or inf in any floating tensor of obj (the model's weights, the optimizer's state)."""
    if isinstance(obj, dict):
        return all(all_finite(torch, v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(torch, v) for v in obj)
    if torch is not None and isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return bool(torch.isfinite(obj).all())
    return True


class Records:
    """What the trainer wrote, for the supervisor: per checkpoint file, its size and zip CRCs as written (the
    central directory: no data read), the epoch and step it holds, whether its tensors were finite, and the
    verification context of the launch. The supervisor trusts a file whose bytes still match (its structural check
    confirms the CRCs) without loading it again in a torch probe."""

    def __init__(self, path: Path | None, context: str) -> None:
        self.path, self.context = path, context
        self._lock = threading.Lock()  # the main thread and the snapshot writer

    def note(self, target: Path, checkpoint: Any, finite: bool, step: int | None) -> None:
        if self.path is None or not self.context or not isinstance(checkpoint, dict):
            return
        try:
            st = target.stat()
            with zipfile.ZipFile(target) as zf:
                crcs = [i.CRC for i in zf.infolist()]
        except (OSError, zipfile.BadZipFile):
            return  # not a zip (a trainer that saves otherwise): the supervisor probes it as before
        record = {"size": st.st_size, "crcs": crcs, "epoch": checkpoint.get("current_epoch"), "step": step,
                  "finite": finite, "context": self.context, "ts": time.time()}
        with self._lock:
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError):
                doc = {}
            doc = doc if isinstance(doc, dict) else {}
            doc[target.name] = record
            try:
                # not fsynced: a record lost to a power cut only costs the relaunch a probe
                atomic_write_text(self.path, json.dumps(doc), durable=False)
            except OSError:
                pass


@dataclass(frozen=True)
class StepState:
    """Where in an epoch a save was made: what the resume needs to finish that epoch as if never stopped."""

    epoch: int  # the epoch in progress (nnU-Net's current_epoch while it runs)
    steps_done: int
    steps_total: int  # num_iterations_per_epoch
    outputs: tuple[dict[str, float], ...]  # train_step's outputs so far, as plain numbers

    def to_doc(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "steps_done": self.steps_done, "steps_total": self.steps_total,
                "outputs": [dict(o) for o in self.outputs]}

    @classmethod
    def from_doc(cls, doc: Any) -> StepState | None:
        """None for anything but a well-formed record (a foreign or damaged one is ignored: the epoch is redone)."""
        if not isinstance(doc, dict):
            return None
        epoch, done, total, outputs = (doc.get(k) for k in ("epoch", "steps_done", "steps_total", "outputs"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, done, total)) \
                or not isinstance(outputs, list) or not all(
                    isinstance(o, dict) and all(isinstance(v, (int, float)) for v in o.values()) for o in outputs):
            return None
        assert isinstance(epoch, int) and isinstance(done, int) and isinstance(total, int)
        if not 0 < done < total or len(outputs) != done:
            return None
        return cls(epoch, done, total, tuple(outputs))


def resume_at(state: StepState | None, epoch: int, steps_total: int) -> StepState | None:
    """The saved position when it belongs to the epoch about to run with the same number of steps, else None (a
    plain nnU-Net checkpoint, or the trainer's iterations per epoch changed: the epoch runs whole)."""
    if state is None or state.epoch != epoch or state.steps_total != steps_total:
        return None
    return state


def as_numbers(output: Any) -> dict[str, float] | None:
    """A train_step output as plain numbers (nnU-Net's {"loss": array(0.53)}); None when a value is not one number
    (a custom trainer's array): such an epoch is saved at its end only."""
    if not isinstance(output, dict):
        return None
    out = {}
    for key, value in output.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            return None
    return out


def cpu_copy(obj: Any, memo: dict[Any, Any] | None = None) -> Any:
    """A copy that later training steps cannot change: tensors detached and copied to the CPU, the rest deep-copied.
    Tensors that share a storage (nnU-Net's state dict lists the encoder's again under decoder.encoder) share the
    copy's, so the file written is no larger than nnU-Net's own."""
    memo = {} if memo is None else memo
    if isinstance(obj, dict):
        return {k: cpu_copy(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v, memo) for v in obj)
    if hasattr(obj, "detach") and hasattr(obj, "to"):
        tensor = obj.detach()
        storage = getattr(tensor, "untyped_storage", None)
        torch = sys.modules.get("torch")
        if storage is None or torch is None:
            return tensor.to("cpu", copy=True)  # not a torch tensor (a stand-in): a plain copy
        source = storage()
        key = (source.device.type, source.device.index, source.data_ptr(), source.nbytes())
        copied = memo.get(key)
        if copied is None:
            copied = memo[key] = source.clone() if source.device.type == "cpu" else source.cpu()
        return torch.empty((0,), dtype=tensor.dtype).set_(copied, tensor.storage_offset(), tensor.size(),
                                                           tensor.stride())
    return copy.deepcopy(obj)


@contextlib.contextmanager
def patched(module: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """module.name replaced by make(original) for the duration (the trainer looks torch.save up at each call)."""
    original = getattr(module, name)
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


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
                 exit: Callable[[int], None] = sys.exit, torch: Any = None) -> None:
        self.trainer, self.settings, self.clock, self._exit = trainer, settings, clock, exit
        self._torch = torch  # None: the torch the trainer loaded, found when first needed
        self.phase = "startup"  # startup -> training -> validation
        self.stop_requested: str | None = None
        self.main_pid = os.getpid()
        self.last_save_epoch: int | None = None  # the checkpoint_latest's current_epoch (epochs completed)
        self.last_save_at = clock()
        self.last_beat = 0.0
        self.last_event = clock()
        self.max_gap_s = 0.0
        self.iteration = 0
        self.in_steps = False  # between on_train_epoch_start and on_train_epoch_end: a step-level save is possible
        self.steps_total: int | None = None  # the trainer's num_iterations_per_epoch
        self.outputs: list[dict[str, float]] | None = []  # this epoch's train_step outputs (None: not numbers)
        self.carried: list[dict[str, float]] = []  # a resumed epoch's outputs from before the stop
        self.resume: StepState | None = None  # from the checkpoint loaded, until its epoch starts
        self.last_snapshot = clock()
        self.writer: threading.Thread | None = None
        self.write_error: BaseException | None = None
        self.records = Records(settings.written, settings.context)
        self.startup: dict[str, Any] | None = None  # Startup.doc() once the first step is done: in the heartbeat

    @property
    def torch(self) -> Any:
        return self._torch if self._torch is not None else sys.modules.get("torch")

    # ---- wrappers ----

    def install(self) -> None:
        t = self.trainer
        orig_save, orig_end = t.save_checkpoint, t.on_epoch_end
        orig_start, orig_train_end = t.on_epoch_start, t.on_train_end
        orig_train_step, orig_val_step = t.train_step, t.validation_step
        self._orig_save = orig_save
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
            seen: list[tuple[Any, bool]] = []

            def observing(save: Callable[..., Any]) -> Callable[..., Any]:
                def observed(obj: Any, *args: Any, **kwargs: Any) -> Any:
                    seen.append((obj, all_finite(self.torch, obj)))  # before it is written: what the record says
                    return save(obj, *args, **kwargs)
                return observed

            torch = self.torch if self.settings.written is not None else None
            try:
                if torch is not None:
                    with patched(torch, "save", observing):
                        atomic_save(orig_save, target)
                else:
                    atomic_save(orig_save, target)
            except DiskFull as exc:
                self.disk_full(str(exc), target)
                return
            if seen:
                self.records.note(target, seen[-1][0], seen[-1][1], None)
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
            self.wait_for_writer()
            self.phase = "validation"  # from here a stop loses nothing: --c redoes the final validation
            orig_train_end()
            if self.stop_requested:
                self.leave(f"stop requested ({self.stop_requested}) after checkpoint_final.pth was saved")

        def train_step(batch: Any) -> Any:
            out = orig_train_step(batch)
            self.after_step(out)
            return out

        def validation_step(batch: Any) -> Any:
            out = orig_val_step(batch)
            self.beat()
            return out

        t.save_checkpoint, t.on_epoch_end, t.on_epoch_start = save_checkpoint, on_epoch_end, on_epoch_start
        t.on_train_end, t.train_step, t.validation_step = on_train_end, train_step, validation_step
        self._install_steps()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _install_steps(self) -> None:
        """The epoch's training steps as a unit a save can stop inside (nnU-Net's run_training: on_train_epoch_start,
        num_iterations_per_epoch train_steps, on_train_epoch_end(their outputs)) and the resume that finishes it."""
        t = self.trainer
        if not all(hasattr(t, n) for n in ("on_train_epoch_start", "on_train_epoch_end", "load_checkpoint",
                                            "num_iterations_per_epoch")):
            return  # not nnU-Net's protocol: saves stay at the epoch end
        orig_epoch_start, orig_epoch_end, orig_load = t.on_train_epoch_start, t.on_train_epoch_end, t.load_checkpoint

        def load_checkpoint(filename_or_checkpoint: Any) -> None:
            loaded: list[Any] = []

            def catching(load: Callable[..., Any]) -> Callable[..., Any]:
                def caught(*args: Any, **kwargs: Any) -> Any:
                    loaded.append(load(*args, **kwargs))
                    return loaded[-1]
                return caught

            torch = self.torch
            if torch is not None and isinstance(filename_or_checkpoint, str):
                with patched(torch, "load", catching):  # read once: nnU-Net's own load, its result kept
                    orig_load(filename_or_checkpoint)
            else:
                orig_load(filename_or_checkpoint)
                loaded.append(filename_or_checkpoint)
            doc = loaded[-1].get(STEP_KEY) if loaded and isinstance(loaded[-1], dict) else None
            self.resume = StepState.from_doc(doc)

        def on_train_epoch_start() -> None:
            orig_epoch_start()
            self.steps_total = int(t.num_iterations_per_epoch)
            self.outputs, self.carried = [], []
            at = resume_at(self.resume, int(t.current_epoch), self.steps_total)
            if self.resume is not None and at is None:
                say(f"the checkpoint was saved inside epoch {self.resume.epoch} at step {self.resume.steps_done} of "
                    f"{self.resume.steps_total}; epoch {int(t.current_epoch)} with {self.steps_total} steps runs "
                    "whole")
            self.resume = None
            if at is not None:
                # run_training's loop reads num_iterations_per_epoch after this returns: only the steps left
                t.num_iterations_per_epoch = at.steps_total - at.steps_done
                self.iteration, self.carried, self.outputs = at.steps_done, list(at.outputs), list(at.outputs)
                say(f"resuming epoch {at.epoch} at step {at.steps_done + 1} of {at.steps_total} (saved inside the "
                    "epoch)")
            self.in_steps = True

        def on_train_epoch_end(train_outputs: Any) -> Any:
            self.in_steps = False
            if self.steps_total is not None:
                t.num_iterations_per_epoch = self.steps_total
            outputs = [*self.carried, *train_outputs] if self.carried else train_outputs
            self.carried = []
            return orig_epoch_end(outputs)

        t.load_checkpoint, t.on_train_epoch_start, t.on_train_epoch_end = \
            load_checkpoint, on_train_epoch_start, on_train_epoch_end

    # ---- behaviour ----

    def after_step(self, output: Any) -> None:
        self.iteration += 1
        if self.outputs is not None:
            numbers = as_numbers(output)
            self.outputs = None if numbers is None else [*self.outputs, numbers]
        self.beat()
        inside = self.in_steps and self.steps_total is not None and self.iteration < self.steps_total \
            and self.outputs is not None
        if self.stop_requested and not self.settings.stop_at_step:
            return  # the epoch end saves
        if not inside:
            return  # the last step, or outside the steps: the epoch end saves (and honours a stop)
        if self.stop_requested:
            self.wait_for_writer()
            state = self.step_state()
            checkpoint = self.capture(state)
            if checkpoint is not None:
                self.write(checkpoint)
                self.leave(f"stop requested ({self.stop_requested}); checkpoint_latest.pth holds epoch "
                           f"{state.epoch} at step {state.steps_done} of {state.steps_total}")
            return  # checkpointing is off: the epoch end decides, as before
        every = self.settings.snapshot_every_s
        if every is not None and self.clock() - self.last_snapshot >= every and not self.writing():
            self.last_snapshot = self.clock()
            checkpoint = self.capture(self.step_state())
            if checkpoint is not None:
                self.write(checkpoint, background=True)

    def step_state(self) -> StepState:
        assert self.steps_total is not None and self.outputs is not None
        return StepState(int(self.trainer.current_epoch), self.iteration, self.steps_total, tuple(self.outputs))

    def capture(self, state: StepState) -> dict[str, Any] | None:
        """The checkpoint the trainer's own save_checkpoint would write now, copied into memory (its torch.save
        caught), with where in the epoch it is; None where it writes none (checkpointing disabled)."""
        torch, t = self.torch, self.trainer
        if torch is None:
            return None
        caught: list[Any] = []

        def catching(save: Callable[..., Any]) -> Callable[..., Any]:
            def caught_save(obj: Any, *args: Any, **kwargs: Any) -> None:
                caught.append(cpu_copy(obj))
            return caught_save

        t.current_epoch -= 1  # save_checkpoint stores current_epoch + 1: the epoch in progress is not complete
        try:
            with patched(torch, "save", catching):
                self._orig_save(os.path.join(t.output_folder, "checkpoint_latest.pth"))
        finally:
            t.current_epoch += 1
        if not caught or not isinstance(caught[0], dict):
            return None
        return {**caught[0], STEP_KEY: state.to_doc()}

    def write(self, checkpoint: dict[str, Any], background: bool = False) -> None:
        target = Path(self.trainer.output_folder) / "checkpoint_latest.pth"
        save = self.torch.save

        def run() -> None:
            try:
                finite = all_finite(self.torch, checkpoint) if self.settings.written is not None else False
                atomic_save(lambda tmp: save(checkpoint, tmp), target)
                step = checkpoint.get(STEP_KEY, {}).get("steps_done")
                self.records.note(target, checkpoint, finite, step if isinstance(step, int) else None)
            except DiskFull as exc:
                if not background:
                    self.disk_full(str(exc), target)  # exits 74
                    return
                say(f"a snapshot was not written ({exc}); the previous {target.name} is intact")
            except Exception as exc:  # a background write must never kill training: the next one tries again
                if not background:
                    raise
                self.write_error = exc
                say(f"a snapshot was not written ({exc}); the previous {target.name} is intact")

        if not background:
            run()
            return
        self.writer = threading.Thread(target=run, name="nnunet-supervise-snapshot", daemon=True)
        self.writer.start()

    def writing(self) -> bool:
        return self.writer is not None and self.writer.is_alive()

    def wait_for_writer(self) -> None:
        """A snapshot still being written finishes before anything else writes checkpoint_latest (else the older
        state, landing last, would replace the newer)."""
        if self.writer is not None:
            self.writer.join()
            self.writer = None

    def after_epoch(self) -> None:
        t = self.trainer
        done = int(t.current_epoch)  # epochs completed
        last = done >= int(t.num_epochs)  # on_train_end saves checkpoint_final right after
        every, seconds = self.settings.save_every_epochs, self.settings.save_every_s
        since = done - (self.last_save_epoch or 0)
        due = (every is not None and since >= every) or \
            (seconds is not None and self.clock() - self.last_save_at >= seconds)
        # a stop always saves; otherwise when due, except at the last epoch (checkpoint_final follows)
        self.wait_for_writer()
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
        if self.startup is not None:
            body["startup"] = self.startup
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
            where = "after the training step in flight" if self.in_steps and self.outputs is not None \
                and self.settings.stop_at_step else \
                f"at the end of epoch {int(self.trainer.current_epoch)}"
            say(f"{name}: saving {where}, then exiting {EXIT_STOPPED}")
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


# ---- start-up timing ----

STARTUP_PREFIX = f"{MARK} start-up:"  # the attempt log's line (report reads it back: supervisor.observe.report)


def process_started(now: float, stat: str, uptime: str, hz: int) -> float | None:
    """When this process started, in time.time() seconds, from /proc/self/stat's starttime (clock ticks after boot,
    field 22) and /proc/uptime: the interpreter's own start-up is then part of the imports. None if they do not
    parse."""
    try:
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
        age = float(uptime.split()[0]) - int(fields[19]) / hz
    except (ValueError, IndexError, ZeroDivisionError):
        return None
    return now - age if age >= 0 else None


def own_start(now: float) -> float | None:
    """process_started for this process (None where there is no /proc)."""
    try:
        with open("/proc/self/stat") as f, open("/proc/uptime") as g:
            stat, uptime = f.read(), g.read()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    return process_started(now, stat, uptime, hz)


class Startup:
    """Where nnU-Net's start-up goes, as the shim sees it (wall-clock seconds): the process started; nnU-Net's
    imports were done when it called get_trainer_from_args (the shim's launch); the trainer was built when that
    returned; initialize (the network, torch.compile's wrapper), a resume's load_checkpoint and get_dataloaders
    (the augmentation workers and their first batches) are timed where nnU-Net calls them; on_train_start's end to
    the first train_step done is the first step (where torch.compile compiles). One line in the attempt log at the
    first step, also kept in the heartbeat file ("startup")."""

    def __init__(self, started: float | None = None, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.started = started  # the process (or the shim's first line)
        self.imports_done: float | None = None
        self.built: float | None = None
        self.initialize_s = 0.0
        self.checkpoint_s = 0.0  # load_checkpoint, less an initialize inside it
        self.data_s = 0.0
        self.train_start_ended: float | None = None
        self.first_step: float | None = None

    def parts(self) -> tuple[list[tuple[str, float]], float] | None:
        """The split and the total, in seconds; None before the first step."""
        if self.first_step is None:
            return None
        origin = next((t for t in (self.started, self.imports_done, self.built) if t is not None), None)
        if origin is None:
            return None
        out: list[tuple[str, float]] = []
        if self.started is not None and self.imports_done is not None:
            out.append(("imports", self.imports_done - self.started))
        if self.imports_done is not None and self.built is not None:
            out.append(("trainer", self.built - self.imports_done))
        out.append(("initialize", self.initialize_s))
        if self.checkpoint_s > 0:
            out.append(("checkpoint", self.checkpoint_s))
        out.append(("data+workers", self.data_s))
        first = self.first_step - self.train_start_ended if self.train_start_ended is not None else None
        total = self.first_step - origin
        other = total - sum(v for _, v in out) - (first or 0.0)
        if other >= 0.05:  # argparse, unpacking, the plans' copies, the architecture plot, ...
            out.append(("other", other))
        if first is not None:
            out.append(("first step", first))
        return out, total

    def line(self) -> str | None:
        found = self.parts()
        if found is None:
            return None
        parts, total = found
        return f"{', '.join(f'{name} {value:.1f} s' for name, value in parts)} (total {total:.1f} s)"

    def doc(self) -> dict[str, Any] | None:
        found = self.parts()
        if found is None:
            return None
        parts, total = found
        return {**{name: round(value, 3) for name, value in parts}, "total": round(total, 3)}

    def timed(self, fn: Callable[..., Any], add: Callable[[float], None]) -> Callable[..., Any]:
        """fn, its duration handed to add, less an initialize made inside it (nnU-Net's load_checkpoint initializes
        a trainer that was not yet: that time is the initialize's)."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            begun, before = self.wall(), self.initialize_s
            try:
                return fn(*args, **kwargs)
            finally:
                add(self.wall() - begun - (self.initialize_s - before))
        return wrapper

    def install(self, trainer: Any, coop: Cooperation | None = None) -> None:
        """Wrap the trainer instance's start-up methods (those it has); each wrapper calls the bound method it
        replaces and only notes the time."""
        t = self

        def add_initialize(s: float) -> None:
            t.initialize_s += s

        def add_checkpoint(s: float) -> None:
            t.checkpoint_s += s

        def add_data(s: float) -> None:
            t.data_s += s

        if self.built is None:
            self.built = self.wall()
        if hasattr(trainer, "initialize"):
            trainer.initialize = self.timed(trainer.initialize, add_initialize)
        if hasattr(trainer, "load_checkpoint"):
            trainer.load_checkpoint = self.timed(trainer.load_checkpoint, add_checkpoint)
        if hasattr(trainer, "get_dataloaders"):
            trainer.get_dataloaders = self.timed(trainer.get_dataloaders, add_data)
        if hasattr(trainer, "on_train_start"):
            orig_train_start = trainer.on_train_start

            def on_train_start(*args: Any, **kwargs: Any) -> Any:
                try:
                    return orig_train_start(*args, **kwargs)
                finally:
                    t.train_start_ended = t.wall()

            trainer.on_train_start = on_train_start
        if hasattr(trainer, "train_step"):
            orig_step = trainer.train_step

            def train_step(*args: Any, **kwargs: Any) -> Any:
                out = orig_step(*args, **kwargs)
                if t.first_step is None:
                    t.first_step = t.wall()
                    text = t.line()
                    if text is not None:
                        say(f"start-up: {text}")
                    if coop is not None:
                        coop.startup = t.doc()
                return out

            trainer.train_step = train_step


def install(trainer: Any, settings: Settings | None = None, startup: Startup | None = None) -> Cooperation:
    coop = Cooperation(trainer, settings or Settings.from_env())
    (startup or Startup()).install(trainer, coop)  # innermost: the cooperative wrappers below call these
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
