"""A custom trainer whose training steps take a known while, as a real 3D network's do on a GPU: the tiny network's
steps on CPU are too quick to stop one inside an epoch on purpose.

Its shape comes from the environment, so the tests and bench/preempt.py share it: SLOW_STEPS_S seconds of sleep
after each real step (default 0.4), SLOW_STEPS_PER_EPOCH steps an epoch (8), SLOW_STEPS_EPOCHS epochs (3), and
SLOW_STEPS_THREADS torch threads (unset: nnU-Net's own choice, as many as the host has CPUs with -device cpu; the
bench sets 1: on a shared 2-core machine two OpenMP threads made the tiny network's step about 5x slower than one,
which would make the epoch, not a stop notice, decide its outcome).

Its own train_step override, and its own on_train_epoch_end, are what the cooperative shim wraps: the shim must
save inside the epoch and resume there through them (on_train_epoch_end checks that a resumed epoch hands on all its
steps' outputs). Each completed step appends `<epoch> <time.time()> <pid>` to STEPS_FILE (if set), so a test counts
the steps every attempt ran, and the bench times them.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class nnUNetTrainer_SlowSteps(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(_env("SLOW_STEPS_EPOCHS", 3))
        self.num_iterations_per_epoch = int(_env("SLOW_STEPS_PER_EPOCH", 8))
        self.num_val_iterations_per_epoch = 1
        self._step_s = _env("SLOW_STEPS_S", 0.4)
        self._steps_file = os.environ.get("STEPS_FILE")
        if os.environ.get("SLOW_STEPS_THREADS"):
            torch.set_num_threads(int(os.environ["SLOW_STEPS_THREADS"]))

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        time.sleep(self._step_s)
        if self._steps_file:
            with open(self._steps_file, "a") as f:
                f.write(f"{self.current_epoch} {time.time():.6f} {os.getpid()}\n")
        return out

    def on_train_epoch_end(self, train_outputs: list) -> None:
        assert len(train_outputs) == self.num_iterations_per_epoch, (len(train_outputs), "steps handed on")
        super().on_train_epoch_end(train_outputs)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
