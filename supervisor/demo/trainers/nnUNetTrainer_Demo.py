"""A short custom trainer for the demo and the tests: it lives outside the nnunetv2 package.

nnU-Net finds it through `nnUNet_extTrainer`, which the supervisor sets from `nnunet.trainer_paths`.
Ten epochs of three iterations keep a CPU run to under a minute; saving `checkpoint_latest.pth`
every second epoch (nnU-Net's default is every 50th) leaves a checkpoint to resume from.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Demo(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 2
        self.save_every = 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # No test-time mirroring: the final validation stays a few seconds on a CPU.
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
