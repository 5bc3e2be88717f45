"""tests/trainers/nnUNetTrainer_SlowSteps with epochs longer than a short stop notice, for bench/preempt.py.

12 training steps an epoch, each the real step plus STEP_S (0.8 s) of sleep, 2 epochs: an epoch (12 to 25 s on the
2-core test VM, idle or shared) is longer than a 6 s notice, and the part of it left after 4 steps (8 steps, the
validation step and the save) shorter than a 30 s one. Each completed step appends `<epoch> <time.time()> <pid>` to
$STEPS_FILE (if set), so the bench counts the steps every attempt ran and times them. Its own on_train_epoch_end
checks that a resumed epoch hands on all its steps' outputs.

One torch thread (nnU-Net sets as many as the host has CPUs with -device cpu): on a shared 2-core machine two
OpenMP threads made the tiny network's step about 5x slower than one (8 s against 1.6 s, measured under a load
average of 7), which would make the epoch, not the notice, decide the outcome.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

STEP_S = 0.8
STEPS = 12
EPOCHS = 2


class nnUNetTrainer_PreemptSteps(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = EPOCHS
        self.num_iterations_per_epoch = STEPS
        self.num_val_iterations_per_epoch = 1
        self._steps_file = os.environ.get("STEPS_FILE")
        torch.set_num_threads(1)

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        time.sleep(STEP_S)
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
