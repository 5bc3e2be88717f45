"""tests/trainers/nnUNetTrainer_Sparse as late in a long training: the EMA pseudo dice no longer improves.

On the tiny dataset the EMA dice improves every epoch, so nnU-Net rewrites checkpoint_best.pth every epoch and
a kill costs nothing even without cooperation. Late in a real training the best is rarely beaten; this variant
models that regime (no best checkpoint is written), leaving nnU-Net's save_every = 50 as the only save.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_SparsePlateau(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 8
        self.num_iterations_per_epoch = 5
        self.num_val_iterations_per_epoch = 2

    def on_train_start(self):
        super().on_train_start()
        if self._best_ema is None:
            self._best_ema = float("inf")  # never beaten: no checkpoint_best.pth

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class nnUNetTrainer_SparsePlateauLong(nnUNetTrainer_SparsePlateau):
    """The same for 16 epochs, for bench/relaunch.py: its verified-ahead case needs a checkpoint_latest that stays
    unchanged longer than verifying it ahead takes while the trainer keeps both cores of the test VM busy (the
    verifier runs at SCHED_IDLE and rests 3x its run time between runs, so over 8 short epochs it verified once)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 16
