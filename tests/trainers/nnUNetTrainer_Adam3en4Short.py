"""nnU-Net's own nnUNetTrainerVanillaAdam3en4 (Adam at 3e-4 instead of SGD: its own configure_optimizers, an
optimizer state of another shape in the checkpoint), as short as nnUNetTrainer_Short: the second trainer of the
experiment test's study, as a user compares a custom trainer against the baseline."""

import torch
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerVanillaAdam3en4


class nnUNetTrainer_Adam3en4Short(nnUNetTrainerVanillaAdam3en4):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
