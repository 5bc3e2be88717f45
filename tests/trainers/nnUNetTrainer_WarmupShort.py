"""nnU-Net's own nnUNetTrainer_warmup (its optimizer swapped at the end of the warm-up, its own load_checkpoint),
short enough for a CPU test, with a final validation that takes a few seconds longer to start.

nnUNetTrainer_warmup.load_checkpoint calls torch.load without weights_only=False, as custom trainers copied from
older nnU-Net code do: under torch >= 2.6 every resume of it fails with "Weights only load failed", although the
checkpoint is intact. SLOW_VALIDATION_S holds the final validation back at its start, so a test can kill the trainer
there (after checkpoint_final.pth, before summary.json).
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainer_warmup import nnUNetTrainer_warmup


class nnUNetTrainer_WarmupShort(nnUNetTrainer_warmup):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
        self.warmup_duration_whole_net = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 2
        self.save_every = 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def perform_actual_validation(self, save_probabilities: bool = False):
        time.sleep(float(os.environ.get("SLOW_VALIDATION_S", "0")))
        return super().perform_actual_validation(save_probabilities)
