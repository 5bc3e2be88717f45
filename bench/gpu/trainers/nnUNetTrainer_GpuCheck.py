"""The trainer of scripts/gpu-check.sh: nnU-Net's own, made short and its steps slow enough to be stopped inside an
epoch on purpose (a tiny network's GPU steps take milliseconds).

Set through the environment (run.yaml's nnunet.env), read once at construction:
GPU_CHECK_EPOCHS (3), GPU_CHECK_STEPS (training steps an epoch, 8), GPU_CHECK_STEP_S (extra seconds after each
step, 0), GPU_CHECK_STEPS_FILE (each step appends its epoch there, so the check counts the steps every attempt ran).
No test-time mirroring: the final validation stays short.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_GpuCheck(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("GPU_CHECK_EPOCHS", "3"))
        self.num_iterations_per_epoch = int(os.environ.get("GPU_CHECK_STEPS", "8"))
        self.num_val_iterations_per_epoch = 1
        self._step_s = float(os.environ.get("GPU_CHECK_STEP_S", "0"))
        self._steps_file = os.environ.get("GPU_CHECK_STEPS_FILE")

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self._step_s:
            time.sleep(self._step_s)
        if self._steps_file:
            with open(self._steps_file, "a") as f:
                f.write(f"{self.current_epoch}\n")
        return out

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
