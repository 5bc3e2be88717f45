"""A short trainer that compiles its network on CPU as nnU-Net does on CUDA: by default, unless nnUNet_compile says
otherwise (nnU-Net itself never compiles on CPU, so a CPU test could not meet a torch.compile failure)."""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Compiling(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def _do_i_compile(self):
        # nnU-Net's CUDA rule, on any device: compile unless nnUNet_compile is false
        return os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t")
