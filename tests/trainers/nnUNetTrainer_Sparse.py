"""A custom trainer outside the nnunetv2 package that keeps nnU-Net's sparse checkpointing (save_every = 50).

Without cooperative mode a crash before epoch 50 loses everything; the cooperative tests show it does not.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Sparse(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 6
        self.num_iterations_per_epoch = 5
        self.num_val_iterations_per_epoch = 2
        assert self.save_every == 50  # nnU-Net's default, deliberately kept

    def on_epoch_end(self):  # an override of a hooked method: the shim must still wrap it
        super().on_epoch_end()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
