"""The cooperative shim's behaviour, on a stand-in trainer that follows nnU-Net's method protocol (no torch).

The real thing (nnU-Net on CPU, SIGKILLs and stop requests) is in tests/integration/test_cooperative.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from supervisor.trainer import cooperative as cooperative
from supervisor.trainer.cooperative import EXIT_DISK_FULL, EXIT_STOPPED, Cooperation, Settings, atomic_save


class Exited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class StandIn:
    """nnU-Net's epoch protocol: on_epoch_end saves every `save_every` and increments current_epoch;
    save_checkpoint records current_epoch + 1 (as nnU-Net does)."""

    def __init__(self, folder: Path, num_epochs: int = 10, save_every: int = 50) -> None:
        self.output_folder, self.num_epochs, self.save_every = str(folder), num_epochs, save_every
        self.current_epoch = 0
        self.saves: list[tuple[str, int]] = []
        self.fail_with: BaseException | None = None

    def save_checkpoint(self, filename: str) -> None:
        if self.fail_with is not None:
            Path(filename).write_bytes(b"half")
            raise self.fail_with
        Path(filename).write_text(json.dumps({"current_epoch": self.current_epoch + 1}))
        name = Path(filename).name.split(cooperative.TMP_INFIX)[0].removeprefix(cooperative.TMP_PREFIX)
        self.saves.append((name, self.current_epoch + 1))  # the file it stands for, not the temporary

    def on_epoch_start(self) -> None: ...

    def on_epoch_end(self) -> None:
        if (self.current_epoch + 1) % self.save_every == 0:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        self.current_epoch += 1

    def on_train_end(self) -> None:
        self.current_epoch -= 1
        self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_final.pth"))
        self.current_epoch += 1

    def train_step(self, batch: Any) -> dict[str, float]:
        return {"loss": 1.0}

    def validation_step(self, batch: Any) -> dict[str, float]:
        return {"loss": 1.0}

    def epoch(self, iterations: int = 3) -> None:
        self.on_epoch_start()
        for _ in range(iterations):
            self.train_step(None)
        self.validation_step(None)
        self.on_epoch_end()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def raise_exit(code: int) -> None:
    raise Exited(code)


@pytest.fixture
def restore_signals() -> Any:
    saved = {sig: signal.getsignal(sig) for sig in cooperative.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def cooperate(tmp_path: Path, **settings: Any) -> tuple[StandIn, Cooperation, Clock]:
    trainer, clock = StandIn(tmp_path), Clock()
    settings.setdefault("exit_grace_s", 3600.0)
    coop = Cooperation(trainer, Settings(**settings), clock=clock, exit=raise_exit)
    coop.install()
    return trainer, coop, clock


def latest(tmp_path: Path) -> int:
    return int(json.loads((tmp_path / "checkpoint_latest.pth").read_text())["current_epoch"])


def test_latest_is_saved_every_epoch_despite_the_trainers_sparse_save_every(tmp_path: Path,
                                                                          restore_signals: None) -> None:
    trainer, _, _ = cooperate(tmp_path, save_every_epochs=1)
    for n in range(1, 4):
        trainer.epoch()
        assert latest(tmp_path) == n  # epochs completed, exactly what nnU-Net's own save would store
    assert [s for s in trainer.saves if s[0] == "checkpoint_latest.pth"] == [("checkpoint_latest.pth", n)
                                                                             for n in (1, 2, 3)]


def test_saving_every_n_epochs_or_seconds(tmp_path: Path, restore_signals: None) -> None:
    trainer, _, clock = cooperate(tmp_path, save_every_epochs=None, save_every_s=100.0)
    trainer.epoch()
    assert not (tmp_path / "checkpoint_latest.pth").exists()
    clock.t += 100
    trainer.epoch()
    assert latest(tmp_path) == 2


def test_no_double_save_when_the_trainer_saved_latest_itself(tmp_path: Path, restore_signals: None) -> None:
    trainer, _, _ = cooperate(tmp_path, save_every_epochs=1)
    trainer.save_every = 1
    trainer.epoch()
    assert trainer.saves == [("checkpoint_latest.pth", 1)]


def test_the_last_epoch_leaves_the_save_to_checkpoint_final(tmp_path: Path, restore_signals: None) -> None:
    trainer, _, _ = cooperate(tmp_path)
    trainer.num_epochs = 2
    trainer.epoch()
    trainer.epoch()
    assert latest(tmp_path) == 1


def test_a_stop_request_saves_at_the_epoch_end_and_exits_75(tmp_path: Path, restore_signals: None) -> None:
    trainer, coop, _ = cooperate(tmp_path, save_every_epochs=10)
    trainer.epoch()
    trainer.on_epoch_start()
    os.kill(os.getpid(), signal.SIGUSR1)  # the handler only flags it: the epoch goes on
    assert coop.stop_requested == "SIGUSR1"
    trainer.train_step(None)
    with pytest.raises(Exited) as exited:
        trainer.on_epoch_end()
    assert exited.value.code == EXIT_STOPPED
    assert latest(tmp_path) == 2  # both completed epochs kept


def test_a_stop_request_before_training_or_during_validation_exits_at_once(tmp_path: Path,
                                                                          restore_signals: None) -> None:
    _, coop, _ = cooperate(tmp_path)
    with pytest.raises(Exited) as exited:
        os.kill(os.getpid(), signal.SIGTERM)
    assert exited.value.code == EXIT_STOPPED and coop.phase == "startup"
    trainer, coop, _ = cooperate(tmp_path)
    trainer.num_epochs = 1
    trainer.epoch()
    trainer.on_train_end()
    assert coop.phase == "validation" and (tmp_path / "checkpoint_final.pth").exists()
    with pytest.raises(Exited):
        os.kill(os.getpid(), signal.SIGTERM)


def test_saves_are_atomic_a_failed_save_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint_latest.pth"
    target.write_text("old")

    def broken(path: str) -> None:
        Path(path).write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save(broken, target)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["checkpoint_latest.pth"]
    atomic_save(lambda path: Path(path).write_text("new"), target)
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["checkpoint_latest.pth"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 123 vs 45"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")])
def test_a_full_disk_keeps_the_old_checkpoint_and_exits_74(tmp_path: Path, restore_signals: None,
                                                           error: BaseException, capsys: Any) -> None:
    trainer, _, _ = cooperate(tmp_path)
    trainer.epoch()
    trainer.fail_with = error
    with pytest.raises(Exited) as exited:
        trainer.epoch()
    assert exited.value.code == EXIT_DISK_FULL
    assert latest(tmp_path) == 1 and sorted(os.listdir(tmp_path)) == ["checkpoint_latest.pth"]
    assert "nnunet-supervise: disk full" in capsys.readouterr().out


def test_the_heartbeat_is_written_at_most_once_a_second_with_the_longest_gap(tmp_path: Path,
                                                                             restore_signals: None) -> None:
    beat = tmp_path / "heartbeat.json"
    trainer, _, clock = cooperate(tmp_path, heartbeat=beat)
    trainer.on_epoch_start()
    first = json.loads(beat.read_text())
    assert first["phase"] == "training" and first["epoch"] == 0
    stamp = beat.stat().st_mtime_ns
    clock.t += 0.2
    trainer.train_step(None)
    assert beat.stat().st_mtime_ns == stamp  # too soon: no write
    clock.t += 5
    trainer.train_step(None)
    now = json.loads(beat.read_text())
    assert now["iteration"] == 2 and now["max_gap_s"] == pytest.approx(5.0)


def test_half_written_temporaries_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".checkpoint_latest.pth.tmp-999999"
    stale.write_bytes(b"half")
    keep = tmp_path / "checkpoint_latest.pth"
    keep.write_bytes(b"whole")
    assert cooperative.remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and keep.exists()


def test_settings_come_from_the_supervisors_environment(tmp_path: Path) -> None:
    s = Settings.from_env({cooperative.SAVE_EVERY_EPOCHS_VAR: "0", cooperative.SAVE_EVERY_S_VAR: "900.0",
                           cooperative.HEARTBEAT_VAR: str(tmp_path / "hb.json")})
    assert s.save_every_epochs is None and s.save_every_s == 900.0 and s.heartbeat == tmp_path / "hb.json"


def test_an_opted_in_batch_size_remedy_replaces_the_plans_batch_size(tmp_path: Path, restore_signals: None,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    trainer, _, _ = cooperate(tmp_path)  # without the variable: nnU-Net's own method, untouched
    assert "_set_batch_size_and_oversample" not in vars(trainer)

    class WithPlans(StandIn):
        def _set_batch_size_and_oversample(self) -> None:
            self.batch_size = 8  # what the plans say

    t = WithPlans(tmp_path)
    settings = Settings.from_env({cooperative.BATCH_SIZE_VAR: "4"})
    Cooperation(t, settings, clock=Clock(), exit=raise_exit).install()
    t._set_batch_size_and_oversample()  # nnU-Net calls it in initialize()
    assert t.batch_size == 4
    assert "batch size 4 instead of 8" in capsys.readouterr().out


# ---- a stop inside an epoch, and snapshots ----

class FakeTorch:
    """torch.save / torch.load as the trainer calls them (looked up on the module at each call), in JSON."""

    def __init__(self) -> None:
        self.saved: list[str] = []

    def save(self, obj: Any, f: str) -> None:
        Path(f).write_text(json.dumps(obj))
        self.saved.append(Path(f).name)

    def load(self, f: str, **kwargs: Any) -> Any:
        return json.loads(Path(f).read_text())


def loss(epoch: int, step: int) -> float:
    return 10.0 * epoch + step  # the same in every run: an interrupted run must log what an uninterrupted one does


class NnUNetLike:
    """nnU-Net's run_training loop and checkpoint format, without torch: what the shim wraps."""

    def __init__(self, folder: Path, torch: FakeTorch, num_epochs: int = 3, steps: int = 5) -> None:
        self.output_folder, self.torch, self.num_epochs = str(folder), torch, num_epochs
        self.num_iterations_per_epoch = steps
        self.current_epoch = 0
        self.weights = 0.0  # "the model": the number of steps trained
        self.logged: dict[int, float] = {}  # epoch -> mean train loss (nnU-Net's logger)
        self.steps_run = 0

    def save_checkpoint(self, filename: str) -> None:
        self.torch.save({"network_weights": {"w": self.weights}, "current_epoch": self.current_epoch + 1,
                         "logging": {str(k): v for k, v in self.logged.items()}}, filename)

    def load_checkpoint(self, filename: str) -> None:
        doc = self.torch.load(filename, weights_only=False)
        self.weights, self.current_epoch = doc["network_weights"]["w"], doc["current_epoch"]
        self.logged = {int(k): v for k, v in doc["logging"].items()}

    def on_epoch_start(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...

    def train_step(self, batch: Any) -> dict[str, float]:
        step = self.steps_run_in_epoch
        self.steps_run_in_epoch += 1
        self.steps_run += 1
        self.weights += 1
        return {"loss": loss(self.current_epoch, step + self.offset)}

    def on_train_epoch_end(self, outputs: list[dict[str, float]]) -> None:
        self.logged[self.current_epoch] = sum(o["loss"] for o in outputs) / len(outputs)

    def validation_step(self, batch: Any) -> dict[str, float]:
        return {"loss": 0.0}

    def on_epoch_end(self) -> None:
        self.current_epoch += 1

    def on_train_end(self) -> None:
        self.current_epoch -= 1
        self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_final.pth"))
        self.current_epoch += 1

    def run_training(self, stop_at: tuple[int, int] | None = None) -> None:
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            # the shim may have cut this epoch's steps: where its first step stands in the epoch
            self.offset = self.num_iterations_per_epoch_full() - self.num_iterations_per_epoch
            self.steps_run_in_epoch = 0
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if stop_at == (self.current_epoch, self.steps_run_in_epoch + self.offset):
                    os.kill(os.getpid(), signal.SIGTERM)  # arrives during this step
                outputs.append(self.train_step(None))
            self.on_train_epoch_end(outputs)
            self.validation_step(None)
            self.on_epoch_end()
        self.on_train_end()

    def num_iterations_per_epoch_full(self) -> int:
        return 5


def nnunet_like(tmp_path: Path, step: Any = None,
                **settings: Any) -> tuple[NnUNetLike, Cooperation, Clock, FakeTorch]:
    """The trainer, cooperative; step(trainer, clock, original) -> a train_step in place of its own."""
    torch, clock = FakeTorch(), Clock()
    trainer = NnUNetLike(tmp_path, torch)
    if step is not None:
        trainer.train_step = step(trainer, clock, trainer.train_step)  # type: ignore[method-assign]
    settings.setdefault("exit_grace_s", 3600.0)
    coop = Cooperation(trainer, Settings(save_every_epochs=1, **settings), clock=clock, exit=raise_exit, torch=torch)
    coop.install()
    return trainer, coop, clock, torch


def test_a_stop_inside_an_epoch_saves_after_the_step_and_the_resume_finishes_that_epoch(
        tmp_path: Path, restore_signals: None) -> None:
    plain, _, _, _ = nnunet_like(tmp_path / "plain")
    (tmp_path / "plain").mkdir()
    plain.run_training()
    (tmp_path / "run").mkdir()
    first, _, _, _ = nnunet_like(tmp_path / "run")
    with pytest.raises(Exited) as exited:
        first.run_training(stop_at=(1, 2))  # SIGTERM during the third step of epoch 1
    assert exited.value.code == EXIT_STOPPED
    saved = json.loads((tmp_path / "run" / "checkpoint_latest.pth").read_text())
    assert saved["current_epoch"] == 1 and saved["network_weights"] == {"w": 8}  # 5 + the 3 steps of epoch 1
    assert saved[cooperative.STEP_KEY] == {"epoch": 1, "steps_done": 3, "steps_total": 5, "outputs": [
        {"loss": 10.0}, {"loss": 11.0}, {"loss": 12.0}]}

    again, _, _, _ = nnunet_like(tmp_path / "run")
    again.load_checkpoint(str(tmp_path / "run" / "checkpoint_latest.pth"))
    again.run_training()
    assert again.steps_run == 2 + 5  # epoch 1's two steps left, then epoch 2: no step redone
    assert again.weights == plain.weights == 15
    assert again.logged == plain.logged  # every epoch logged once, with the uninterrupted mean loss
    assert again.num_iterations_per_epoch == 5  # given back after the cut epoch


def test_a_plain_nnunet_checkpoint_or_a_changed_epoch_length_runs_the_epoch_whole(tmp_path: Path,
                                                                                  restore_signals: None) -> None:
    trainer, _, _, torch = nnunet_like(tmp_path)
    torch.save({"network_weights": {"w": 5}, "current_epoch": 1, "logging": {"0": 2.0}},
               str(tmp_path / "checkpoint_latest.pth"))
    trainer.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    trainer.run_training()
    assert trainer.steps_run == 10
    st = cooperative.StepState(1, 3, 4, ({"loss": 1.0},) * 3)  # saved with 4 steps an epoch, now 5
    assert cooperative.resume_at(st, 1, 5) is None and cooperative.resume_at(st, 2, 4) is None
    assert cooperative.resume_at(st, 1, 4) == st


@pytest.mark.parametrize("doc", [None, "x", {"epoch": 1},
                                 {"epoch": 1, "steps_done": 0, "steps_total": 5, "outputs": []},
                                 {"epoch": 1, "steps_done": 5, "steps_total": 5, "outputs": [{}] * 5},
                                 {"epoch": 1, "steps_done": 2, "steps_total": 5, "outputs": [{"loss": 1.0}]},
                                 {"epoch": True, "steps_done": 1, "steps_total": 5, "outputs": [{"loss": 1.0}]},
                                 {"epoch": 1, "steps_done": 1, "steps_total": 5, "outputs": [{"loss": "a"}]}])
def test_a_damaged_or_foreign_step_record_is_ignored(doc: Any) -> None:
    assert cooperative.StepState.from_doc(doc) is None


def test_outputs_that_are_not_numbers_leave_the_save_at_the_epoch_end(tmp_path: Path, restore_signals: None) -> None:
    trainer, _, _, _ = nnunet_like(tmp_path, step=lambda trainer, clock, original: lambda batch: {
        "loss": 1.0, "per_class": [0.5, 0.7]})
    with pytest.raises(Exited):
        trainer.run_training(stop_at=(0, 0))
    saved = json.loads((tmp_path / "checkpoint_latest.pth").read_text())
    assert saved["current_epoch"] == 1 and cooperative.STEP_KEY not in saved  # the whole epoch, saved at its end


def test_a_snapshot_is_taken_at_a_step_boundary_and_written_in_the_background(tmp_path: Path,
                                                                             restore_signals: None) -> None:
    running: list[Cooperation] = []

    def slow(trainer: Any, clock: Clock, original: Any) -> Any:
        def slow_step(batch: Any) -> dict[str, float]:
            clock.t += 20  # each step takes 20 s, long enough for the last snapshot's write to have ended
            running[0].wait_for_writer()
            return original(batch)
        return slow_step

    trainer, coop, _, torch = nnunet_like(tmp_path, step=slow, snapshot_every_s=30.0)
    running.append(coop)
    trainer.num_epochs = 1
    trainer.run_training()
    coop.wait_for_writer()
    # steps end at 20, 40 (snapshot: 40 s since the start), 60, 80 (snapshot), 100 (the last step: the epoch end saves)
    assert torch.saved.count("checkpoint_latest.pth") == 0  # every write went to a temporary, then replaced
    saves = [n for n in torch.saved if "checkpoint_latest" in n]
    assert len(saves) == 2 and trainer.steps_run == 5
    assert (tmp_path / "checkpoint_final.pth").exists()


def test_a_snapshot_copy_is_not_changed_by_later_steps() -> None:
    class Tensor:
        def __init__(self, v: list[float]) -> None:
            self.v = v

        def detach(self) -> Tensor:
            return self

        def to(self, device: str, copy: bool = False) -> Tensor:
            return Tensor(list(self.v))

    t = Tensor([1.0])
    state = {"w": t, "log": {"loss": [1.0]}, "axes": (0, 1)}
    snap = cooperative.cpu_copy(state)
    t.v.append(2.0)
    state["log"]["loss"].append(2.0)
    assert snap["w"].v == [1.0] and snap["log"] == {"loss": [1.0]} and snap["axes"] == (0, 1)


def test_each_checkpoint_written_is_recorded_for_the_supervisor(tmp_path: Path, restore_signals: None) -> None:
    import torch

    trainer = NnUNetLike(tmp_path, torch)  # type: ignore[arg-type]
    records = tmp_path / "written.json"
    coop = Cooperation(trainer, Settings(save_every_epochs=1, exit_grace_s=3600.0, written=records, context="ctx"),
                       clock=Clock(), exit=raise_exit, torch=torch)
    coop.install()
    with pytest.raises(Exited):
        trainer.run_training(stop_at=(1, 2))
    doc = json.loads(records.read_text())
    latest = doc["checkpoint_latest.pth"]
    assert latest["epoch"] == 1 and latest["step"] == 3 and latest["finite"] is True and latest["context"] == "ctx"
    assert latest["size"] == (tmp_path / "checkpoint_latest.pth").stat().st_size and latest["crcs"]


def test_save_on_stop_epoch_keeps_the_save_at_the_epoch_end(tmp_path: Path, restore_signals: None) -> None:
    trainer, _, _, _ = nnunet_like(tmp_path, stop_at_step=False)
    with pytest.raises(Exited):
        trainer.run_training(stop_at=(1, 2))
    saved = json.loads((tmp_path / "checkpoint_latest.pth").read_text())
    assert saved["current_epoch"] == 2 and cooperative.STEP_KEY not in saved and trainer.steps_run == 10
    assert Settings.from_env({"NNUNET_SUPERVISE_SAVE_ON_STOP": "epoch"}).stop_at_step is False
    assert Settings.from_env({}).stop_at_step is True


def test_the_start_up_timing_changes_nothing_of_a_stop_in_the_first_step_and_its_resume(
        tmp_path: Path, restore_signals: None, capsys: pytest.CaptureFixture[str]) -> None:
    """install() puts cooperative.Startup's wrappers innermost; a stop in the very first step still saves after it,
    and the resumed epoch runs only its remaining steps (the start-up line printed once per process)."""

    def with_startup(folder: Path) -> tuple[NnUNetLike, Cooperation]:
        torch = FakeTorch()
        trainer = NnUNetLike(folder, torch)
        coop = Cooperation(trainer, Settings(save_every_epochs=1, exit_grace_s=3600.0), clock=Clock(),
                           exit=raise_exit, torch=torch)
        cooperative.Startup(started=0.0).install(trainer, coop)  # as install() does: before the cooperative wrappers
        coop.install()
        return trainer, coop

    (tmp_path / "run").mkdir()
    first, _ = with_startup(tmp_path / "run")
    with pytest.raises(Exited) as exited:
        first.run_training(stop_at=(0, 0))  # SIGTERM during the first step of all
    assert exited.value.code == EXIT_STOPPED
    saved = json.loads((tmp_path / "run" / "checkpoint_latest.pth").read_text())
    assert saved[cooperative.STEP_KEY]["steps_done"] == 1 and saved["network_weights"] == {"w": 1}
    again, coop = with_startup(tmp_path / "run")
    again.load_checkpoint(str(tmp_path / "run" / "checkpoint_latest.pth"))
    again.run_training()
    assert again.steps_run == 4 + 5 + 5 and again.weights == 15
    out = capsys.readouterr().out
    assert out.count(cooperative.STARTUP_PREFIX) == 2 and coop.startup is not None  # one per process (trainer)


def test_tensors_sharing_a_storage_share_the_copys(tmp_path: Path) -> None:
    import torch

    w = torch.arange(12.0).reshape(3, 4)
    state = {"encoder.w": w, "decoder.encoder.w": w.detach(), "row": w[1], "other": torch.ones(2)}
    snap = cooperative.cpu_copy(state)
    w.add_(100)  # a later step changes the weights: the copy keeps what it was
    assert snap["encoder.w"][0, 0] == 0 and snap["row"].tolist() == [4.0, 5.0, 6.0, 7.0]
    ptr = snap["encoder.w"].untyped_storage().data_ptr()
    assert snap["decoder.encoder.w"].untyped_storage().data_ptr() == ptr == snap["row"].untyped_storage().data_ptr()
    torch.save(snap, tmp_path / "copy.pth")
    torch.save({k: v for k, v in state.items()}, tmp_path / "original.pth")
    assert (tmp_path / "copy.pth").stat().st_size <= (tmp_path / "original.pth").stat().st_size + 512
