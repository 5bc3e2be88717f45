"""A custom trainer whose training steps take a known while (STEP_S each, 8 an epoch), as a real 3D network's do
on a GPU: the tiny network's steps on CPU are too quick to stop one inside an epoch on purpose.

Its own train_step override, and its own on_train_epoch_end, are what the cooperative shim wraps: the shim must
save inside the epoch and resume there through them. Each step appends its epoch and step to STEPS_FILE (if set),
so a test counts the steps every attempt ran.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

STEP_S = 0.4


class nnUNetTrainer_SlowSteps(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 8
        self.num_val_iterations_per_epoch = 1
        self._steps_file = os.environ.get("STEPS_FILE")

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        time.sleep(STEP_S)
        if self._steps_file:
            with open(self._steps_file, "a") as f:
                f.write(f"{self.current_epoch}\n")
        return out

    def on_train_epoch_end(self, train_outputs: list) -> None:
        assert len(train_outputs) == self.num_iterations_per_epoch, (len(train_outputs), "steps handed on")
        super().on_train_epoch_end(train_outputs)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
