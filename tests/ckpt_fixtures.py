"""Checkpoints shaped like nnU-Net's, and hostile pickle payloads, shared by the checkpoint tests."""

from __future__ import annotations

import os
import pathlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class TinyUNet(nn.Module):
    """A few Conv3d layers named the way nnU-Net's PlainConvUNet names them."""

    def __init__(self, features: tuple[int, ...] = (8, 16)) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.stages = nn.ModuleList(
            nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True))
            for cin, cout in zip((1, *features[:-1]), features, strict=True)
        )
        self.decoder = nn.Module()
        self.decoder.seg_layers = nn.ModuleList([nn.Conv3d(features[-1], 2, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.encoder.stages:
            x = stage(x)
        return self.decoder.seg_layers[0](x)


def nnunet_checkpoint(current_epoch: int = 7, trainer_name: str = "nnUNetTrainer", fold: int = 0,
                      features: tuple[int, ...] = (8, 16)) -> dict[str, Any]:
    """The dict nnUNetTrainer.save_checkpoint writes, with a tiny network and one optimizer step taken."""
    torch.manual_seed(0)
    network = TinyUNet(features)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    network(torch.randn(1, 1, 6, 6, 6)).sum().backward()
    optimizer.step()  # the state now holds a momentum buffer per parameter
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.41), np.float64(0.52)],
            "ema_fg_dice": [np.float64(0.41), np.float64(0.42)],
            "dice_per_class_or_region": [[np.float64(0.41)], [np.float64(0.52)]],
            "train_losses": [np.float32(-0.1), np.float32(-0.2)],
            "val_losses": [np.float32(-0.15), np.float32(-0.25)],
            "lrs": [0.01, 0.00991],
            "epoch_start_timestamps": [1795833770.79, 1795833775.5],
            "epoch_end_timestamps": [1795833775.4, 1795833780.1],
        },
        "_best_ema": np.float64(0.42),
        "current_epoch": current_epoch,
        "init_args": {
            "plans": {"dataset_name": "Dataset901_Tiny", "plans_name": "nnUNetPlans"},
            "configuration": "3d_fullres",
            "fold": fold,
            "dataset_json": {"labels": {"background": 0, "tumour": 1}, "numTraining": 8},
            "device": torch.device("cpu"),
        },
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


class Touch:
    """Unpickling this calls pathlib.Path.touch(Path(path)) (pickled as getattr(Path, 'touch'))."""

    def __init__(self, path: Path) -> None:
        self.path = pathlib.Path(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


class System:
    """Unpickling this runs `touch CANARY` in a shell."""

    def __init__(self, path: Path) -> None:
        self.command = f"touch {path}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def save(path: Path, obj: Any, **kwargs: Any) -> Path:
    torch.save(obj, path, **kwargs)
    return path
