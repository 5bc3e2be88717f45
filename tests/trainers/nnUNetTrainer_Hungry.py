"""A short trainer whose augmentation workers hold memory the way workers with real 3D patches do.

On the tiny test dataset a worker costs almost nothing, so the host-OOM test could not tell one worker from two.
Here each process that runs the training transforms keeps HUNGRY_MB (default 1500) of touched memory for its life:
n workers hold n x that, so a memory limit between one and two workers' worth OOM-kills a worker of the default
count and lets a halved count finish. (With nnUNet_n_proc_DA=0 the main process runs the transforms and holds it.)
"""

import os

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

_held: bytes | None = None


class HoldMemory(BasicTransform):
    def apply(self, data_dict, **params):
        global _held
        if _held is None:  # once per process: every page written, so it is really resident
            _held = b"\x01" * (int(os.environ.get("HUNGRY_MB", "1500")) << 20)
        return data_dict


class nnUNetTrainer_Hungry(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's own signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    @staticmethod
    def get_training_transforms(*args, **kwargs) -> BasicTransform:
        return ComposeTransforms([HoldMemory(), nnUNetTrainer.get_training_transforms(*args, **kwargs)])
